"""The applicability and quality gate: may this model score this image at all?

A commercial TB-screening box refuses unsuitable input with codes instead of scoring it; so do
we. The checks run in order, applicability first (modality, body part, view, age: from the DICOM
metadata against the manifest's `[accepts]`), then quality (`[quality]` thresholds on measures
of the pixels). Every refusal is a stable code and one sentence; the image stays stored and its
job ends `refused`, so the technician sees it in the worklist with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edge.errors import Code, EdgeError, with_others
from edge.imaging.decoded import DecodedImage
from edge.imaging.quality import QualityMetrics, measure
from edge.inference.registry import Manifest

LATERAL_VIEWS = {"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"}
QUALITY_CODES = frozenset(
    {
        Code.IMAGE_TOO_SMALL,
        Code.UNDEREXPOSED,
        Code.OVEREXPOSED,
        Code.LOW_CONTRAST,
        Code.BLURRED,
        Code.MOSTLY_BLANK,
    }
)
"""Refusals for the pixels' quality (the others are for what the metadata says)."""
_DATE_WORDS = {
    "StudyDate": "study date",
    "AcquisitionDate": "acquisition date",
    "ContentDate": "content date",
    "SeriesDate": "series date",
}


@dataclass(frozen=True)
class GateResult:
    refusals: list[EdgeError]
    quality: QualityMetrics

    @property
    def passed(self) -> bool:
        return not self.refusals

    def first(self) -> EdgeError:
        """The refusal a job records: the first, with the others named in its sentence."""
        return with_others(self.refusals[0], self.refusals[1:])


def applicability(decoded: DecodedImage, manifest: Manifest) -> list[EdgeError]:
    accepts = manifest.accepts
    study = decoded.study
    name = manifest.name
    out = []
    if study.modality is None:
        if not accepts.unlabelled:
            out.append(
                EdgeError(
                    Code.MODALITY_NOT_ACCEPTED,
                    f"{name} needs DICOM input with a modality, this image has none",
                )
            )
    elif accepts.modalities and study.modality.upper() not in accepts.modalities:
        out.append(
            EdgeError(
                Code.MODALITY_NOT_ACCEPTED,
                f"{name} accepts {'/'.join(accepts.modalities)}, not {study.modality}",
            )
        )
    if study.body_part and not accepts.takes_body_part(study.body_part):
        out.append(
            EdgeError(
                Code.BODY_PART_NOT_ACCEPTED,
                f"{name} accepts {'/'.join(accepts.body_parts)}, not {study.body_part}",
            )
        )
    view = str(decoded.meta.get("view_position") or "").upper()
    if view and accepts.views and view not in accepts.views:
        kind = "a lateral view" if view in LATERAL_VIEWS else f"view {view}"
        out.append(
            EdgeError(Code.VIEW_NOT_ACCEPTED, f"{name} reads {'/'.join(accepts.views)} views, this is {kind}")
        )
    age = study.patient_age_years
    if age is not None and accepts.age_years is not None:
        low, high = accepts.age_years
        if not low <= age <= high:
            out.append(
                EdgeError(
                    Code.AGE_OUT_OF_RANGE,
                    f"{name} was validated for ages {low:g}-{high:g} years, the patient is {age:g}"
                    + _age_origin(decoded.meta.get("age_source")),
                )
            )
    return out


def _age_origin(source: object) -> str:
    """Where a derived age came from, for the refusal sentence ("... the patient is 86 (from
    birth date and study date)"), so the technician knows which dates to check; nothing for a
    stated PatientAge."""
    text = str(source or "")
    if not text.startswith("PatientBirthDate+"):
        return ""
    keyword = text.split("+", 1)[1]
    return f" (from birth date and {_DATE_WORDS.get(keyword, keyword)})"


def quality(metrics: QualityMetrics, manifest: Manifest) -> list[EdgeError]:
    rule = manifest.quality
    out = []
    if metrics.min_side < rule.min_side:
        out.append(
            EdgeError(
                Code.IMAGE_TOO_SMALL,
                f"the image is {metrics.min_side} px on its short side, {rule.min_side} needed",
            )
        )
    checks = [
        (
            rule.max_uniform_fraction,
            metrics.uniform_fraction,
            True,
            Code.MOSTLY_BLANK,
            "{v:.0%} of the image is one flat grey (limit {t:.0%}): no anatomy to read",
        ),
        (
            rule.max_black_fraction,
            metrics.black_fraction,
            True,
            Code.OVEREXPOSED,
            "{v:.0%} of the image is clipped black (limit {t:.0%})",
        ),
        (
            rule.max_white_fraction,
            metrics.white_fraction,
            True,
            Code.UNDEREXPOSED,
            "{v:.0%} of the image is clipped white (limit {t:.0%})",
        ),
        (
            rule.min_dynamic_range,
            metrics.dynamic_range,
            False,
            Code.LOW_CONTRAST,
            "the useful grey range is {v:.0f} levels (at least {t:.0f} needed)",
        ),
        (
            rule.min_sharpness,
            metrics.sharpness,
            False,
            Code.BLURRED,
            "too little fine detail (sharpness {v:.0f}, at least {t:.0f} needed): motion or focus",
        ),
    ]
    for threshold, value, is_maximum, code, sentence in checks:
        if threshold is None:
            continue
        if (value > threshold) if is_maximum else (value < threshold):
            out.append(EdgeError(code, sentence.format(v=value, t=threshold)))
    return out


def check(decoded: DecodedImage, manifest: Manifest) -> GateResult:
    metrics = measure(decoded.pixels)
    return GateResult(applicability(decoded, manifest) + quality(metrics, manifest), metrics)


def refusal_in_service(verdict: GateResult, out_of_scope: Callable[[], EdgeError | None]) -> EdgeError:
    """The refusal service records for an image the gate refuses (`verdict`). An image refused
    for its quality alone may not be the kind of image the model reads at all (an eye scan is
    "mostly blank" to a chest X-ray model): the applicability check's refusal (`out_of_scope`,
    asked only then; None where it passes or is off) is the more useful one and comes first.
    Metadata refusals (modality, view, age) are certain and stay first."""
    if all(r.code in QUALITY_CODES for r in verdict.refusals):
        found = out_of_scope()
        if found is not None:
            return with_others(found, verdict.refusals)
    return verdict.first()
