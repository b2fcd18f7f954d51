"""Black out regions in a DICOM object's own pixel data, in place, so a full image can leave the
device with the same redactions as its thumbnail. Pure pydicom and numpy.

Only what can be rewritten exactly is: one frame, greyscale (MONOCHROME1/2) or RGB, native or
compressed with a decoder installed (a compressed object is rewritten as Explicit VR Little
Endian: re-encoding it lossily would change the picture). Anything else raises
`CannotRedact`, and the caller withholds the file.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import pydicom

from edge.imaging.ocr import Box
from edge.imaging.per_value import per_value


class CannotRedact(Exception):
    """The pixel data of this object cannot be rewritten here."""


def burned_in_flag(value: object) -> bool:
    """Whether a BurnedInAnnotation value says "yes" in any of the ways found in the field:
    "YES", "Y", "yes ", "YES\\NO" (multi-valued), b"YES"."""
    if value is None:
        return False
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    parts = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else str(value).split("\\")
    return any(str(part).strip().upper() in {"YES", "Y", "TRUE", "1"} for part in parts)


def redact_pixel_data(data: bytes, keep: Box | None, boxes: Sequence[Box]) -> bytes:
    """The object with everything outside `keep` (when given) and inside `boxes` (margins
    already added) set to the value that displays as black."""
    ds = pydicom.dcmread(io.BytesIO(data))
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise CannotRedact("a multi-frame object")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    try:
        syntax = str(ds.file_meta.TransferSyntaxUID)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(as_rgb=True, generate_instance_uid=False)
            photometric = str(ds.PhotometricInterpretation)
            _say_lossy(ds, syntax)
        pixels = np.array(ds.pixel_array)  # writable copy
    except Exception as exc:
        raise CannotRedact(f"pixel data not decodable ({type(exc).__name__})") from exc
    if photometric not in {"MONOCHROME1", "MONOCHROME2", "RGB"}:
        raise CannotRedact(f"photometric interpretation {photometric or 'absent'}")
    black = pixels.max() if photometric == "MONOCHROME1" else (0 if photometric == "RGB" else pixels.min())
    height, width = pixels.shape[:2]
    region = np.zeros((height, width), dtype=bool)
    if keep is not None:
        x, y, w, h = keep
        region[:] = True
        region[y : y + h, x : x + w] = False
    for x, y, w, h in boxes:
        region[max(0, y) : y + h, max(0, x) : x + w] = True
    pixels[region] = black
    ds.PixelData = pixels.tobytes()
    if photometric == "RGB":
        ds.PlanarConfiguration = 0  # numpy's layout is pixel-interleaved
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# Transfer syntaxes that are lossy whatever their parameters, and the method each names (PS3.3
# C.7.6.1.1.5.1). JPEG 2000 and HTJ2K may be either: there the source's own flag is all there is.
LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
}


def _say_lossy(ds: pydicom.Dataset, syntax: str) -> None:
    """Once lossy, always lossy (PS3.3 C.7.6.1.1.5): pixels decoded from a lossy syntax and
    written uncompressed keep "01" and the method, even when the source did not say so."""
    method = LOSSY_SYNTAXES.get(syntax)
    if method is None:
        return
    ds.LossyImageCompression = "01"
    found = ds.get("LossyImageCompressionMethod")
    methods = [] if not found else [str(found)] if isinstance(found, str) else [str(m) for m in found]
    if method not in methods:
        ds.LossyImageCompressionMethod = [*methods, method] if methods else method


def stored_value_views(data: bytes) -> list[np.ndarray]:
    """A one-frame greyscale object's stored values as 8-bit pictures, whatever its window says:
    scaled from its lowest value to its highest, and by rank (each distinct value a step of its
    own, so a few levels far outside the window stay apart). Text drawn below or above the VOI
    window is black or white on the display a viewer opens with, yet readable to whoever widens
    the window of the full file; these are read for it too. None for RGB (its display is its
    values) or what `redact_pixel_data` would refuse."""
    ds = pydicom.dcmread(io.BytesIO(data))
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return []
    if str(ds.get("PhotometricInterpretation", "")) not in {"MONOCHROME1", "MONOCHROME2"}:
        return []
    try:
        values = np.asarray(ds.pixel_array)
    except Exception:  # noqa: BLE001 - redact_pixel_data refuses it on its own terms
        return []
    if values.ndim != 2:
        return []
    return [per_value(values, view) for view in value_views(values)]  # once per level: a film is 16 MP


def value_views(values: np.ndarray) -> list[Callable[[np.ndarray], np.ndarray]]:
    """The functions that make `stored_value_views` of these stored values (a film's, or any of
    its levels): spread from the lowest value to the highest, and by rank. None when every value
    is the same."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return []

    def spread(levels: np.ndarray) -> np.ndarray:
        return np.round((levels.astype(np.float64) - low) * (255.0 / (high - low))).astype(np.uint8)

    def ranked(levels: np.ndarray) -> np.ndarray:
        distinct, rank = np.unique(levels, return_inverse=True)
        return np.round(rank.reshape(levels.shape) * (255.0 / max(1, len(distinct) - 1))).astype(np.uint8)

    return [spread, ranked]
