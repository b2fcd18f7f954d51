"""Which model serves an input that does not say what it is (no modality, or a modality several
models take and no body part): each candidate's applicability check reads it, and the one that
finds it most typical of its own training images (highest conformal p-value, then nearest)
serves. Pure.

That is a guess, and the checks are not equally sharp: the lung ultrasound model's check lets
60% of chest films through (its card's measured table), so a chest film its own check finds
borderline can rank the lung model first and read "covid". For an input with no modality (a
PNG or JPEG, where the guess spans X-ray and ultrasound) the evidence is weighed, not only ranked:

- a sharp check that takes the input decides: one that refuses at least 95% of each other
  candidate's images (its manifest's measured table; the goal every check is held to, README),
  so its "in scope" or "borderline" says "mine" whatever weaker checks also say. Of the three
  shipped checks only cxr-pneumonia's is sharp;
- otherwise the best guess serves only when its model finds the input in scope;
- otherwise the input is refused where the gate refuses out-of-scope inputs, and naming the
  model (or sending DICOM, which carries its modality) ends the refusal.

A model released without a check ranks last. `python -m tools.routing_eval` measures what this
saves and costs.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from edge.errors import Code, EdgeError
from edge.inference.registry import Manifest
from edge.inference.scope import BORDERLINE, IN_SCOPE, OUT_OF_SCOPE, Scope

NO_CHECK = "no check"
SHARP = 0.95  # the share of another model's images a check must refuse to answer a borderline guess


@dataclass(frozen=True)
class Reading:
    model: str
    p_value: float  # -1 for a model released without a check: it ranks last
    distance: float
    state: str

    @classmethod
    def of(cls, model: str, scope: Scope | None) -> Reading:
        if scope is None:
            return cls(model, -1.0, 0.0, NO_CHECK)
        return cls(model, scope.p_value, scope.distance, scope.state)


def ranked(readings: list[Reading]) -> list[Reading]:
    """Most applicable first: highest p-value, then smallest distance, then name (stable)."""
    return sorted(readings, key=lambda r: (-r.p_value, r.distance, r.model))


def sharp_checks(manifests: dict[str, Manifest]) -> set[str]:
    """The candidates whose check refuses at least SHARP of each other candidate's images, as
    its release measured them (FP32's table: the served variant's threshold is set to match)."""

    def refused(manifest: Manifest, other: str) -> float:
        spec = manifest.applicability
        table = spec.measured.get("fp32", {}) if spec else {}
        return table.get(f"{other} images", {}).get("refused", 0.0)

    return {
        name
        for name, manifest in manifests.items()
        if all(refused(manifest, other) >= SHARP for other in manifests if other != name)
    }


def chosen(order: list[Reading], sharp_checks: Collection[str] = ()) -> Reading | None:
    """The reading whose model serves (`order` ranked), or None: refuse (the module docstring)."""
    for reading in order:
        if reading.model in sharp_checks and reading.state in (IN_SCOPE, BORDERLINE):
            return reading
    best = order[0]
    return best if best.state in (IN_SCOPE, NO_CHECK) else None


def said(readings: list[Reading]) -> str:
    return ", ".join(
        r.model if r.state == NO_CHECK else f"{r.model} p={r.p_value:.3f} {r.state}" for r in readings
    )


def refusal(
    order: list[Reading], looks_like: dict[str, str], modality: str | None, body_part: str | None
) -> EdgeError:
    """Why a guess is not answered. Out of scope for every model: OUT_OF_SCOPE, the picture is
    like none of them (as one model's check says of it when named). A borderline best guess:
    NO_MODEL_FOR_INPUT, the picture may be one of them but the device will not guess which."""
    readings = said(order)
    if all(r.state == OUT_OF_SCOPE for r in order):
        kinds = ", nor ".join(looks_like.get(r.model, r.model) for r in order)
        return EdgeError(Code.OUT_OF_SCOPE, f"this does not look like {kinds} ({readings})")
    return EdgeError(
        Code.NO_MODEL_FOR_INPUT,
        f"the input does not say what it is (modality {modality or 'none'}, body part "
        f"{body_part or 'none'}) and no model finds it clearly like its own images ({readings}): "
        "choose its model (r in the terminal, or edge infer --model; [models] default for a "
        "device on one kind of scanner) or send it as DICOM",
    )
