"""Model outputs -> calibrated probabilities and a finding. Pure numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature (temperature scaling, Guo et al. 2017)."""
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class Finding:
    finding: str
    """The label reported: `positive` when its probability reaches the threshold, otherwise
    the most probable of the other labels."""
    positive: str
    probability: float
    """Calibrated probability of `positive`."""
    probabilities: dict[str, float]
    threshold: float
    operating_point: str
    profile_id: str | None = None
    """The site profile whose temperature and threshold decided (None: the shipped ones)."""


def decide(
    logits_row: np.ndarray,
    labels: list[str],
    positive: str,
    temperature: float,
    threshold: float,
    operating_point: str,
    profile_id: str | None = None,
) -> Finding:
    probs = softmax(np.asarray(logits_row)[np.newaxis], temperature)[0]
    if probs.shape[0] != len(labels) or not np.all(np.isfinite(probs)):
        raise ValueError(f"expected {len(labels)} finite class scores, got {probs.shape[0]}")
    by_label = {label: float(p) for label, p in zip(labels, probs, strict=True)}
    return decide_from_probabilities(by_label, positive, threshold, operating_point, profile_id)


def decide_from_probabilities(
    by_label: dict[str, float],
    positive: str,
    threshold: float,
    operating_point: str,
    profile_id: str | None = None,
) -> Finding:
    """The finding for already calibrated probabilities (e.g. a clip's aggregate)."""
    p_positive = by_label[positive]
    if p_positive >= threshold:
        finding = positive
    else:
        others = {k: v for k, v in by_label.items() if k != positive}
        finding = max(others, key=others.__getitem__)
    return Finding(finding, positive, p_positive, by_label, threshold, operating_point, profile_id)
