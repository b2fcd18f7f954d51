from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge.inference import metrics as m
from edge.inference.parity import compare
from edge.inference.postprocess import decide, softmax

RNG = np.random.default_rng(7)


def brute_force_auc(truth: np.ndarray, score: np.ndarray) -> float:
    pos, neg = score[truth], score[~truth]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    return float(np.mean(pairs))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.random(60) < 0.4
    score = np.round(rng.random(60) + truth * 0.3, 1)  # rounding creates ties
    assert m.roc_auc(truth, score) == pytest.approx(brute_force_auc(truth, score))


def test_auc_edges() -> None:
    assert m.roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert m.roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert np.isnan(m.roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_roc_curve_area_equals_auc() -> None:
    truth = RNG.random(200) < 0.5
    score = RNG.random(200) + truth * 0.5
    fpr, tpr, _ = m.roc_curve(truth, score)
    assert fpr[0] == 0
    assert tpr[-1] == 1
    assert fpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(m.roc_auc(truth, score))


def test_thresholds_meet_their_targets() -> None:
    truth = RNG.random(500) < 0.3
    score = np.clip(RNG.normal(0.3 + 0.4 * truth, 0.15), 0, 1)
    t = m.threshold_for_sensitivity(truth, score, 0.95)
    assert m.at_threshold(truth, score, t).sensitivity >= 0.95
    j = m.youden_threshold(truth, score)
    best = max(
        m.at_threshold(truth, score, x).sensitivity + m.at_threshold(truth, score, x).specificity
        for x in np.unique(score)
    )
    counts = m.at_threshold(truth, score, j)
    assert counts.sensitivity + counts.specificity == pytest.approx(best)


def test_youden_range_and_the_threshold_shipped_in_its_middle() -> None:
    """Separable cases: every threshold in (0.2, 0.9] is perfect; the edge 0.9 sits on the least
    suspicious positive, the shipped choice is the log-odds middle 0.6, on 4 decimals, never on
    or below the range's bottom (saturated probabilities), the edge when nothing is below."""
    from edge.inference.calibration import middle_threshold

    truth = np.array([0, 0, 0, 1, 1, 1], bool)
    assert m.youden_range(truth, np.array([0.05, 0.1, 0.2, 0.9, 0.95, 0.99])) == (0.2, 0.9)
    assert m.youden_threshold(truth, np.array([0.05, 0.1, 0.2, 0.9, 0.95, 0.99])) == 0.9
    assert middle_threshold(0.2, 0.9) == 0.6
    # 0.6 flags a positive and a negative more than 0.9 does: the same J, one range down to 0.2.
    tied = np.array([1, 1, 0, 0], bool), np.array([0.9, 0.6, 0.6, 0.2])
    assert m.youden_range(*tied) == (0.2, 0.9)
    assert m.youden_range(np.array([1, 1], bool), np.array([0.2, 0.4])) == (-np.inf, 0.2)
    assert middle_threshold(-np.inf, 0.2) == 0.2
    assert middle_threshold(2.3e-18, 0.9918) == 0.0001  # not floored to 0: that flags everything
    assert middle_threshold(0.0, 0.9918) == 0.0001
    assert middle_threshold(0.5, 1.0) == 0.9999  # saturated positives: not on the case at 1.0
    assert middle_threshold(0.99995, 1.0) == 1.0  # nothing on 4 decimals between: as before
    assert middle_threshold(0.30001, 0.30009) == 0.3  # no 4-decimal threshold inside: the edge floored


def test_the_balanced_threshold_bagged_lands_nearer_the_populations() -> None:
    """Sites of 38 + 62 cases drawn from one population whose best threshold is P = 0.5 (two
    equal-spread classes, their means symmetric): the median over resamples lands nearer it than
    Youden's range on the cases alone does, is one of the shipped thresholds, and is the same
    every time for the same cases. With one class only there is nothing to resample."""
    from edge.inference.calibration import balanced_threshold, middle_threshold

    rng = np.random.default_rng(11)
    truth = np.r_[np.zeros(38, bool), np.ones(62, bool)]
    plain, bagged = [], []
    for _ in range(40):
        prob = 1 / (1 + np.exp(-np.r_[rng.normal(-1.5, 1, 38), rng.normal(1.5, 1, 62)]))
        plain.append(middle_threshold(*m.youden_range(truth, prob)))
        bagged.append(balanced_threshold(truth, prob))
        assert balanced_threshold(truth, prob) == bagged[-1]
        assert round(bagged[-1], 4) == bagged[-1]

    def squared_logit_error(thresholds: list[float]) -> float:
        return float(np.mean(np.log(np.divide(thresholds, np.subtract(1, thresholds))) ** 2))

    assert squared_logit_error(bagged) < 0.9 * squared_logit_error(plain)
    only = np.ones(6, bool), np.array([0.2, 0.3, 0.5, 0.6, 0.8, 0.9])
    assert balanced_threshold(*only) == middle_threshold(*m.youden_range(*only))


def test_youden_range_compares_j_exactly() -> None:
    """Equal J must compare equal: in floats tp/P - fp/N can differ by an ulp for the same J (30
    + 30 cases, scores tied in positive/negative pairs), which cut the range short."""
    from fractions import Fraction

    rng = np.random.default_rng(7)
    for _ in range(200):
        truth = np.r_[np.ones(30, bool), np.zeros(30, bool)]
        score = np.round(rng.random(60), 1)  # coarse scores: many ties, several equal-J steps
        scores = sorted(set(score.tolist()), reverse=True)
        exact = [
            Fraction(int((score[truth] >= t).sum()), 30) - Fraction(int((score[~truth] >= t).sum()), 30)
            for t in scores
        ]
        best = max(exact)
        top = exact.index(best)
        bottom = top
        while bottom + 1 < len(exact) and exact[bottom + 1] == best:
            bottom += 1
        low = scores[bottom + 1] if bottom + 1 < len(scores) else -np.inf
        assert m.youden_range(truth, score) == (low, scores[top])


def test_ece_of_a_perfectly_calibrated_and_an_overconfident_model() -> None:
    conf = RNG.random(20000)
    hits = RNG.random(20000) < conf
    assert m.expected_calibration_error(hits, conf) < 0.02
    assert m.expected_calibration_error(hits, np.full(20000, 0.99)) > 0.4


def test_temperature_recovers_a_known_scale() -> None:
    labels = RNG.integers(0, 2, 4000)
    true_logits = np.stack([np.zeros(4000), RNG.normal(2.0 * (labels * 2 - 1), 1.5)], axis=1)
    sampled = (RNG.random(4000) < softmax(true_logits)[:, 1]).astype(int)
    temperature = m.fit_temperature(true_logits * 3.0, sampled)  # overconfident by 3x
    assert temperature == pytest.approx(3.0, rel=0.15)


def test_bootstrap_interval_contains_the_estimate() -> None:
    truth = RNG.random(300) < 0.5
    score = RNG.random(300) + truth * 0.4
    low, high = m.bootstrap_interval(m.roc_auc, truth, score, rounds=200)
    assert low < m.roc_auc(truth, score) < high


def test_decide_binary_and_multiclass() -> None:
    labels = ["normal", "pneumonia"]
    found = decide(np.array([0.0, 1.0]), labels, "pneumonia", 1.0, 0.5, "balanced")
    assert found.finding == "pneumonia"
    assert found.probability == pytest.approx(1 / (1 + np.exp(-1)))
    below = decide(np.array([0.0, 1.0]), labels, "pneumonia", 1.0, 0.9, "screening")
    assert below.finding == "normal"
    assert below.operating_point == "screening"
    # Temperature flattens the probability without changing the ranking.
    assert decide(np.array([0.0, 1.0]), labels, "pneumonia", 2.0, 0.5, "b").probability < found.probability
    three = decide(np.array([2.0, 1.0, 0.5]), ["normal", "benign", "malignant"], "malignant", 1.0, 0.3, "b")
    assert three.finding == "normal"
    assert sum(three.probabilities.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="finite"):
        decide(np.array([np.nan, 1.0]), labels, "pneumonia", 1.0, 0.5, "b")


def test_parity_report() -> None:
    truth = RNG.integers(0, 2, 400)
    reference = np.stack([np.zeros(400), RNG.normal(truth * 2 - 1, 1.0)], axis=1)
    same = compare(reference, reference + 1e-4, truth, 1)
    assert same.passed
    assert same.agreement == 1.0
    assert abs(same.auc_delta) < 1e-3
    noisy = compare(reference, reference + RNG.normal(0, 1.0, reference.shape), truth, 1)
    assert not noisy.passed
    with pytest.raises(ValueError, match="shapes"):
        compare(reference, reference[:10], truth, 1)
