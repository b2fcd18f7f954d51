"""Build DICOM files from pixel arrays: the bundled samples and the tests' golden inputs.

Only pixel data are real (they come from licensed images); every patient attribute written
here is synthetic and says so (`PatientName` "Sample^Synthetic").
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
US_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def base_dataset(
    sop_class: str = CR_STORAGE,
    *,
    modality: str = "CR",
    body_part: str | None = "CHEST",
    patient_id: str = "SYNTH-0001",
    patient_name: str = "Sample^Synthetic",
    patient_age: str | None = "004Y",
    extra: dict[str, Any] | None = None,
    uid_seed: str | None = None,
) -> Dataset:
    """`uid_seed` makes the UIDs a function of it (reproducible files); None makes them random."""

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=[uid_seed, kind]) if uid_seed else generate_uid()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid("sop")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.Modality = modality
    if body_part:
        ds.BodyPartExamined = body_part
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    if patient_age:
        ds.PatientAge = patient_age
    ds.PatientSex = "O"
    ds.StudyDate = "20261129"
    ds.AccessionNumber = "SYNTH1"
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    return ds


def grey_dicom(
    stored: np.ndarray,
    *,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    voi_lut: tuple[list[int], np.ndarray] | None = None,
    modality_lut: tuple[list[int], np.ndarray] | None = None,
    transfer_syntax: str | None = None,
    **base: Any,
) -> Dataset:
    """A single-frame grey image; `stored` is the raw stored values (signed if its dtype is)."""
    ds = base_dataset(**base)
    ds.set_pixel_data(stored, photometric, bits_stored, generate_instance_uid=False)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = voi_lut[0]
        item.LUTData = np.asarray(voi_lut[1], "<u2").tobytes()  # OW: raw little-endian words
        ds.VOILUTSequence = Sequence([item])
    if modality_lut is not None:
        item = Dataset()
        item.LUTDescriptor = modality_lut[0]
        item.ModalityLUTType = "US"
        item.LUTData = np.asarray(modality_lut[1], "<u2").tobytes()
        ds.ModalityLUTSequence = Sequence([item])
    if transfer_syntax:
        # One encoder everywhere, so a release makes byte-identical files on any machine.
        ds.compress(transfer_syntax, encoding_plugin="pydicom", generate_instance_uid=False)
    return ds


def colour_dicom(
    rgb: np.ndarray, *, photometric: str = "RGB", transfer_syntax: str | None = None, **base: Any
) -> Dataset:
    ds = base_dataset(**{"sop_class": US_STORAGE, "modality": "US", "body_part": None, **base})
    ds.set_pixel_data(rgb, "RGB", 8, generate_instance_uid=False)
    ds.PlanarConfiguration = 0
    if photometric != "RGB":
        from pydicom.pixels import convert_color_space

        ybr = convert_color_space(rgb, "RGB", photometric)
        ds.PixelData = ybr.tobytes()
        ds.PhotometricInterpretation = photometric
    if transfer_syntax:
        # One encoder everywhere, so a release makes byte-identical files on any machine.
        ds.compress(transfer_syntax, encoding_plugin="pydicom", generate_instance_uid=False)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def twelve_bit(display: np.ndarray) -> np.ndarray:
    """8-bit display values -> 12-bit stored values whose full-range window maps back exactly."""
    return (display.astype(np.uint16) * 16 + 8).astype(np.uint16)


def undecodable_dicom(**base: Any) -> Dataset:
    """A well-formed image object whose compressed pixel data cannot be decoded (JPEG 2000
    syntax, bytes that are not a codestream: damaged, `DICOM_PIXELS_DAMAGED`; where this build
    has no JPEG 2000 decoder, `DICOM_UNSUPPORTED`): what a receiver must store, yet cannot
    analyse."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    ds = grey_dicom(np.zeros((48, 64), np.uint16), bits_stored=12, **base)
    ds.PixelData = encapsulate([bytes(range(256)) * 4])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return ds


def jpeg_cine(
    frames: list[np.ndarray], frame_time_ms: float = 33.3, quality: int = 90, **base: Any
) -> Dataset:
    """An ultrasound cine as most scanners send one: RGB frames, each a JPEG Baseline
    (YBR_FULL_422) fragment, so the file is a small fraction of its decoded size."""
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    fragments = []
    for frame in frames:
        encoded = io.BytesIO()
        Image.fromarray(frame).save(encoded, "JPEG", quality=quality)
        fragments.append(encoded.getvalue())
    rows, columns = frames[0].shape[:2]
    ds = base_dataset(**{"sop_class": US_STORAGE, "modality": "US", "body_part": None, **base})
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = rows, columns, 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames, ds.FrameTime = len(frames), frame_time_ms
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


VIDEO_CODECS = {  # transfer syntax -> FFmpeg's encoder and elementary-stream format
    "1.2.840.10008.1.2.4.101": ("mpeg2video", "mpeg2video", ["-q:v", "2"]),  # MPEG2MPHL
    "1.2.840.10008.1.2.4.102": ("libx264", "h264", ["-profile:v", "high", "-level", "4.1"]),  # MPEG4HP41
    "1.2.840.10008.1.2.4.107": ("libx265", "hevc", ["-x265-params", "log-level=error"]),  # HEVCMP51
}


def video_cine(frames: list[np.ndarray], transfer_syntax: str, fps: float = 10.0, **base: Any) -> Dataset:
    """An ultrasound cine whose pixel data is one video stream (MPEG-2, H.264 or HEVC), encoded
    by the `ffmpeg` program from RGB frames of even size, split into fragments of 64 KB."""
    import subprocess

    from pydicom.encaps import encapsulate

    encoder, form, options = VIDEO_CODECS[transfer_syntax]
    rows, columns = frames[0].shape[:2]
    command = ["ffmpeg", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    command += ["-s", f"{columns}x{rows}", "-r", str(fps), "-i", "-", "-c:v", encoder, *options]
    command += ["-pix_fmt", "yuv420p", "-f", form, "-"]
    raw = b"".join(np.ascontiguousarray(frame).tobytes() for frame in frames)
    stream = subprocess.run(command, input=raw, capture_output=True, check=True).stdout
    ds = base_dataset(**{"sop_class": US_STORAGE, "modality": "US", "body_part": None, **base})
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = rows, columns, 3, 0
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames, ds.FrameTime, ds.FrameIncrementPointer = len(frames), 1000.0 / fps, 0x00181063
    # One stream, cut into fragments wherever (the standard allows it): encapsulated as one
    # "frame" of many fragments, with an empty offset table.
    pieces = len(stream) // 65536 + 1
    ds.PixelData = encapsulate([stream], fragments_per_frame=pieces)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds
