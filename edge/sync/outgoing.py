"""What pixels leave the device: the one decision every thumbnail, heatmap, diagnostic
rendition, clip cine and full image passes
on its way to the hub (issue 17: burned-in patient text).

The header's `BurnedInAnnotation` flag is not trusted to be there or right, so the pixels
decide. For ultrasound, only the imaging sector travels: everything around it (where scanners
draw the name, ID and date) is black (`edge.video.roi`, the same detection as the live path;
key frames of a clip are already the sector). Then the exact pixels about to leave are read by
OCR and text is blacked out (`edge.imaging.burned_text`): the words that match the patient's
name parts, IDs, accession or birth date, and under `[sync] burned_text = "any"` (the default)
every other confident word too; when the device knows no identifier to look for, every word, at
a lower confidence.
Pixels that cannot be checked are withheld: no OCR engine, an engine failure, an image too large,
an ultrasound image without a sector, a full DICOM whose pixel data cannot be rewritten. So is
every image whose header says there is burned-in text, however it says it ("YES", "Y",
"YES\\NO"), as before. Each redaction and withholding returns a code and a note for the
technician; the client logs and audits it.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from edge.errors import Code
from edge.imaging.burned_text import (
    MIN_CONFIDENCE,
    MIN_CONFIDENCE_UNKNOWN_PATIENT,
    Findings,
    Identifiers,
    PixelsUnchecked,
    TextPolicy,
    black_out,
    grow_boxes,
    mask_outside,
    read_text,
    redact_text,
    scale_boxes,
)
from edge.imaging.decode import decode_bytes
from edge.imaging.dicom_redact import CannotRedact, burned_in_flag, redact_pixel_data, stored_value_views
from edge.imaging.evidence import MEDIA_TYPE as EVIDENCE_MEDIA_TYPE
from edge.imaging.ocr import Box, OcrBackend, TesseractOcr
from edge.imaging.rendition_meta import embed, scaled, windowing_of
from edge.video.filmstrip import Cine, CineUnreadable, pack_within
from edge.video.roi import detect_still_sector

log = logging.getLogger(__name__)
# The thumbnail is the worklist's and the study view's preview, never the diagnostic image: a
# greyscale JPEG at quality 80, at most 256 px, costs 5.7-7.3 KB for the shipped samples where
# the PNG of the same pixels cost 26-31 KB (issue 21's wire budget: <= 15 KB per result with its
# pictures). WebP would save ~2 KB more, but every decoder on the way (the hub's header check and
# bounded decode, edge.imaging.decode) already reads JPEG.
THUMBNAIL_SIDE = 256
THUMBNAIL_QUALITY = 80
# The diagnostic rendition (issue 20 item 2): the display image, greyscale, 1024 px on its long
# side, for the specialist to read from. JPEG quality 88, measured on the shipped samples scaled
# to 1024 px (docs/install.md, "Diagnostic rendition"): q=80 50 KB, PSNR 51.4 dB;
# q=85 58 KB, 52.5 dB; q=88 66 KB, 53.5 dB; q=90 73 KB, 54.2 dB; q=95 109 KB, 56.8 dB (with
# film-like grain: 85 / 110 / 137 / 163 / 296 KB). 88 keeps a 1 MB 8-bit image at 8:1-16:1,
# well inside the 30:1 that radiology guidance on irreversible compression of chest radiographs
# accepts, while 95 costs 1.65x the bytes of 88 for no difference on a reading screen. Once a
# day over a 2G link (50 kbit/s) 66 KB is ~11 s; it goes after the lean payload.
RENDITION_SIDE = 1024
RENDITION_QUALITY = 88
_JPEG_SIDES = {
    "thumbnail": (THUMBNAIL_SIDE, THUMBNAIL_QUALITY),
    "rendition": (RENDITION_SIDE, RENDITION_QUALITY),
}
_CACHE = 8  # a result's thumbnail, heatmap and image are cleaned from one reading of the image


@dataclass(frozen=True)
class Outgoing:
    """The bytes to send (None: withheld), and what was done to them."""

    data: bytes | None
    media_type: str
    code: Code | None = None  # BURNED_IN_TEXT_REDACTED, PIXELS_WITHHELD; None: checked, no text
    note: str | None = None  # for the technician (outbox note): counts and reasons, no text read
    detail: dict[str, Any] = field(default_factory=dict)  # for the audit row: ids, counts, reason


@dataclass
class _Cleaned:
    """One stored image, its sector found and its text read once, at full resolution."""

    pixels: np.ndarray  # display pixels, outside the sector black, text blacked out
    sector: Box | None
    findings: Findings


def withheld(media_type: str, reason: str, sentence: str, **detail: Any) -> Outgoing:
    """A file that must not leave, with its reason (`detail` goes into the audit row too)."""
    return Outgoing(
        None, media_type, Code.PIXELS_WITHHELD, f"withheld ({Code.PIXELS_WITHHELD.value}): {sentence}",
        {"reason": reason, **detail},
    )  # fmt: skip


def is_ultrasound(image: dict[str, Any], study: dict[str, Any] | None) -> bool:
    meta = image.get("meta") or {}
    return (
        str(meta.get("modality") or (study or {}).get("modality") or "").upper() == "US"
        or "ultrasound" in str(meta.get("sop_class") or "").lower()
        or meta.get("kind") == "video key frame"
    )


def identifiers_of(data: bytes, image: dict[str, Any], study: dict[str, Any] | None) -> Identifiers:
    """The patient's identifiers as the device knows them: the study row, and for DICOM the
    header itself (other IDs, other names, the birth date: none of which a row keeps)."""
    study = study or {}
    names = [study.get("phi_patient_name")]
    ids = [study.get("phi_patient_id"), study.get("phi_accession")]
    dates: list[str | None] = []
    if image.get("format") == "dicom":
        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the row's identifiers are still used
            ds = None
        if ds is not None:
            names += [str(ds.get("PatientName") or "")] + [
                str(n) for n in _values(ds.get("OtherPatientNames"))
            ]
            ids += [str(ds.get(k) or "") for k in ("PatientID", "AccessionNumber", "OtherPatientIDs")]
            dates.append(str(ds.get("PatientBirthDate") or ""))
    return Identifiers.from_values(names, ids, dates)


def _values(value: Any) -> list[Any]:
    """A DICOM value of multiplicity 0, 1 or n, as a list."""
    from pydicom.multival import MultiValue

    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]


class PixelGuard:
    """Decides and prepares the pixels of one outgoing file. `ocr` is injected (tests)."""

    def __init__(self, policy: str, ocr: OcrBackend | None = None) -> None:
        self.policy = policy
        self.ocr = ocr if ocr is not None else TesseractOcr()
        self._cleaned: OrderedDict[str, _Cleaned] = OrderedDict()

    def prepare(
        self,
        kind: str,
        image: dict[str, Any],
        study: dict[str, Any] | None,
        data: bytes,
        heatmap: bytes | None = None,
        deidentify: Callable[[bytes], bytes | None] | None = None,
    ) -> Outgoing:
        media_types = dict.fromkeys(_JPEG_SIDES, "image/jpeg") | {"evidence": EVIDENCE_MEDIA_TYPE}
        media_type = media_types.get(
            kind, "application/dicom" if kind == "image" and image.get("format") == "dicom" else "image/png"
        )
        meta = image.get("meta") or {}
        if burned_in_flag(meta.get("burned_in_annotation")):
            return withheld(media_type, "flagged", "the header says the pixels carry burned-in text")
        if not self.ocr.is_available():
            log.error("%s: OCR engine %s unavailable", Code.PIXELS_WITHHELD.value, self.ocr.name)
            return withheld(
                media_type, "ocr_unavailable", f"no OCR engine ({self.ocr.name}) to check for text"
            )
        if kind == "evidence":
            # The evidence grid carries no pixel of the patient (edge.imaging.evidence): it leaves
            # unchanged, only where the image's pictures may (the checks above), and is not read.
            return Outgoing(heatmap, media_type, None, None, {"regions": 0})
        identifiers = identifiers_of(data, image, study)
        policy = TextPolicy(
            redact_all=self.policy == "any" or not identifiers,
            min_confidence=MIN_CONFIDENCE if identifiers else MIN_CONFIDENCE_UNKNOWN_PATIENT,
        )
        try:
            cleaned = self._clean(image, study, data, identifiers, policy)
            if cleaned is None:
                return withheld(media_type, "no_sector", "no imaging sector found in this ultrasound image")
            if kind in _JPEG_SIDES:
                side, quality = _JPEG_SIDES[kind]
                out, extra = self._rendition(_shrunk(cleaned.pixels, side), identifiers, policy)
                sent = _encoded(out, _merged(cleaned.findings, extra), jpeg_quality=quality)
                if kind == "rendition" and sent.data is not None:
                    # The window that made these grey levels, in the file (rendition_meta).
                    facts = scaled(windowing_of(data, image), cleaned.pixels.shape[:2], out.shape[:2])
                    sent = replace(sent, data=embed(sent.data, facts))
                return sent
            elif kind == "heatmap":
                out, extra = self._heatmap(heatmap or b"", cleaned, identifiers, policy)
            elif image.get("format") == "dicom":
                return self._full_dicom(data, cleaned, identifiers, policy, deidentify)
            else:
                out, extra = cleaned.pixels, Findings()
        except PixelsUnchecked as exc:
            log.error("%s: %s", Code.PIXELS_WITHHELD.value, exc)
            return withheld(
                media_type, "unchecked", f"the pixels could not be checked for text ({exc})"[:200]
            )
        return _encoded(out, _merged(cleaned.findings, extra))

    def prepare_cine(self, cine: Cine, image: dict[str, Any], study: dict[str, Any] | None) -> Outgoing:
        """A clip's filmstrip (edge/video/filmstrip.py). Its frames are the sector already, but
        are read all the same, on two pictures of them all (`cine_composites`) and, for the
        patient's identifiers, on a third (`outshining`: a name flashed in a frame or two); the
        boxes found are blacked out of every frame, under the same policy as the other kinds.
        Withheld under the same conditions (flagged header, no OCR engine, an OCR failure)."""
        media_type = "image/jpeg"
        if burned_in_flag((image.get("meta") or {}).get("burned_in_annotation")):
            return withheld(media_type, "flagged", "the header says the pixels carry burned-in text")
        if not self.ocr.is_available():
            log.error("%s: OCR engine %s unavailable", Code.PIXELS_WITHHELD.value, self.ocr.name)
            return withheld(
                media_type, "ocr_unavailable", f"no OCR engine ({self.ocr.name}) to check for text"
            )
        identifiers = identifiers_of(b"", image, study)  # a key frame's row: the study's names
        # Upright text only: a clip's frames are its sector, where a screen writes across, and
        # three pictures read three ways would triple the time a clip takes to leave.
        policy = TextPolicy(
            redact_all=self.policy == "any" or not identifiers,
            min_confidence=MIN_CONFIDENCE if identifiers else MIN_CONFIDENCE_UNKNOWN_PATIENT,
            sideways=False,
        )
        try:
            found = Findings()
            for composite in cine_composites(cine.frames):
                found.add(read_text(composite, self.ocr, identifiers, policy))
            if identifiers and len(cine.frames) > 1:
                # A name or ID flashed in a frame or two, on a page of its own: only the patient's
                # identifiers count there. Its speckle, read as other words, blacked out up to 4%
                # more of clean clips; and with no identifier known, it found nothing in the
                # flashed cases tried that the two pictures above had not (an ID is read there).
                found.add(
                    read_text(
                        outshining(cine.frames), self.ocr, identifiers, replace(policy, redact_all=False)
                    )
                )
        except PixelsUnchecked as exc:
            log.error("%s: %s", Code.PIXELS_WITHHELD.value, exc)
            return withheld(
                media_type, "unchecked", f"the pixels could not be checked for text ({exc})"[:200]
            )
        grown = grow_boxes(found.boxes, cine.frames[0].shape)
        cleaned = cine.with_frames([black_out(frame, grown) for frame in cine.frames])
        try:
            data, _ = pack_within(cleaned)
        except CineUnreadable:
            return withheld(media_type, "encode", "the filmstrip could not be encoded")
        return _outcome(data, media_type, Findings(grown, found.identifiers, found.other_text))

    def _clean(
        self, image: dict[str, Any], study: dict[str, Any] | None, data: bytes, identifiers: Identifiers,
        policy: TextPolicy,
    ) -> _Cleaned | None:  # fmt: skip
        key = f"{image.get('id')}:{policy.redact_all}"
        if key in self._cleaned:
            self._cleaned.move_to_end(key)
            return self._cleaned[key]
        pixels = decode_bytes(data, "stored image").pixels
        sector = None
        if is_ultrasound(image, study) and (image.get("meta") or {}).get("kind") != "video key frame":
            sector = detect_still_sector(pixels)
            if sector is None:
                return None
            pixels = mask_outside(pixels, sector)
        pixels, findings = redact_text(pixels, self.ocr, identifiers, policy)
        cleaned = _Cleaned(pixels, sector, findings)
        self._cleaned[key] = cleaned
        while len(self._cleaned) > _CACHE:
            self._cleaned.popitem(last=False)
        return cleaned

    def _rendition(
        self, pixels: np.ndarray, identifiers: Identifiers, policy: TextPolicy
    ) -> tuple[np.ndarray, Findings]:
        """The exact pixels about to leave, read once more: scaling can make text legible again."""
        found = read_text(pixels, self.ocr, identifiers, policy)
        grown = grow_boxes(found.boxes, pixels.shape)
        return black_out(pixels, grown), Findings(grown, found.identifiers, found.other_text)

    def _heatmap(
        self, data: bytes, cleaned: _Cleaned, identifiers: Identifiers, policy: TextPolicy
    ) -> tuple[np.ndarray, Findings]:
        heat = decode_bytes(data, "stored heatmap").pixels
        src_h, src_w = cleaned.pixels.shape[:2]
        sx, sy = heat.shape[1] / src_w, heat.shape[0] / src_h
        # A heatmap of the same picture (the overlay, smaller) takes the image's sector and
        # redactions, scaled; one of another geometry is a clip key frame's (already the sector).
        if abs(sx - sy) <= 0.02 * max(sx, sy):
            if cleaned.sector is not None:
                heat = mask_outside(heat, scale_boxes([cleaned.sector], sx, sy)[0])
            heat = black_out(heat, scale_boxes(cleaned.findings.boxes, sx, sy))
        return self._rendition(heat, identifiers, policy)

    def _full_dicom(
        self, data: bytes, cleaned: _Cleaned, identifiers: Identifiers, policy: TextPolicy,
        deidentify: Callable[[bytes], bytes | None] | None,
    ) -> Outgoing:  # fmt: skip
        media_type = "application/dicom"
        try:
            redacted = redact_pixel_data(data, cleaned.sector, cleaned.findings.boxes)
        except CannotRedact as exc:
            log.warning("%s: full image: %s", Code.PIXELS_WITHHELD.value, exc)
            return withheld(media_type, "not_rewritable", f"its pixel data cannot be rewritten here ({exc})")
        # The file's own pixels, as a viewer shows them: when they are the pixels already read
        # (the usual case), that reading stands; otherwise they are read once more.
        shown = decode_bytes(redacted, "redacted image").pixels
        check = Findings()
        if shown.shape != cleaned.pixels.shape or not np.array_equal(shown, cleaned.pixels):
            check = read_text(shown, self.ocr, identifiers, policy)
        # The file keeps its stored values, not the display: text outside the window is read too.
        for view in stored_value_views(redacted):
            if view.shape[:2] == cleaned.pixels.shape[:2]:
                check.add(read_text(view, self.ocr, identifiers, policy))
        if check.boxes:
            redacted = redact_pixel_data(redacted, None, grow_boxes(check.boxes, cleaned.pixels.shape))
        out = deidentify(redacted) if deidentify is not None else redacted
        if out is None:
            return withheld(media_type, "deidentifier", "the de-identifier refused it")
        return _outcome(out, media_type, _merged(cleaned.findings, check))


CINE_PERCENTILE = 90
CINE_NEIGHBOURS = 3  # frames either side a frame is compared with (`outshining`)
CINE_EXCESS_FLOOR = 24  # grey levels a frame must outshine its neighbours by to be read there


def cine_composites(frames: list[np.ndarray]) -> list[np.ndarray]:
    """The pictures a cine's text is read on: the per-pixel maximum over its frames (static text,
    every frame's bright pixels at once) and the per-pixel 90th percentile. Text shown in only
    some frames (a caption blinking every other frame, an audit's grey ID) is lost in the maximum,
    whose background the speckle of the other frames raises; in the 90th percentile it keeps its
    value wherever it shows in at least a tenth of the frames, and the speckle's peaks fall away.
    Text shown in fewer frames still is read on `outshining`'s picture.
    Reading each frame instead cost 10 times as long and blacked out 5 to 14% of clean clips."""
    stack = np.stack(frames)
    return [stack.max(axis=0), np.percentile(stack, CINE_PERCENTILE, axis=0).astype(stack.dtype)]


def outshining(frames: list[np.ndarray]) -> np.ndarray:
    """Per pixel, the most any frame exceeds the second brightest of its neighbours (up to
    `CINE_NEIGHBOURS` frames either side): text flashed in one frame, or two close together,
    stands out on a dark page, while speckle, which a neighbour nearly always outshines, falls
    to nearly zero. The second brightest, not the brightest, so a caption held for two frames is
    not hidden by its own copy. An opening by 2x2 keeps strokes two pixels wide and more (text
    at 320 px) and drops the lone pixels speckle leaves."""
    values = np.stack(frames).astype(np.int16)
    out = np.zeros(values.shape[1:], np.int16)
    for index in range(len(values)):
        near = range(max(0, index - CINE_NEIGHBOURS), min(len(values), index + CINE_NEIGHBOURS + 1))
        neighbours = np.sort(values[[j for j in near if j != index]], axis=0)
        np.maximum(out, values[index] - neighbours[-min(2, len(neighbours))], out=out)
    page = cv2.morphologyEx(out.clip(0, 255).astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    # What is left below `CINE_EXCESS_FLOOR` is speckle's doing: read with it, OCR took 2-6 times
    # as long on two clean clips (8-11 s), and found a name and ID flashed at grey 110-130 in one
    # frame, two apart or two running no better (5 of 5 placements with the floor at 24; 16 and
    # 32 lost some; at grey 90 the ID is read, not the name).
    page[page < CINE_EXCESS_FLOOR] = 0
    return page


def _shrunk(pixels: np.ndarray, side: int) -> np.ndarray:
    """At most `side` px on the long side (never enlarged)."""
    scale = min(1.0, side / max(pixels.shape[:2]))
    if scale >= 1.0:
        return pixels
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def _merged(first: Findings, second: Findings) -> Findings:
    total = Findings()
    total.add(first)
    total.add(second)
    return total


def _encoded(pixels: np.ndarray, findings: Findings, jpeg_quality: int | None = None) -> Outgoing:
    if jpeg_quality is not None:  # thumbnail, rendition: greyscale (no Doppler colour is read)
        grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if pixels.ndim == 3 else pixels
        params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1]
        ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(grey), params)
        media_type = "image/jpeg"
    else:
        ok, encoded = cv2.imencode(
            ".png", np.ascontiguousarray(pixels[:, :, ::-1] if pixels.ndim == 3 else pixels)
        )
        media_type = "image/png"
    if not ok:
        return withheld(media_type, "encode", "the image could not be encoded")
    return _outcome(encoded.tobytes(), media_type, findings)


def _outcome(data: bytes, media_type: str, findings: Findings) -> Outgoing:
    detail = {
        "identifiers": findings.identifiers,
        "other_text": findings.other_text,
        "regions": len(findings.boxes),
    }
    if not findings.boxes:
        return Outgoing(data, media_type, None, None, detail)
    note = (
        f"sent with text blacked out ({Code.BURNED_IN_TEXT_REDACTED.value}): "
        f"{findings.identifiers} identifier word(s), {findings.other_text} other word(s)"
    )
    return Outgoing(data, media_type, Code.BURNED_IN_TEXT_REDACTED, note, detail)
