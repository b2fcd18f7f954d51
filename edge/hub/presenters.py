"""How a synced result reads on the page: labelled values, chosen one by one from the payload.

Nothing is shown by iterating over the payload: a field a future device adds does not appear
on a reader's screen until it is named here (the payload is de-identified on the device; this
list is the second gate).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.hub.render import Picture, Renditions, encode_jpeg, is_evidence, resize_to_width
from edge.hub.study import Study
from edge.hub.worklist import WorklistRow
from edge.imaging import rendition_meta
from edge.inference.scope import BORDERLINE, MEANINGS, frame_words, p_text

QUALITY_LABELS = {
    "min_side": ("short side", "{:.0f} px"),
    "dynamic_range": ("useful grey range", "{:.0f} levels"),
    "sharpness": ("sharpness", "{:.0f}"),
    "black_fraction": ("clipped black", "{:.0%}"),
    "white_fraction": ("clipped white", "{:.0%}"),
    "uniform_fraction": ("flat grey", "{:.0%}"),
}
SEX = {"M": "male", "F": "female", "O": "other"}
NO_WINDOW_LEVEL = ("US",)  # ultrasound is shown as the sonographer saw it
MODALITY_NAMES = {"CR": "X-ray", "DX": "X-ray", "US": "ultrasound", "CT": "CT", "MR": "MR"}
# Age bands rather than ages on the worklist: enough to triage (child doses, paediatric
# normals), less to recognise a patient by from across the room.
AGE_BANDS = (
    (1, "under 1 y"),
    (5, "1-4 y"),
    (12, "5-11 y"),
    (18, "12-17 y"),
    (40, "18-39 y"),
    (65, "40-64 y"),
)
THUMB_WIDTH = 64  # worklist thumbnails: ~2 kB each, fifty rows stay light on a 1 Mbit/s link


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def when(stamp: Any) -> str:
    """'2026-11-29T09:25:26.972Z' -> '2026-11-29 09:25 UTC'."""
    text = str(stamp or "")
    if len(text) < 16 or text[10] != "T":
        return text or "-"
    return f"{text[:10]} {text[11:16]} UTC"


def local_when(stamp: Any) -> str:
    """'2026-11-29T09:25:26' (a DICOM time: the modality's clock, no zone) -> '2026-11-29 09:25'."""
    text = str(stamp or "")
    return f"{text[:10]} {text[11:16]}" if len(text) >= 16 and text[10] == "T" else text or "-"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def age(years: Any) -> str | None:
    """'4 y', '6 mo'; None when the device did not know it (never a literal 'age ?')."""
    if not _number(years):
        return None
    return f"{years:g} y" if years >= 2 else f"{round(years * 12)} mo"


def sex(code: Any) -> str | None:
    return SEX.get(str(code))


def age_band(years: Any) -> str | None:
    if not _number(years):
        return None
    return next((label for limit, label in AGE_BANDS if years < limit), "65 y and over")


def patient(years: Any, code: Any) -> str:
    """'1-4 y · female' for the worklist; 'age and sex not recorded' when the device knew
    neither (PNG/JPEG inputs)."""
    known = [text for text in (age_band(years), sex(code)) if text]
    return " · ".join(known) or "age and sex not recorded"


def percent(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _format(pattern: str, value: Any) -> str:
    try:
        return pattern.format(value)
    except (TypeError, ValueError):
        return str(value)


def sparkline(series: Any, threshold: Any, width: int = 240, height: int = 48) -> dict[str, Any] | None:
    """An SVG polyline of a clip's per-frame probabilities (time, p), with the threshold line."""
    if not isinstance(series, list) or len(series) < 2:
        return None
    points = [
        (float(t), float(p))
        for t, p in (item for item in series if isinstance(item, (list, tuple)) and len(item) == 2)
        if isinstance(t, (int, float)) and isinstance(p, (int, float))
    ]
    if len(points) < 2:
        return None
    start, end = points[0][0], points[-1][0]
    span = (end - start) or 1.0

    def y(p: float) -> float:
        return round(height - 2 - max(0.0, min(1.0, p)) * (height - 4), 1)

    line = " ".join(f"{round((t - start) / span * (width - 2) + 1, 1)},{y(p)}" for t, p in points)
    limit = y(float(threshold)) if isinstance(threshold, (int, float)) else None
    return {
        "width": width,
        "height": height,
        "points": line,
        "threshold_y": limit,
        "start": start,
        "span": span,
    }


def applicability(result: dict[str, Any]) -> dict[str, Any] | None:
    """The applicability check the device ran (edge/inference/scope.py): its word, p-value and
    what they mean; None when the payload carries none (an older device, a model without it)."""
    scope = _dict(result.get("applicability"))
    state, p_value = scope.get("state"), scope.get("p_value")
    if state not in MEANINGS or not isinstance(p_value, (int, float)) or isinstance(p_value, bool):
        return None
    return {
        "state": state,
        "p": p_text(float(p_value)),
        "meaning": MEANINGS[state],
        "borderline": state == BORDERLINE,
        "frame": frame_words(scope),
    }


def study_view(study: Study, kinds: Kinds | None = None) -> dict[str, Any]:
    """The study page's facts, as (label, value) rows and a few named values. `kinds` says
    what the model reads when the study carries no modality (a PNG/JPEG input): an ultrasound
    model's picture gets gain/contrast, not window/level."""
    result, meta, image = study.part("result"), study.part("study"), study.part("image")
    probability, threshold = result.get("probability"), result.get("threshold")
    positive = (
        isinstance(probability, (int, float))
        and isinstance(threshold, (int, float))
        and probability >= threshold
    )
    probabilities = _dict(result.get("probabilities"))
    labels = [str(label) for label in probabilities]
    patient = [
        ("patient", meta.get("patient") or "-"),
        ("age", age(meta.get("age_years")) or "not recorded"),
        ("sex", sex(meta.get("sex")) or "not recorded"),
        ("modality", meta.get("modality") or "not sent (a PNG/JPEG input)"),
        ("body part", meta.get("body_part") or "not sent"),
        ("view", meta.get("view") or "-"),
        ("study date", meta.get("study_date") or "-"),
        ("study key", meta.get("study") or "-"),
        ("site", study.site or "-"),
        ("device", study.device_name),
        ("acquired", local_when(study.part("image").get("acquired"))),
        ("analysed", when(result.get("created"))),
        ("received", when(study.received_at)),
    ]
    runtime = f"{result.get('precision', '-')}, {result.get('backend', '-')}"
    size = f"{image.get('width', '?')} x {image.get('height', '?')}"
    model = [
        ("model", f"{result.get('model', '-')} {result.get('version', '')}".strip()),
        ("operating point", result.get("operating_point") or "-"),
        ("variant", f"{result.get('variant', '-')} ({runtime})"),
        ("image", f"{size} {image.get('format', '')}".strip()),
    ]
    quality = _dict(result.get("quality"))
    quality_rows = [
        (label, _format(pattern, quality[key]))
        for key, (label, pattern) in QUALITY_LABELS.items()
        if isinstance(quality.get(key), (int, float))
    ]
    clip = study.part("clip")
    clip_rows = []
    if clip:
        clip_rows = [
            ("frames analysed", clip.get("frames_analysed", "-")),
            ("frames excluded", clip.get("frames_excluded", "-")),
            ("duration", _format("{:.1f} s", clip.get("duration_s"))),
            ("aggregate", clip.get("aggregate") or "-"),
        ]
    return {
        "finding": result.get("finding") or "-",
        "positive_label": result.get("positive_label") or "",
        "positive": positive,
        "probability": percent(probability),
        "threshold": percent(threshold),
        "probability_value": probability if isinstance(probability, (int, float)) else None,
        "threshold_value": threshold if isinstance(threshold, (int, float)) else None,
        "probabilities": [(label, percent(value)) for label, value in probabilities.items()],
        "applicability": applicability(result),
        "labels": labels,
        "urgent": meta.get("urgent") is True,
        "window_level": _window_level(meta.get("modality"), result, kinds),
        "clip": bool(clip),
        "patient_rows": patient,
        "model_rows": model,
        "quality_rows": quality_rows,
        "clip_rows": clip_rows,
        "sparkline": sparkline(clip.get("series"), threshold) if clip else None,
    }


def _window_level(modality: Any, result: dict[str, Any], kinds: Kinds | None) -> bool:
    if modality:
        return str(modality).upper() not in NO_WINDOW_LEVEL
    accepted = kinds.accepted(result.get("model"), result.get("version"))[0] if kinds else []
    return not accepted or any(m not in NO_WINDOW_LEVEL for m in accepted)


def default_finding(verdict: str, model_finding: str | None, labels: list[str]) -> str | None:
    """The reader's finding when the field is left empty: the model's when they agree, the other
    label of a two-label model when they disagree, none when uncertain."""
    if verdict == "agree":
        return model_finding
    if verdict == "disagree" and model_finding in labels and len(labels) == 2:
        return next(label for label in labels if label != model_finding)
    return None


# ------------------------------------------------------------------ the worklist's columns


def acquired(row: WorklistRow) -> tuple[str, str]:
    """(when, where that time comes from) for a worklist row: the acquisition time from the
    image's header, else the device's own time of the analysis, else the study date, else (said
    plainly) the hub's receive time."""
    if row.acquired:
        where = (
            "the image file's time on the device"
            if row.acquired_from == "file"
            else "the acquisition time in the image's header, on the modality's clock"
        )
        return local_when(row.acquired), f"{where} (dates follow the clinic's date policy)"
    if row.analysed:
        return when(row.analysed), "the device's time of the analysis (dates follow the clinic's date policy)"
    if row.study_date:
        text = str(row.study_date)
        day = f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text
        return day, "the study date the device sent (no time of analysis was sent)"
    return f"received {when(row.received_at)}", "the device sent no time: this is when the hub received it"


def short_key(key: str | None) -> str:
    """'S-1a2b3c4d' from the device's 20-digit keyed study pseudonym (the full key in a title)."""
    return key[:10] if key else "-"


class Kinds:
    """Modality and body part for results that carry none (PNG/JPEG inputs): what the model
    accepts, from its manifest (one look-up per model version and page)."""

    def __init__(self, lookup: Callable[[str, str], Any]) -> None:
        self._lookup = lookup
        self._known: dict[tuple[str, str], tuple[list[str], list[str]]] = {}

    def accepted(self, model: Any, version: Any) -> tuple[list[str], list[str]]:
        """(DICOM modalities, body parts) the model's manifest accepts; empty when unknown."""
        if not model:
            return [], []
        key = (str(model), str(version or ""))
        if key not in self._known:
            accepts = getattr(self._lookup(*key), "accepts", None)
            self._known[key] = (
                [str(m).upper() for m in getattr(accepts, "modalities", [])],
                [str(p).lower() for p in getattr(accepts, "body_parts", [])],
            )
        return self._known[key]

    def _from_model(self, model: str | None, version: str | None) -> tuple[str, str] | None:
        modalities, parts = self.accepted(model, version)
        names = sorted({MODALITY_NAMES.get(m, m) for m in modalities})
        return (" / ".join(names), " / ".join(parts)) if names else None

    def __call__(self, row: WorklistRow) -> tuple[str, bool]:
        """(text, whether it was inferred from the model rather than sent with the study)."""
        if row.modality:
            name = MODALITY_NAMES.get(row.modality.upper())
            text = f"{name} ({row.modality})" if name and name != row.modality else row.modality
            part = (row.body_part or "").lower()
            return " · ".join(t for t in (text, part, row.view or "") if t), False
        inferred = self._from_model(row.model, row.model_version)
        if inferred is None:
            return "not sent", False
        return " · ".join(t for t in inferred if t), True


# ------------------------------------------------------------------ the study's pictures


def _without_heatmap(uploads: dict[str, Any]) -> dict[str, Any]:
    """The uploads a base image may come from: once the full image or the thumbnail is on the
    hub, the grey recovered from the heatmap blend is not used (it is the model's input size,
    224 px, and carries the blend's rounding): only a study with neither falls back to it."""
    if "rendition" in uploads or "image" in uploads or "thumbnail" in uploads:
        return {kind: row for kind, row in uploads.items() if kind != "heatmap"}
    return uploads


def picture(renditions: Renditions, uploads: dict[str, Any]) -> Picture:
    """What the study page shows: the best base image and, separately, the heat layer."""
    base = renditions.describe(_without_heatmap(uploads))
    if "heatmap" not in uploads or base.source in (None, "heatmap", "overlay"):
        return base
    if is_evidence(uploads["heatmap"]):  # the grid: the hub draws the heat over this base
        return Picture(base.source, base.width, base.height, "heat")
    alone = renditions.describe({"heatmap": uploads["heatmap"]})
    layer = {"heatmap": "heat", "overlay": "overlay"}.get(alone.source or "")
    return Picture(base.source, base.width, base.height, layer)


def image(renditions: Renditions, uploads: dict[str, Any], width: int) -> bytes | None:
    return renditions.image(_without_heatmap(uploads), width)


def preview_note(study: Study, source: str | None, requested: bool = False) -> str | None:
    """What the reader is told when the picture is not the diagnostic image."""
    if source in ("rendition", "image"):
        return None
    if "rendition" in study.pending:
        return "Preview only: the diagnostic image is on its way (the clinic's device is sending it)."
    if requested:
        return (
            "Preview only: diagnostic image requested from the device; it comes at the clinic's "
            "next sync (reload then)."
        )
    if source is None:
        return None
    if "image" in study.pending:
        return "Preview only: the diagnostic image is on its way (the clinic's device is still sending it)."
    return (
        "Preview only: this clinic's device does not send the diagnostic image (its [sync] images "
        "setting), or it has not started sending it."
    )


def _jpeg_facts(uploads: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The facts the device wrote in an upload's JPEG comment (edge.imaging.rendition_meta);
    None without that upload or a readable comment."""
    row = uploads.get(kind)
    if row is None:
        return None
    try:
        with open(row.path, "rb") as handle:
            return rendition_meta.read(handle.read(64 * 1024))
    except OSError:
        return None


_VOI_WORDS = {"VOI LUT": "the file's VOI LUT", "stored range": "the stored range (no window in the file)"}


def rendition_windowing(uploads: dict[str, Any]) -> str | None:
    """How the device made the rendition's grey levels (its JPEG comment, rendition_meta), in
    words for the page; None without a rendition or its facts."""
    facts = _jpeg_facts(uploads, "rendition")
    if not facts:
        return None
    voi = str(facts.get("voi") or "as stored")
    if voi == "window" and facts.get("window_center") is not None:
        words = f"window centre {facts['window_center']:g}, width {facts.get('window_width') or 0:g}"
    else:
        words = _VOI_WORDS.get(voi, "the pixels as stored")
    photometric = facts.get("photometric")
    if photometric == "MONOCHROME1":
        words += ", inverted (MONOCHROME1)"
    return f"grey levels from {words} on the device"


def cine(uploads: dict[str, Any]) -> dict[str, Any] | None:
    """A clip's cine (upload kind "cine", edge/video/filmstrip.py) as the page's player needs
    it: frame count and size, and each frame's time and probability, from the filmstrip's own
    JPEG comment; None without one, or when its facts do not describe its frames."""
    facts = _jpeg_facts(uploads, "cine")
    if not facts or facts.get("kind") != "cine":
        return None
    try:
        frames, width, height = int(facts["frames"]), int(facts["frame_width"]), int(facts["frame_height"])
        times = [float(t) for t in facts["times_s"]]
        probabilities = [None if p is None else float(p) for p in facts.get("p") or [None] * frames]
    except (KeyError, TypeError, ValueError):
        return None
    if frames < 1 or width < 1 or height < 1 or len(times) != frames or len(probabilities) != frames:
        return None
    return {
        "frames": frames,
        "width": width,
        "height": height,
        "times": ",".join(f"{t:.3f}" for t in times),
        "p": ",".join("" if p is None else f"{p:.4f}" for p in probabilities),
        "truncated": bool(facts.get("truncated")),
    }


def cine_note(study: Study, requested: bool) -> str:
    """What a clip's page says when it has no cine (yet)."""
    if "cine" in study.pending:
        return "Cine on its way: the clinic's device is sending the clip's frames (reload then)."
    if requested:
        return (
            "Cine requested from the device with the diagnostic image; it comes at the clinic's "
            "next sync (reload then). Meanwhile: one key frame."
        )
    return (
        "Cine not available: one key frame (the device did not send the clip's frames: its "
        "[sync] diagnostic setting, an older device, or the video was not readable there)."
    )


def thumbnail_jpeg(uploads: dict[str, Any], width: int = THUMB_WIDTH) -> bytes | None:
    """The synced thumbnail, shrunk for a worklist row."""
    row = uploads.get("thumbnail")
    if row is None:
        return None
    try:
        decoded = cv2.imdecode(np.frombuffer(Path(row.path).read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
    except OSError:
        return None
    if decoded is None:
        return None
    return encode_jpeg(resize_to_width(decoded, width), quality=80)


def _spacing(value: Any) -> tuple[float, float] | None:
    try:
        row, column = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (row, column) if row > 0 and column > 0 else None


def pixel_spacing(study: Study) -> dict[str, Any] | None:
    """Millimetres per pixel of the original image (row, column) and the attribute it came
    from: PixelSpacing (the patient plane) before ImagerPixelSpacing (the detector plane), from
    the payload when it carries one, else from the full DICOM file's header; None when neither
    says, and the page measures in pixels."""
    image_part = study.part("image")
    for key, name in (
        ("pixel_spacing", "PixelSpacing"),
        ("imager_pixel_spacing", "ImagerPixelSpacing"),
        ("ultrasound_region_spacing", "SequenceOfUltrasoundRegions"),
    ):
        found = _spacing(image_part.get(key))
        if found:
            return {"row": found[0], "column": found[1], "source": name}
    row = study.uploads.get("image")
    if row is None or "dicom" not in str(row.media_type):
        return None
    import pydicom  # the hub reads a DICOM header only here
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(row.path, stop_before_pixels=True)
    except (OSError, InvalidDicomError, ValueError):
        return None
    for name in ("PixelSpacing", "ImagerPixelSpacing"):
        found = _spacing(header.get(name))
        if found:
            return {"row": found[0], "column": found[1], "source": name}
    return None


def reviews_marked(study: Study) -> list[tuple[Any, bool]]:
    """(review, superseded) newest first: only the latest verdict counts."""
    return [(review, index > 0) for index, review in enumerate(study.reviews)]
