"""Classification metrics in plain numpy (the device has no scikit-learn).

Used by the training tools, the quantisation gate, the parity check and `edge models eval`,
so every number in a manifest, a model card and a site's local validation is computed the
same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def roc_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the rank statistic (ties count a half)."""
    truth = np.asarray(truth).astype(bool)
    score = np.asarray(score, np.float64)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), np.float64)
    sorted_scores = score[order]
    # Average ranks over ties, one run of equal scores at a time (in numpy: a bootstrap asks
    # a thousand times, and a loop over 2,000 distinct scores made it half a site's figures).
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(score)]])
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False positive rates, true positive rates and the thresholds (score >= t is positive)."""
    truth = np.asarray(truth).astype(bool)
    score = np.asarray(score, np.float64)
    thresholds = np.unique(score)[::-1]
    positives, negatives = max(int(truth.sum()), 1), max(int((~truth).sum()), 1)
    order = np.argsort(-score, kind="mergesort")
    sorted_truth, sorted_score = truth[order], score[order]
    tp = np.cumsum(sorted_truth)
    fp = np.cumsum(~sorted_truth)
    last = np.searchsorted(-sorted_score, -thresholds, side="right") - 1
    tpr = np.concatenate([[0.0], tp[last] / positives])
    fpr = np.concatenate([[0.0], fp[last] / negatives])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


@dataclass(frozen=True)
class BinaryCounts:
    sensitivity: float
    specificity: float
    accuracy: float
    ppv: float
    npv: float


def at_threshold(truth: np.ndarray, score: np.ndarray, threshold: float) -> BinaryCounts:
    truth = np.asarray(truth).astype(bool)
    predicted = np.asarray(score) >= threshold
    tp = int((predicted & truth).sum())
    tn = int((~predicted & ~truth).sum())
    fp = int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return BinaryCounts(
        sensitivity=ratio(tp, tp + fn),
        specificity=ratio(tn, tn + fp),
        accuracy=ratio(tp + tn, len(truth)),
        ppv=ratio(tp, tp + fp),
        npv=ratio(tn, tn + fn),
    )


def threshold_for_sensitivity(truth: np.ndarray, score: np.ndarray, sensitivity: float) -> float:
    """The highest threshold whose sensitivity is at least `sensitivity`."""
    _fpr, tpr, thresholds = roc_curve(truth, score)
    index = int(np.flatnonzero(tpr >= sensitivity)[0])
    return float(thresholds[index])


def youden_threshold(truth: np.ndarray, score: np.ndarray) -> float:
    """The highest threshold maximising sensitivity + specificity - 1 (Youden's J)."""
    return youden_range(truth, score)[1]


def youden_range(truth: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """(low, high): every threshold above `low` and at most `high` maximises Youden's J on these
    cases (`low` is -inf when that reaches down to the lowest score). `high` sits on a case."""
    fpr, tpr, thresholds = roc_curve(truth, score)
    positives = max(int(np.asarray(truth).astype(bool).sum()), 1)
    negatives = max(int((~np.asarray(truth).astype(bool)).sum()), 1)
    # J in whole cases (tp * N - fp * P): equal J must compare equal, which tpr - fpr in floats
    # does not always (an ulp apart at 30 + 30 cases).
    tp, fp = np.rint(tpr * positives).astype(np.int64), np.rint(fpr * negatives).astype(np.int64)
    whole = tp * negatives - fp * positives
    j = np.where(np.isfinite(thresholds), whole, np.iinfo(np.int64).min)
    top = int(np.argmax(j))
    bottom = top
    while bottom + 1 < len(j) and j[bottom + 1] == j[top]:
        bottom += 1  # the same J lower down: the same range, wider
    low = float(thresholds[bottom + 1]) if bottom + 1 < len(thresholds) else -math.inf
    return low, float(thresholds[top])


def expected_calibration_error(correct_or_truth: np.ndarray, confidence: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width bins: sum over bins of |accuracy - confidence| weighted by size.

    Pass top-1 confidence and whether the top-1 label was right (Guo et al. 2017), or a
    positive-class probability and the binary truth (the reliability of that probability).
    """
    hits = np.asarray(correct_or_truth, np.float64)
    conf = np.asarray(confidence, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.mean() * abs(hits[members].mean() - conf[members].mean())
    return float(total)


def reliability_bins(
    truth: np.ndarray, probability: np.ndarray, bins: int = 15
) -> list[tuple[float, float, int]]:
    """(mean predicted, observed frequency, count) per non-empty bin, for reliability plots."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(probability, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        members = index == b
        if members.any():
            out.append((float(probability[members].mean()), float(truth[members].mean()), int(members.sum())))
    return out


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean -log p(true class) of softmax(logits / temperature), computed in log space."""
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    log_probs = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), np.asarray(labels, np.int64)].mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, prior: tuple[float, float] | None = None
) -> float:
    """The temperature minimising validation negative log-likelihood (golden-section search).

    One scalar cannot change the ranking, so AUC and accuracy stay; only confidence moves.
    `prior` (centre, sd of log T): a log-normal prior on T, the maximum a posteriori instead.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)

    def nll(temperature: float) -> float:
        total = negative_log_likelihood(logits, labels, temperature) * len(labels)
        if prior is not None:
            total += (math.log(temperature) - math.log(prior[0])) ** 2 / (2 * prior[1] ** 2)
        return total

    low, high = np.log(0.05), np.log(20.0)
    golden = (np.sqrt(5) - 1) / 2
    for _ in range(80):
        a = high - golden * (high - low)
        b = low + golden * (high - low)
        if nll(float(np.exp(a))) < nll(float(np.exp(b))):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))


def bootstrap_interval(
    statistic: object,
    *arrays: np.ndarray,
    rounds: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(*resampled arrays)`."""
    if not callable(statistic):
        raise TypeError("statistic must be callable")
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    values = []
    for _ in range(rounds):
        pick = rng.integers(0, n, n)
        value = statistic(*(np.asarray(a)[pick] for a in arrays))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def widened_at_bounds(
    interval: tuple[float, float], right: np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """A proportion's bootstrap `interval` (`right`: its cases, each read right or not), where
    the proportion is 0 or 1, given the exact (Clopper-Pearson) bound on that side: every
    resample of 43 of 43 is 43 of 43, and "1.000 (1.000-1.000)" claimed a certainty 43 cases
    cannot give; (tail)^(1/n) is 0.918 there."""
    low, high = interval
    n, k = len(right), int(np.count_nonzero(right))
    tail = (1 - level) / 2
    if n and k == n:
        low = min(low, tail ** (1.0 / n)) if np.isfinite(low) else tail ** (1.0 / n)
    if n and k == 0:
        high = max(high, 1.0 - tail ** (1.0 / n)) if np.isfinite(high) else 1.0 - tail ** (1.0 / n)
    return low, high


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion (nan, nan for no cases)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
