"""How a synced result reads on the page: labelled values, chosen one by one from the payload.

Nothing is shown by iterating over the payload: a field a future device adds does not appear
on a reader's screen until it is named here (the payload is de-identified on the device; this
list is the second gate).
"""

from __future__ import annotations

from typing import Any

from edge.hub.worklist import Study
from edge.inference.scope import BORDERLINE, MEANINGS, p_text

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


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def when(stamp: Any) -> str:
    """'2026-11-29T09:25:26.972Z' -> '2026-11-29 09:25 UTC'."""
    text = str(stamp or "")
    if len(text) < 16 or text[10] != "T":
        return text or "-"
    return f"{text[:10]} {text[11:16]} UTC"


def age(years: Any) -> str:
    if not isinstance(years, (int, float)) or isinstance(years, bool):
        return "age ?"
    return f"{years:g} y" if years >= 2 else f"{round(years * 12)} mo"


def sex(code: Any) -> str:
    return SEX.get(str(code), "sex ?")


def patient(years: Any, code: Any) -> str:
    """'4 y · female' for the worklist; '-' when the device knew neither (PNG/JPEG inputs)."""
    known = [text for text in (age(years), sex(code)) if not text.endswith("?")]
    return " · ".join(known) or "-"


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
    return {"width": width, "height": height, "points": line, "threshold_y": limit}


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
    }


def study_view(study: Study) -> dict[str, Any]:
    """The study page's facts, as (label, value) rows and a few named values."""
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
        ("age", age(meta.get("age_years"))),
        ("sex", sex(meta.get("sex"))),
        ("modality", meta.get("modality") or "-"),
        ("body part", meta.get("body_part") or "-"),
        ("view", meta.get("view") or "-"),
        ("study date", meta.get("study_date") or "-"),
        ("site", study.site or "-"),
        ("device", study.device_name),
        ("received", when(study.received_at)),
    ]
    runtime = f"{result.get('precision', '-')}, {result.get('backend', '-')}"
    size = f"{image.get('width', '?')} x {image.get('height', '?')}"
    model = [
        ("model", f"{result.get('model', '-')} {result.get('version', '')}".strip()),
        ("operating point", result.get("operating_point") or "-"),
        ("variant", f"{result.get('variant', '-')} ({runtime})"),
        ("image", f"{size} {image.get('format', '')}".strip()),
        ("analysed", str(result.get("created") or "-")[:10]),
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
        "window_level": str(meta.get("modality") or "").upper() not in NO_WINDOW_LEVEL,
        "patient_rows": patient,
        "model_rows": model,
        "quality_rows": quality_rows,
        "clip_rows": clip_rows,
        "sparkline": sparkline(clip.get("series"), threshold) if clip else None,
    }


def default_finding(verdict: str, model_finding: str | None, labels: list[str]) -> str | None:
    """The reader's finding when the field is left empty: the model's when they agree, the other
    label of a two-label model when they disagree, none when uncertain."""
    if verdict == "agree":
        return model_finding
    if verdict == "disagree" and model_finding in labels and len(labels) == 2:
        return next(label for label in labels if label != model_finding)
    return None
