"""DICOM to display pixels, the radiology way, through pydicom's own functions.

Order (PS3.3 C.11 / PS3.4 N.2): stored values -> Modality LUT (rescale slope/intercept or a
Modality LUT Sequence) -> VOI LUT (a VOI LUT Sequence, else Window Center/Width with its VOI LUT
Function) -> Presentation (MONOCHROME1 inverted) -> 8 bits over the VOI output range. Colour
(RGB, YBR_*) comes out as RGB; PALETTE COLOR goes through its lookup table.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Generator, Iterator
from datetime import date
from typing import Any, cast

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, iter_pixels
from pydicom.pixels.utils import get_expected_length
from pydicom.valuerep import DA

from edge.errors import Code, EdgeError
from edge.imaging.acquisition import acquisition_facts, frame_clock
from edge.imaging.decoded import DecodedImage, DicomHeader, UndecodableDicom, sha256_hex
from edge.imaging.dicom_video import is_video, video_frames
from edge.imaging.per_value import per_value
from edge.study import StudyInfo

VIDEO_STANDS_AT = 30  # the picture that stands for a video cine: its middle, at most this far in
MAX_FRAME_PIXELS = 100_000_000  # as for PNG/JPEG: larger than any radiograph, smaller than a bomb
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
# The date an age is counted to when PatientAge is absent, in order of preference (issue 14).
AGE_REFERENCE_DATES = ("StudyDate", "AcquisitionDate", "ContentDate", "SeriesDate")
MAX_AGE_YEARS = 130


def decode_dicom(data: bytes, name: str = "input") -> DecodedImage:
    """DICOM bytes -> display image; anything malformed becomes a coded refusal, never a crash.

    A well-formed object whose pixels this build cannot show is refused with `UndecodableDicom`
    (it carries the header, so the DICOM listener can still store it); an object cut short is
    `DICOM_TRUNCATED`; a header no image can have is `DICOM_INVALID`."""
    ds = _read(data, name)
    try:
        _refuse_if_truncated(ds, data, name)
        return _decode_dataset(ds, data, name)
    except EdgeError:
        raise
    except Exception as exc:  # hostile or broken files raise anything
        raise EdgeError(
            Code.DICOM_INVALID, f"{name} is malformed DICOM ({type(exc).__name__}: {exc})"[:300]
        ) from exc


def _decode_dataset(ds: Dataset, data: bytes, name: str) -> DecodedImage:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop_name = _sop_class_name(ds)
        if "Image Storage" in sop_name:  # pixel data is mandatory in every image object
            raise EdgeError(
                Code.DICOM_TRUNCATED,
                f"{name}: an image object ({sop_name}) without its pixel data: an incomplete transfer",
            )
        raise UndecodableDicom(
            Code.DICOM_NO_PIXELS, f"{name} has no pixel data ({sop_name})", header(ds, data)
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    infer_missing_transfer_syntax(ds)
    _refuse_impossible_header(ds, frames, name)
    syntax = _safe(lambda: uid.UID(str(ds.file_meta.TransferSyntaxUID)))
    try:
        if is_video(ds):  # a video stream's pictures are display RGB already
            # A stream is read from its start (no index to seek by): the middle of a 5-minute
            # loop is 4,500 pictures in, seconds each time the TUI shows it; a second in stands
            # for it as well.
            if "NumberOfFrames" not in ds:
                # Type 1 in every multi-frame object, yet a stream is a cine whatever its header
                # says: read as a still, a loop went to a still's model (its first picture). Its
                # pictures are counted instead, once, here in the decoder.
                frames = _count(video_frames(ds, name))
            pixels = _picture_at(video_frames(ds, name), min(frames // 2, VIDEO_STANDS_AT))
        else:
            if frames > 1:
                # A cine: the middle frame stands for it here (metadata, gate); the worker hands
                # the whole file to the video path (edge.video.analysis.process_cine).
                stored = np.asarray(pydicom.pixels.pixel_array(ds, index=frames // 2))
            else:
                stored = stored_pixels(ds, data)
            pixels = display_pixels(stored, ds)
    except EdgeError as error:
        if error.code is Code.DICOM_UNSUPPORTED:
            raise UndecodableDicom(error.code, f"{name}: {error.message}", header(ds, data)) from error
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # hostile or broken files raise anything, a Rust decoder's
        # panic too (pyo3's PanicException is a BaseException: a corrupt RLE frame, by fuzzing)
        raise _pixels_refused(exc, syntax, ds, data, name) from exc
    return DecodedImage(
        pixels=pixels,
        format="dicom",
        sha256=sha256_hex(data),
        study=study_info(ds),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        frames=frames,
        meta=technical_meta(ds),
    )


def _pixels_refused(exc: BaseException, syntax: Any, ds: Dataset, data: bytes, name: str) -> EdgeError:
    """The refusal of pixels that would not decode: native ones that do not match their header
    (`DICOM_INVALID`), a stream in an encoding this build reads (`DICOM_PIXELS_DAMAGED`: "send it
    in another transfer syntax" sent a technician to reconfigure a modality that works), or an
    encoding it cannot read (`DICOM_UNSUPPORTED`); the last two keep the header (stored)."""
    what = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
    first_line = next(iter(str(exc).splitlines()), "")  # a plugin's report spans lines
    detail = f"({what}): {type(exc).__name__}: {first_line}"
    if syntax is not None and _safe(lambda: syntax.is_compressed) is False:
        # Native pixels always decode when the header and the bytes agree: they do not.
        return EdgeError(Code.DICOM_INVALID, f"{name}: pixel data do not match the header {detail}"[:300])
    if syntax is not None and _safe(lambda: get_decoder(syntax).is_available):
        return UndecodableDicom(
            Code.DICOM_PIXELS_DAMAGED,
            f"{name}: its {what} pixel data could not be decoded ({type(exc).__name__}), though"
            " this device reads that encoding: damaged by the sender or in transfer",
            header(ds, data),
        )
    return UndecodableDicom(
        Code.DICOM_UNSUPPORTED, f"{name}: pixel data could not be decoded {detail}"[:300], header(ds, data)
    )


def header(ds: Dataset, data: bytes) -> DicomHeader:
    """What the object says about itself, for storing it without its pixels decoded."""
    return DicomHeader(
        sha256=sha256_hex(data),
        width=_safe(lambda: int(ds.Columns)) or 0,
        height=_safe(lambda: int(ds.Rows)) or 0,
        study=study_info(ds),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        frames=_safe(lambda: int(ds.get("NumberOfFrames", 1) or 1)) or 1,
        meta=technical_meta(ds),
    )


def _sop_class_name(ds: Dataset) -> str:
    sop = _safe(lambda: ds.get("SOPClassUID")) or _safe(lambda: ds.file_meta.MediaStorageSOPClassUID)
    return str(getattr(sop, "name", None) or sop or "unknown SOP class")


def _refuse_if_truncated(ds: Dataset, data: bytes, name: str) -> None:
    """An element whose stated length runs past the last byte: the object was cut short.

    pydicom reads what is there (a short value, or the elements before an undefined-length
    one that never ends) and only warns; the file offsets it records tell. A deflated body is
    read from an inflated copy, whose offsets are not the file's: left to the other checks."""
    syntax = _safe(lambda: str(ds.file_meta.TransferSyntaxUID))
    if syntax == uid.DeflatedExplicitVRLittleEndian:
        return
    for element in ds.elements():
        start = getattr(element, "value_tell", None)
        length = getattr(element, "length", None)
        if start is None or length is None or length == 0xFFFFFFFF:
            continue
        if start + length > len(data):
            raise EdgeError(
                Code.DICOM_TRUNCATED,
                f"{name} ends {start + length - len(data)} bytes before its last element does:"
                " an incomplete transfer",
            )


_BITS_ALLOCATED = (1, 8, 16, 32, 64)


def _refuse_impossible_header(ds: Dataset, frames: int, name: str) -> None:
    """Sizes and depths no image can have are a malformed object (DICOM_INVALID: check the
    sender), not an encoding this build lacks; checked before any decoder allocates for them."""
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    allocated, stored = int(ds.get("BitsAllocated", 0) or 0), int(ds.get("BitsStored", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    problem = None
    if rows <= 0 or columns <= 0 or rows * columns > MAX_FRAME_PIXELS:
        problem = f"{columns}x{rows} pixels"
    elif allocated not in _BITS_ALLOCATED or not 0 < stored <= allocated:
        problem = f"{stored} bits stored in {allocated} allocated"
    elif samples not in (1, 3):
        problem = f"{samples} samples per pixel"
    elif frames < 1:
        problem = f"{frames} frames"
    else:
        syntax = _safe(lambda: uid.UID(str(ds.file_meta.TransferSyntaxUID)))
        raw = _safe(lambda: ds["PixelData"].value) if "PixelData" in ds else None
        # pydicom's count knows the standard's packings (1-bit, YBR_FULL_422's shared chroma)
        expected = _safe(lambda: get_expected_length(ds)) or (
            (rows * columns * samples * frames * allocated + 7) // 8
        )
        native = syntax is not None and not syntax.is_compressed and raw is not None
        held = len(raw) if native and raw is not None else expected
        if held < expected:
            # over the network a file cut short before sending looks the same: say both
            problem = (
                f"{held} bytes of pixel data where the header needs {expected}: a header that"
                " is wrong, or a file cut short before it was sent"
            )
        elif held >= expected + max(2, expected // frames):
            # A whole frame or more beyond what the header describes: its rows, columns or
            # number of frames are wrong, so any picture cut from these bytes would be too
            # (less than a frame is padding: always the byte that makes an odd length even).
            problem = (
                f"{held} bytes of pixel data where the header describes {expected}: its rows,"
                " columns or number of frames are wrong"
            )
    if problem:
        raise EdgeError(Code.DICOM_INVALID, f"{name}: impossible image header ({problem})")


def display_frames(data: bytes) -> Generator[tuple[float, np.ndarray], None, None]:
    """Every frame of a multi-frame DICOM as (seconds, display image), lazily (one in memory)."""
    ds = _read(data, "cine")
    infer_missing_transfer_syntax(ds)
    stated = _safe(lambda: int(ds.get("NumberOfFrames", 1) or 1)) or 1
    if is_video(ds):
        pictures: Iterator[np.ndarray] = video_frames(ds, "cine", stated)
    else:
        pictures = (display_pixels(np.asarray(stored), ds) for stored in iter_pixels(ds))
    clock = frame_clock(ds, stated)
    for index, picture in enumerate(pictures):
        yield clock(index), picture


def _picture_at(pictures: Generator[np.ndarray, None, None], wanted: int) -> np.ndarray:
    """The picture at index `wanted` (the last, should there be fewer), read up to it."""
    chosen = None
    try:
        for index, picture in enumerate(pictures):
            chosen = picture
            if index >= wanted:
                break
    finally:
        pictures.close()  # its temporary file goes now
    if chosen is None:
        raise ValueError("no picture")
    return chosen


def _count(pictures: Generator[np.ndarray, None, None]) -> int:
    """How many pictures a stream holds, read to its end one at a time."""
    return sum(1 for _ in pictures)


def infer_missing_transfer_syntax(ds: Dataset) -> None:
    """Files whose meta lacks (0002,0010) still say how they were encoded as pydicom read them;
    for native (uncompressed) pixel data that is all the decoder needs."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" in meta or ds.get("PixelData") is None:
        return
    implicit, little = ds.original_encoding
    if implicit:
        meta.TransferSyntaxUID = uid.ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian


def stored_pixels(ds: Dataset, data: bytes) -> np.ndarray:
    """pydicom's decoders first; for 12-bit JPEG Extended, which pydicom's permissively licensed
    plugins decline (Pillow has no 12-bit path, its GDCM plugin excludes the syntax), GDCM itself,
    which decodes it correctly (python-gdcm issue #35: identical to DCMTK). A 12-bit one goes to
    GDCM at once: pydicom's plugins each logged an error declining it, twice a film."""
    syntax = _safe(lambda: ds.file_meta.TransferSyntaxUID)
    twelve_bit = syntax == uid.JPEGExtended12Bit and (_safe(lambda: int(ds.BitsStored)) or 8) > 8
    if twelve_bit:
        try:
            return _gdcm_pixels(ds, data)
        except Exception:  # noqa: BLE001 - GDCM absent or refusing: pydicom's own say, below
            pass
    try:
        return np.asarray(ds.pixel_array)
    except Exception:
        if syntax != uid.JPEGExtended12Bit or twelve_bit:
            raise
        return _gdcm_pixels(ds, data)


def _gdcm_pixels(ds: Dataset, data: bytes) -> np.ndarray:
    import tempfile

    import gdcm  # python-gdcm: BSD-style licence

    with tempfile.NamedTemporaryFile(suffix=".dcm") as handle:  # GDCM reads files, not buffers
        handle.write(data)
        handle.flush()
        reader = gdcm.ImageReader()
        reader.SetFileName(handle.name)
        if not reader.Read():
            raise ValueError("GDCM could not read the file")
        image = reader.GetImage()
        raw = image.GetBuffer().encode("utf-8", "surrogateescape")  # SWIG returns bytes as str
    allocated = int(ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    dtype = np.dtype(f"{'i' if signed else 'u'}{allocated // 8}")
    samples = int(ds.get("SamplesPerPixel", 1))
    shape = (int(ds.Rows), int(ds.Columns)) + ((samples,) if samples > 1 else ())
    return np.frombuffer(raw, dtype=dtype)[: int(np.prod(shape))].reshape(shape)


def _safe(get: Callable[[], Any]) -> Any:
    """A metadata value, or None when the element is malformed: one bad tag must not
    refuse an otherwise readable image."""
    try:
        return get()
    except Exception:  # noqa: BLE001
        return None


def _read(data: bytes, name: str) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError) as exc:
        raise EdgeError(Code.DICOM_INVALID, f"{name} is not a readable DICOM file: {exc}") from exc
    except Exception as exc:
        raise EdgeError(Code.DICOM_INVALID, f"{name} is not a readable DICOM file: {exc}") from exc


def display_pixels(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored pixel values -> uint8 display image (pure apart from reading `ds`)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        # Presentation LUT Shape INVERSE inverts too (DCMTK); on MONOCHROME1 it is the
        # inversion the photometric already asks for (the DX object requires it), not a second.
        shape = str(ds.get("PresentationLUTShape") or "").strip().upper()
        return _grey_display(stored, ds, invert=photometric == "MONOCHROME1" or shape == "INVERSE")
    if photometric == "PALETTE COLOR":
        return per_value(stored, lambda values: _palette_values(values, ds))
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):
        # pydicom's pixel_array has already converted YBR to RGB (as_rgb defaults to True).
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        return per_value(stored, lambda values: _scale_to_uint8(values.astype(np.float64), 0.0, top))
    raise EdgeError(Code.DICOM_UNSUPPORTED, f"photometric interpretation {photometric} is not supported")


def _grey_display(stored: np.ndarray, ds: Dataset, *, invert: bool) -> np.ndarray:
    if stored.ndim != 2:
        raise EdgeError(Code.DICOM_UNSUPPORTED, f"unexpected grey pixel array shape {stored.shape}")
    return per_value(stored, lambda values: _grey_values(values, ds, invert=invert))


def _palette_values(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """The palette's colours on the palette's own scale: they were stretched to the image's
    brightest, so a dark scan was shown, scored and sent brighter than the scanner showed it."""
    rgb = apply_color_lut(stored, ds)
    return _scale_to_uint8(rgb.astype(np.float64), 0.0, _palette_top(ds, rgb.dtype))


def _palette_top(ds: Dataset, dtype: np.dtype) -> float:
    """Full scale of the palette's entries: 8-bit ones, or 16-bit ones whose whole table stays
    under 256 (8-bit values some writers put in 16-bit words, as DCMTK reads them), are 255."""
    if dtype == np.uint8:
        return 255.0
    try:
        entries, first, _ = (int(v) for v in ds.RedPaletteColorLookupTableDescriptor)
        table = apply_color_lut(np.arange(first, first + (entries or 65536)), ds)
    except Exception:  # noqa: BLE001 - a table that cannot be read whole: the standard's scale
        return 65535.0
    return 255.0 if int(table.max()) <= 255 else 65535.0


def _grey_values(stored: np.ndarray, ds: Dataset, *, invert: bool) -> np.ndarray:
    modality = apply_modality_lut(stored, ds)
    low, high = voi_output_range(ds, modality)
    _widen_8_bit_voi_lut(ds)
    voi = apply_voi_lut(modality, ds, prefer_lut=True)
    display = _scale_to_uint8(np.asarray(voi, dtype=np.float64), low, high)
    return 255 - display if invert else display


def _widen_8_bit_voi_lut(ds: Dataset) -> None:
    """Work around pydicom 3.0.2 indexing an 8-bit VOI LUT through a uint8 array.

    `apply_voi` builds its index array with the LUT's entry type, so with 8-bit entries any
    input value above 255 wraps (a 4096-entry LUT turns 4000 into 160). Declaring the entries
    16-bit changes nothing else: the LUT Data words are read the same way and the values stay
    0..255. Our own dataset, decoded from bytes, so changing it in place is safe.
    """
    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return
    for item in sequence:
        descriptor = item.get("LUTDescriptor")
        if descriptor is not None and int(descriptor[2]) == 8:
            item.LUTDescriptor = [int(descriptor[0]), int(descriptor[1]), 16]


def voi_output_range(ds: Dataset, modality: np.ndarray) -> tuple[float, float]:
    """The range of values pydicom's VOI step will produce (so 8-bit scaling is exact).

    A VOI LUT Sequence outputs 0..2^n-1 (n from its descriptor); a window outputs the range
    pydicom derives from Bits Stored, signedness and rescale (see `apply_windowing`). With no
    VOI at all, 8-bit data keeps its full range (it is display-ready) and deeper data is shown
    over its own min..max, as viewers do.
    """
    voi_sequence = ds.get("VOILUTSequence")
    if voi_sequence:
        bits = int(cast(list[int], voi_sequence[0].LUTDescriptor)[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        bits_stored = int(ds.BitsStored)
        modality_sequence = ds.get("ModalityLUTSequence")
        if modality_sequence:
            low, high = 0.0, float(2 ** int(modality_sequence[0].LUTDescriptor[2]) - 1)
        elif int(ds.get("PixelRepresentation", 0)) == 0:
            low, high = 0.0, float(2**bits_stored - 1)
        else:
            low, high = float(-(2 ** (bits_stored - 1))), float(2 ** (bits_stored - 1) - 1)
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope is not None and intercept is not None:
            low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
        return (low, high) if low <= high else (high, low)
    bits_stored = int(ds.get("BitsStored", 16))
    if bits_stored <= 8 and "ModalityLUTSequence" not in ds:
        # 8-bit data (secondary capture, exported stills) is already display values.
        low, high = 0.0, float(2**bits_stored - 1)
        slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
        return low * slope + intercept, high * slope + intercept
    return float(modality.min()), float(modality.max())


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def parse_age(value: Any) -> float | None:
    """DICOM AS (`005Y`, `018M`, `010W`, `003D`) -> years; None when absent or malformed."""
    match = _AGE.match(str(value or "").strip().upper())
    if not match:
        return None
    return round(int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)], 3)


def patient_age(ds: Dataset) -> tuple[float | None, str | None]:
    """The patient's age in years and where it came from (`meta["age_source"]`).

    PatientAge when it is readable; else PatientBirthDate counted to the first readable date of
    `AGE_REFERENCE_DATES`, source `PatientBirthDate+StudyDate` (or the date used). An impossible
    result (born after that date, older than `MAX_AGE_YEARS`) is no age, not a guess. The birth
    date itself is never kept: only the age, as PatientAge would have said it, is stored and
    may travel (de-identification keeps age, drops birth dates)."""
    stated = parse_age(_text(ds, "PatientAge"))
    if stated is not None:
        return stated, "PatientAge"
    born = _date(ds, "PatientBirthDate")
    if born is None:
        return None, None
    for keyword in AGE_REFERENCE_DATES:
        on = _date(ds, keyword)
        if on is not None:
            age = age_between(born, on)
            return (age, f"PatientBirthDate+{keyword}") if age is not None else (None, None)
    return None, None


def age_between(born: date, on: date) -> float | None:
    """Age in years at `on`, at PatientAge's own resolution: completed years from two years
    old, completed months before, days in the first month (so a derived age says no more about
    the birth date than a stated one). None when impossible."""
    if on < born:
        return None
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    if years > MAX_AGE_YEARS:
        return None
    if years >= 2:
        return float(years)
    months = (on.year - born.year) * 12 + on.month - born.month - (on.day < born.day)
    if months >= 1:
        return round(months / 12, 3)
    return round((on - born).days / 365.25, 3)


def _date(ds: Dataset, keyword: str) -> date | None:
    """A DA element as a date through pydicom's own parsing; None when absent or unreadable."""
    text = _text(ds, keyword)
    if text is None:
        return None
    return cast(date | None, _safe(lambda: DA(text)))


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _safe(lambda: ds.get(keyword))
    if value is None or value == "":
        return None
    return _safe(lambda: str(value).strip()) or None


def study_info(ds: Dataset) -> StudyInfo:
    return StudyInfo(
        study_uid=_text(ds, "StudyInstanceUID"),
        phi_patient_id=_text(ds, "PatientID"),
        phi_patient_name=_text(ds, "PatientName"),
        phi_accession=_text(ds, "AccessionNumber"),
        patient_age_years=patient_age(ds)[0],
        patient_sex=_text(ds, "PatientSex"),
        modality=_text(ds, "Modality"),
        body_part=(_text(ds, "BodyPartExamined") or "").upper() or None,
        description=_text(ds, "StudyDescription"),
        study_date=_text(ds, "StudyDate"),
    )


def technical_meta(ds: Dataset) -> dict[str, Any]:
    """What the applicability gate and the reader need; nothing that identifies a patient."""
    sop_class = _safe(lambda: ds.get("SOPClassUID"))
    syntax = _safe(lambda: ds.file_meta.TransferSyntaxUID)
    spacing = _safe(lambda: [float(v) for v in (ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"))])
    return {
        "sop_class_uid": str(sop_class) if sop_class else None,
        "sop_class": getattr(sop_class, "name", None),
        "transfer_syntax": str(syntax) if syntax else None,
        "modality": _text(ds, "Modality"),
        "body_part": (_text(ds, "BodyPartExamined") or "").upper() or None,
        "view_position": _text(ds, "ViewPosition"),
        "photometric": _text(ds, "PhotometricInterpretation"),
        "bits_stored": _safe(lambda: int(ds.BitsStored)),
        "signed": bool(_safe(lambda: int(ds.get("PixelRepresentation", 0)))),
        "pixel_spacing_mm": spacing or None,
        "manufacturer": _text(ds, "Manufacturer"),
        "model": _text(ds, "ManufacturerModelName"),
        "burned_in_annotation": _text(ds, "BurnedInAnnotation"),
        "age_source": patient_age(ds)[1],
        **acquisition_facts(ds),  # the acquisition time and pixel spacings the payload sends
    }
