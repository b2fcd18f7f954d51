"""Does a reduced-precision or other-backend model compute the same thing as the reference?

One arithmetic for every such check: the INT8 acceptance gate in tools/quantize.py, the check
at load, and the TensorRT parity gate (`edge models verify`). The reference is always FP32 on
ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge.inference.metrics import roc_auc
from edge.inference.postprocess import softmax

MAX_AUC_DELTA = 0.005
MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class ParityReport:
    images: int
    auc_reference: float
    auc: float
    auc_delta: float
    agreement: float
    """Share of images whose top-1 label is the same as the reference's."""
    max_abs_logit_diff: float
    passed: bool
    rule: str
    scope_ratio: float | None = None
    """Median, over the same images, of the candidate's applicability distance over the
    reference's (both under the FP32 statistics); None without an applicability check. Read by
    `edge.inference.scope.localised`: it does not decide `passed`."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    reference_logits: np.ndarray,
    candidate_logits: np.ndarray,
    truth: np.ndarray,
    positive_index: int,
    *,
    max_auc_delta: float = MAX_AUC_DELTA,
    min_agreement: float = MIN_AGREEMENT,
    max_abs_logit_diff: float | None = None,
) -> ParityReport:
    reference = np.asarray(reference_logits, np.float64)
    candidate = np.asarray(candidate_logits, np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    positive = np.asarray(truth) == positive_index
    auc_ref = roc_auc(positive, softmax(reference)[:, positive_index])
    auc = roc_auc(positive, softmax(candidate)[:, positive_index])
    delta = auc - auc_ref
    agreement = float((reference.argmax(1) == candidate.argmax(1)).mean())
    worst = float(np.abs(reference - candidate).max())
    passed = bool(abs(delta) <= max_auc_delta and agreement >= min_agreement)
    rule = f"|AUC delta| <= {max_auc_delta} and top-1 agreement >= {min_agreement:.0%}"
    if max_abs_logit_diff is not None:
        passed = passed and worst <= max_abs_logit_diff
        rule += f" and max |logit diff| <= {max_abs_logit_diff}"
    if np.isnan(delta):  # one class only (a few samples): AUC cannot be compared, the rest can
        passed = bool(
            agreement >= min_agreement and (max_abs_logit_diff is None or worst <= max_abs_logit_diff)
        )
    return ParityReport(
        images=len(reference),
        auc_reference=round(auc_ref, 6),
        auc=round(auc, 6),
        auc_delta=round(delta, 6),
        agreement=round(agreement, 6),
        max_abs_logit_diff=round(worst, 6),
        passed=passed,
        rule=rule,
    )
