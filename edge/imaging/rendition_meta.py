"""The windowing facts of a diagnostic rendition (issue 20 item 2), carried inside its JPEG.

The rendition is the display image as 8-bit grey, 1024 px on its long side: the reader must
know which window made those grey levels (so a preset on the page is read as "on the display
image", not Hounsfield units), whether the file was inverted (MONOCHROME1), and the pixel
spacing at the rendition's own scale (lengths in mm). The facts travel in a JPEG comment (COM)
segment: they arrive with the pixels they describe, under the same hash, resume and retention
as the file, with no second upload and no change to the wire protocol or the hub's tables.
A decoder that does not know the segment skips it (every JPEG decoder skips COM).

Only technical facts: no text of the header that could name a patient.
"""

from __future__ import annotations

import io
import json
from typing import Any

from edge.imaging.acquisition import spacing

_PREFIX = b"edge-rendition "
_SOI = b"\xff\xd8"
_COM = b"\xff\xfe"
_SCAN_LIMIT = 64 * 1024  # the segment sits right after SOI; never read a whole file for it


def windowing_of(data: bytes, image: dict[str, Any]) -> dict[str, Any]:
    """What made the stored image's display grey levels (edge.imaging.dicom._grey_display):
    the DICOM header's VOI (LUT, window, or the stored range), its photometric interpretation
    and pixel spacing; a PNG/JPEG's pixels are shown as stored."""
    meta = image.get("meta") or {}
    facts: dict[str, Any] = {"photometric": meta.get("photometric"), "voi": "as stored"}
    if image.get("format") != "dicom":
        facts["photometric"] = facts["photometric"] or "as stored"
        return facts
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - the rendition still goes, its facts unknown
        return facts
    facts["photometric"] = str(ds.get("PhotometricInterpretation") or "") or None
    if ds.get("VOILUTSequence"):
        facts["voi"] = "VOI LUT"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        facts["voi"] = "window"
        facts["window_center"] = _first_number(ds.get("WindowCenter"))
        facts["window_width"] = _first_number(ds.get("WindowWidth"))
    else:
        facts["voi"] = "stored range"  # deeper data over its own min..max, as viewers do
    found = spacing(ds.get("PixelSpacing")) or spacing(ds.get("ImagerPixelSpacing"))
    if found:
        facts["pixel_spacing_mm"] = found
    return facts


def scaled(facts: dict[str, Any], source: tuple[int, int], rendition: tuple[int, int]) -> dict[str, Any]:
    """`facts` for a rendition of (height, width) `rendition` made from `source`: the spacing
    per rendition pixel, and both sizes (the page converts its own measurements)."""
    out = dict(facts)
    out["source_size"] = [int(source[0]), int(source[1])]
    out["size"] = [int(rendition[0]), int(rendition[1])]
    found = facts.get("pixel_spacing_mm")
    if found:
        out["pixel_spacing_mm"] = [
            round(found[0] * source[0] / rendition[0], 6),
            round(found[1] * source[1] / rendition[1], 6),
        ]
    return out


def embed(jpeg: bytes, facts: dict[str, Any]) -> bytes:
    """`jpeg` with `facts` in a COM segment right after SOI."""
    if not jpeg.startswith(_SOI):
        raise ValueError("not a JPEG")
    body = _PREFIX + json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()
    if len(body) + 2 > 0xFFFF:
        raise ValueError("rendition facts too long for one JPEG comment")
    return _SOI + _COM + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def read(jpeg: bytes) -> dict[str, Any] | None:
    """The facts `embed` put in `jpeg`, or None (another JPEG, or damaged)."""
    if not jpeg.startswith(_SOI):
        return None
    at = 2
    while at + 4 <= min(len(jpeg), _SCAN_LIMIT):
        if jpeg[at] != 0xFF:
            return None
        marker = jpeg[at + 1]
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no more header segments
            return None
        length = int.from_bytes(jpeg[at + 2 : at + 4], "big")
        if length < 2:
            return None
        body = jpeg[at + 4 : at + 2 + length]
        if marker == 0xFE and body.startswith(_PREFIX):
            try:
                facts = json.loads(body[len(_PREFIX) :])
            except ValueError:
                return None
            return facts if isinstance(facts, dict) else None
        at += 2 + length
    return None


def _first_number(value: Any) -> float | None:
    """A window value of multiplicity 1 or n (several windows: the first is the one applied)."""
    if value is not None and not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        value = value[0] if len(value) else None
    try:
        return round(float(value), 3)
    except (TypeError, ValueError):
        return None
