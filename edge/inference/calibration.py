"""How a temperature and operating points are chosen on a set of labelled cases. Pure numpy.

One home for the rules, so that a release (tools/release.py, on the validation predictions) and
a site calibration (`edge models calibrate`, on the site's own cases) choose the same way:
temperature by negative log-likelihood (`metrics.fit_temperature`; a site's with a prior at the
shipped temperature, `site_temperature`, as a site has few cases), `balanced` by Youden's J (the
floored log-odds middle of the range of thresholds that reach it, `middle_threshold`, bagged: the
median of that over bootstrap resamples, `balanced_threshold`),
`screening` as the highest threshold reaching the target sensitivity (never above balanced),
each threshold floored to DECIMALS places so the stated figures are exactly the product's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.inference import metrics as m
from edge.inference.postprocess import softmax

SCREENING_SENSITIVITY = 0.95  # default; a recipe may ask for more ([release] screening_sensitivity)
DECIMALS = 4  # a manifest's or profile's temperature and thresholds; figures are computed at them
RULES = ("balanced", "screening")
"""The operating points whose rule is known; another point a manifest names keeps its threshold."""
BOOTSTRAP_ROUNDS = 1000
BAGGING_ROUNDS = 100  # resamples the balanced threshold is the median of (balanced_threshold)
CV_FOLDS, CV_REPEATS = 5, 4
CROSS_VALIDATED = " (cross-validated)"  # a `SiteFit.after` key: the point's name, then this


def shipped_threshold(value: float, decimals: int = DECIMALS) -> float:
    """`value` rounded DOWN to `decimals` places: the threshold written to a manifest or profile.

    Thresholds are probabilities of validation images; rounding to nearest could move one just
    above an image it was chosen to include and lose that case. Flooring only adds positives, so
    sensitivity never drops; the stated figures are then computed at the floored value.
    """
    step = 10.0**-decimals
    shipped = round(math.floor(value / step) * step, decimals)
    while shipped > value:  # guard against float error in the division
        shipped = round(shipped - step, decimals)
    while round(shipped + step, decimals) <= value:
        shipped = round(shipped + step, decimals)
    return shipped


def choose_thresholds(
    truth: np.ndarray, prob: np.ndarray, screening_target: float, balanced: float | None = None
) -> dict[str, float]:
    """`balanced` (Youden's J, bagged) and `screening` (sensitivity >= target), both floored.

    `truth`: whether each case is positive; `prob`: its calibrated P(positive) at the temperature
    that will be shipped (rounded), so that the probabilities are the product's. `balanced`: its
    threshold when already chosen on these cases (the resamples are not drawn again)."""
    if balanced is None:
        balanced = balanced_threshold(truth, prob)
    # Screening must never be less sensitive than the balanced point (flooring keeps the order).
    screening = min(balanced, m.threshold_for_sensitivity(truth, prob, screening_target))
    return {"balanced": shipped_threshold(balanced), "screening": shipped_threshold(screening)}


def balanced_threshold(
    truth: np.ndarray, prob: np.ndarray, *, rounds: int = BAGGING_ROUNDS, seed: int = 0
) -> float:
    """Youden's J, bagged: the median of the threshold `middle_threshold` puts in Youden's range,
    over the cases themselves and `rounds` bootstrap resamples of them (rounded down to an even
    number; each class resampled on its own, so both are always there); a shipped threshold,
    floored, as each of them is.

    Which range reaches the best J turns on the few cases nearest the boundary: on a site's 100
    cases, one case more or less moves it, and the threshold with it. The median sits in the
    middle of where the resamples put it, so it may lie outside the range these very cases give
    (their in-sample J can then be below the range's). On the validation split's simulated sites
    (`python -m tools.site_sim --split validation`, against `--bagging-rounds 0`: 38 + 62 cases,
    the same 200 draws, read on the site's other films) the median accuracy rose in 9 of 17 sites
    and fell in none, the 5% worst draws rose in 16 and fell in none (darker: 0.942 to 0.950;
    CLAHE 3: 0.918 to 0.920, draws reaching 0.92 from 91% to 95%).

    An odd count of thresholds makes the median one of them, so `middle_threshold`'s guarantees
    hold (on 4 decimals, never 0 under saturated probabilities); seeded, so the same cases always
    give the same threshold. With no case of a class there is nothing to resample: the
    plain middle."""
    truth = np.asarray(truth, bool)
    prob = np.asarray(prob, np.float64)
    plain = middle_threshold(*m.youden_range(truth, prob))
    positives, negatives = np.flatnonzero(truth), np.flatnonzero(~truth)
    if rounds < 1 or not len(positives) or not len(negatives):
        return plain
    rng = np.random.default_rng(seed)
    chosen = [plain]  # with the cases as they are: rounds + 1 thresholds, an odd count
    for _ in range(rounds - rounds % 2):
        drawn = np.concatenate([rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))])
        chosen.append(middle_threshold(*m.youden_range(truth[drawn], prob[drawn])))
    return float(np.median(chosen))


def _chosen(truth: np.ndarray, prob: np.ndarray, targets: dict[str, float]) -> dict[str, float]:
    """The threshold of each named point (`targets`: point -> screening target), the balanced
    one's resamples drawn once."""
    balanced = balanced_threshold(truth, prob) if targets else None
    return {name: choose_thresholds(truth, prob, target, balanced)[name] for name, target in targets.items()}


def middle_threshold(low: float, high: float, decimals: int = DECIMALS) -> float:
    """The log-odds middle of the range (low, high], floored to `decimals` places.

    Every threshold in the range reads the cases it was chosen on alike, but its top edge sits on
    a case: the next case just like it falls on the wrong side. On a site's 100 cases the middle
    read the site's other cases better than the edge (tools/site_sim.py on the validation split).
    Shipped thresholds have `decimals` places, so the choice is made among those, never on or
    below `low` (saturated probabilities would floor a middle of 1e-8 to 0 and flag every case);
    `high` floored, as before, when no such threshold lies in the range or nothing is below it."""
    step = 10.0**-decimals
    top = shipped_threshold(high, decimals)
    if low == -math.inf or not 0.0 < high <= 1.0:
        return top
    if high >= 1.0:  # saturated: 1.0 would sit on the case again; the top that stays below it
        top = round(1.0 - step, decimals)
    lowest = round(shipped_threshold(max(low, 0.0), decimals) + step, decimals)
    if lowest > top:
        return shipped_threshold(high, decimals)
    saturated = 1.0 - 1e-12
    middle = 1.0 / (1.0 + math.exp(-(_logit(min(high, saturated)) + _logit(low)) / 2)) if low > 0.0 else 0.0
    return min(max(shipped_threshold(middle, decimals), lowest), top)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def fitted_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The NLL temperature, rounded as shipped (every later figure is computed at this value)."""
    return round(m.fit_temperature(logits, labels), DECIMALS)


SITE_TEMPERATURE_SD = math.log(2.0)  # sd of log T around the shipped temperature: a factor of 2


def site_temperature(logits: np.ndarray, labels: np.ndarray, shipped: float) -> float:
    """A site's temperature: NLL on its cases with a log-normal prior at the shipped one (sd a
    factor of 2), rounded as shipped.

    A release fits on hundreds of validation images; a site on as few as 30 of each class, which
    a model that ranks well often separates perfectly. The plain NLL then has no minimum and T
    falls to its floor (0.05): every probability the site is shown becomes 0.000 or 1.000. On the
    validation split's simulated sites (100 cases: 38 normal, 62 pneumonia) the prior cut the
    other cases' NLL by more than two thirds where the plain fit overshot (from 0.196 to 0.056
    under third resolution; its worst 5% from 0.71 to 0.07). Thresholds are chosen at this
    temperature, so which cases a point flags does not depend on it."""
    return round(m.fit_temperature(logits, labels, prior=(shipped, SITE_TEMPERATURE_SD)), DECIMALS)


def screening_target(description: str, default: float = SCREENING_SENSITIVITY) -> float:
    """The target a released screening point was chosen for, read from its description
    ("sensitivity >= 0.99 on the validation predictions", written by tools/release.py)."""
    found = re.search(r"sensitivity >= ([0-9]*\.?[0-9]+)", description)
    return float(found.group(1)) if found else default


def targets_for(descriptions: dict[str, str], default: float = SCREENING_SENSITIVITY) -> dict[str, float]:
    """Each named point with a known rule (RULES) -> the sensitivity target its description
    states (`default` where it states none): what a refit chooses each point for."""
    return {name: screening_target(text, default) for name, text in descriptions.items() if name in RULES}


def rule_description(name: str, target: float, where: str) -> str:
    return {
        "balanced": f"Youden's J (median over {BAGGING_ROUNDS} resamples) on {where}",
        "screening": f"sensitivity >= {target} on {where}",
    }[name]


# ---------------------------------------------------------------------- a site's fit


@dataclass(frozen=True)
class Cases:
    """Labelled cases as the model scored them: raw logits and the index of the true label."""

    logits: np.ndarray
    truth: np.ndarray
    labels: list[str]
    positive: str

    @property
    def is_positive(self) -> np.ndarray:
        return np.asarray(self.truth == self.labels.index(self.positive))

    def prob(self, temperature: float) -> np.ndarray:
        return np.asarray(softmax(self.logits, temperature)[:, self.labels.index(self.positive)])

    def per_class(self) -> dict[str, int]:
        counts = np.bincount(self.truth, minlength=len(self.labels))
        return {label: int(counts[i]) for i, label in enumerate(self.labels)}


@dataclass
class PointFit:
    threshold: float
    description: str
    sensitivity: float
    specificity: float
    sensitivity_ci95: tuple[float, float]
    specificity_ci95: tuple[float, float]
    clip_threshold: float | None = None
    """A clip's (the mean of its frames'), carried to the site's temperature from the shipped
    one (`carried_threshold`: exact when a clip's frames agree); no clip was fitted here."""


@dataclass(frozen=True)
class PairedGain:
    """How much the site's balanced point, read out of fold, beats the shipped one on the same
    cases: the difference of Youden's J (sensitivity + specificity - 1), with its 95% interval."""

    youden_j: float
    ci95: tuple[float, float]


@dataclass
class SiteFit:
    temperature: float
    points: dict[str, PointFit]
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    gains: dict[str, PairedGain] = field(default_factory=dict)
    """`balanced` read out of fold against the shipped point, paired (`paired_gain`): shown when
    calibrating, not kept in the profile (older edges' strict profile schema would refuse it)."""


def figures(cases: Cases, temperature: float, thresholds: dict[str, float]) -> dict[str, Any]:
    """AUC and, per operating point, accuracy, sensitivity and specificity on these cases."""
    truth, prob = cases.is_positive, cases.prob(temperature)
    out: dict[str, Any] = {"auc": _round(m.roc_auc(truth, prob))}
    for name, threshold in thresholds.items():
        counts = m.at_threshold(truth, prob, threshold)
        out[name] = {
            "accuracy": _round(counts.accuracy),
            "sensitivity": _round(counts.sensitivity),
            "specificity": _round(counts.specificity),
        }
    return out


def fit_site(
    cases: Cases,
    shipped_temperature: float,
    shipped_thresholds: dict[str, float],
    targets: dict[str, float],
    where: str,
    *,
    seed: int = 0,
    rounds: int = BOOTSTRAP_ROUNDS,
    cross_validate: bool = True,
    shipped_clip_thresholds: dict[str, float] | None = None,
) -> SiteFit:
    """Refit the temperature and each named point (`targets`: point -> screening target, only
    points in RULES) on the site's cases, with percentile bootstrap intervals of the
    sensitivity and specificity at each chosen threshold, and the figures before (the shipped
    calibration) and after, both on these same cases.

    Cross-validated (`cross_validate`), the screening point (`KEEP_WITHOUT_GAIN`) is refitted
    only where the site's own rule, read on cases it was not chosen on, does better than the
    shipped point on the same cases at what the point is for (`site_point_better`: reaching its
    sensitivity target first); elsewhere the shipped point stays, carried to the site's
    temperature (`carried_threshold`). A screening threshold chosen on 60 positives moves with
    each one of them: on the validation split's 17 simulated sites (`tools/site_sim.py`'s, 38 +
    62 cases, 60 draws each) the 5% worst draws' sensitivity on the site's other films rose in
    all 17 with the rule (as trained 0.952 to 0.975), the mean in 14 (the same in 2);
    specificity fell in 8 (brighter + softer 0.922 to 0.765) and rose in 9. The balanced point is
    always the site's: the same rule there lowered the draws reaching accuracy 0.92 under CLAHE 3,
    where the shipped point errs, from 90% to 78%.

    Every shipped point not refitted, and every clip threshold (`shipped_clip_thresholds`), is
    carried to the site's temperature: the profile serves them all at it, and a threshold chosen
    at another temperature flagged other cases (a lung model's clip thresholds, chosen at T 2.0,
    were read against frames at T 0.9)."""
    temperature = site_temperature(cases.logits, cases.truth, shipped_temperature)
    truth, prob = cases.is_positive, cases.prob(temperature)
    chosen = _chosen(truth, prob, targets)
    descriptions = {name: rule_description(name, targets[name], where) for name in chosen}
    before = figures(cases, shipped_temperature, shipped_thresholds)
    after: dict[str, Any] = {}
    gains: dict[str, PairedGain] = {}
    if cross_validate:
        flags = out_of_fold(cases, shipped_temperature, targets, seed=seed)
        cv = readings(flags, truth)
        gains = balanced_gain(cases, shipped_temperature, shipped_thresholds, flags, seed=seed, rounds=rounds)
        for name in KEEP_WITHOUT_GAIN:
            if name not in chosen or name not in shipped_thresholds:
                continue
            reading = cv.get(name)
            if reading is not None:
                better, _ = site_point_better(name, targets[name], before[name], reading, gains.get(name))
                why = "read no better on cases it was not chosen on"
            else:  # too few cases of a class to read it out of fold: nothing shows it better
                better, why = False, "could not be read on cases it was not chosen on (too few)"
            if not better:
                shipped = shipped_thresholds[name]
                chosen[name] = carried_threshold(cases, shipped, shipped_temperature, temperature)
                descriptions[name] = f"{KEPT}: {descriptions[name]} {why}"
        after.update({name + CROSS_VALIDATED: reading for name, reading in cv.items()})
        # Never less sensitive than balanced: a kept point above the site's balanced one is it.
        if "balanced" in targets and chosen.get("screening", -1.0) > chosen["balanced"]:
            chosen["screening"] = chosen["balanced"]
            above = "the shipped screening point lay above it"
            descriptions["screening"] = f"{descriptions['balanced']} ({above})"
    for name, shipped in shipped_thresholds.items():
        if name not in chosen:  # not refitted: what it flagged as shipped, at the site's temperature
            chosen[name] = carried_threshold(cases, shipped, shipped_temperature, temperature)
            descriptions[name] = f"{KEPT} (not refitted), carried to the site's temperature"
    clips = {
        name: carried_threshold(cases, clip, shipped_temperature, temperature)
        for name, clip in (shipped_clip_thresholds or {}).items()
    }
    points = {}
    for name, threshold in chosen.items():
        counts = m.at_threshold(truth, prob, threshold)
        predicted = prob >= threshold
        points[name] = PointFit(
            threshold=threshold,
            description=descriptions[name],
            sensitivity=_round(counts.sensitivity),
            specificity=_round(counts.specificity),
            sensitivity_ci95=_interval(_sensitivity, truth, predicted, seed, rounds, predicted[truth]),
            specificity_ci95=_interval(_specificity, truth, predicted, seed, rounds, ~predicted[~truth]),
            clip_threshold=clips.get(name),
        )
    after = {**figures(cases, temperature, chosen), **after}
    return SiteFit(temperature, points, before, after, gains)


KEEP_WITHOUT_GAIN = ("screening",)
"""The points `fit_site` keeps as shipped where the site's own rule reads no better out of fold."""
KEPT = "the shipped point, kept"
"""How a kept point's description begins (`fit_site`): the site's own rule did no better."""


def site_point_better(
    name: str,
    target: float,
    shipped: dict[str, float],
    site: dict[str, float],
    gain: PairedGain | None = None,
) -> tuple[bool, str]:
    """Whether the site's point (`site`: its sensitivity and specificity read out of fold) does
    better than the shipped one (`shipped`, on the same cases) at what the point is for, and by
    which measure. `screening`: reaching its sensitivity `target` first (when only one does),
    the nearer when both fall short, else specificity. `balanced`: Youden's J, paired when its
    `gain` is known (`paired_gain`: the sign of its mean decides)."""
    if name == "screening":
        reached, was = site["sensitivity"] >= target, shipped["sensitivity"] >= target
        if reached != was:
            return reached, f"only one reaches sensitivity {target:.3f}"
        if not reached and site["sensitivity"] != shipped["sensitivity"]:
            nearer = site["sensitivity"] > shipped["sensitivity"]
            return nearer, f"both under sensitivity {target:.3f}: the nearer"
        both = "both reach" if reached else "the same sensitivity, under"
        return site["specificity"] > shipped["specificity"], f"{both} {target:.3f}: by specificity"
    if gain is not None:
        return gain.youden_j > 0, ""
    return site["sensitivity"] + site["specificity"] > shipped["sensitivity"] + shipped["specificity"], ""


def carried_threshold(
    cases: Cases, threshold: float, shipped_temperature: float, temperature: float
) -> float:
    """The shipped `threshold` under the site's `temperature`, flagging what it flagged.

    With two labels P(positive) is a logistic function of the logit margin over T, so the
    threshold moves exactly (to DECIMALS places) for every case, the site's or not. With more,
    P(positive) at another temperature is no function of P at the shipped one: the threshold
    that flags the site's cases most as the shipped point did is taken (the log-odds middle of
    the range that does)."""
    if not 0.0 < threshold < 1.0 or temperature == shipped_temperature:
        return threshold
    if len(cases.labels) == 2:
        margin = shipped_temperature * _logit(threshold)
        return shipped_threshold(1.0 / (1.0 + math.exp(-margin / temperature)))
    flagged = cases.prob(shipped_temperature) >= threshold
    prob = cases.prob(temperature)
    edges = np.unique(prob)  # a threshold in (edges[i - 1], edges[i]] flags prob >= edges[i]
    agree = [int(((prob >= edge) == flagged).sum()) for edge in edges]
    best = int(np.argmax(agree))
    if int(((prob > edges[-1]) == flagged).sum()) > agree[best]:  # flagging none agrees best
        return shipped_threshold(float(edges[-1]) + 10.0**-DECIMALS)
    low = float(edges[best - 1]) if best > 0 else -math.inf
    return middle_threshold(low, float(edges[best]))


def readings(flags: dict[str, np.ndarray], truth: np.ndarray) -> dict[str, dict[str, float]]:
    """Accuracy, sensitivity and specificity of each point's out-of-fold readings (`out_of_fold`),
    averaged over the shuffles."""
    out = {}
    for name, flagged in flags.items():
        rows = [((f == truth).mean(), _sensitivity(truth, f), _specificity(truth, f)) for f in flagged]
        accuracy, sensitivity, specificity = np.mean(rows, axis=0)
        out[name] = {
            "accuracy": _round(accuracy),
            "sensitivity": _round(sensitivity),
            "specificity": _round(specificity),
        }
    return out


def out_of_fold(
    cases: Cases,
    shipped_temperature: float,
    targets: dict[str, float],
    *,
    folds: int = CV_FOLDS,
    repeats: int = CV_REPEATS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Each refitted point read on cases it was not fitted on: stratified `folds`-fold, the
    temperature and thresholds fitted on the other folds by the rules above; per point, whether
    each case was flagged, (repeats, cases) booleans, one row per shuffle (`readings` gives
    their figures, `paired_gain` their gain over the shipped point). {} when a class has fewer
    cases than folds.

    The `after` figures of `fit_site` are read on the cases the point was chosen on, so they
    flatter it however little the site differs: this is what the site's point is worth on its
    next cases, to set beside the shipped point's (fitted on none of them)."""
    truth, positive = cases.is_positive, cases.labels.index(cases.positive)
    if min(cases.per_class().values()) < folds:
        return {}
    rng = np.random.default_rng(seed)
    flags = {name: np.zeros((repeats, len(truth)), bool) for name in targets}
    for repeat in range(repeats):
        fold_of = np.empty(len(truth), np.int64)
        for label in np.unique(cases.truth):  # stratified: every fold holds every class
            members = rng.permutation(np.flatnonzero(cases.truth == label))
            fold_of[members] = np.arange(len(members)) % folds
        for fold in range(folds):
            fit, read = fold_of != fold, fold_of == fold
            temperature = site_temperature(cases.logits[fit], cases.truth[fit], shipped_temperature)
            prob = softmax(cases.logits, temperature)[:, positive]
            for name, threshold in _chosen(truth[fit], prob[fit], targets).items():
                flags[name][repeat, read] = prob[read] >= threshold
    return flags


def balanced_gain(
    cases: Cases,
    shipped_temperature: float,
    shipped_thresholds: dict[str, float],
    flags: dict[str, np.ndarray],
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> dict[str, PairedGain]:
    """{"balanced": its `paired_gain`} when the point was refitted (`flags`, from `out_of_fold`)
    and shipped; else {}. Screening is judged by its sensitivity target, not by J."""
    if "balanced" not in flags or "balanced" not in shipped_thresholds:
        return {}
    gain = paired_gain(
        cases,
        shipped_temperature,
        shipped_thresholds["balanced"],
        flags["balanced"],
        rounds=rounds,
        seed=seed,
    )
    return {"balanced": gain}


def paired_gain(
    cases: Cases,
    shipped_temperature: float,
    shipped_threshold: float,
    flagged: np.ndarray,
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> PairedGain:
    """Youden's J of the out-of-fold readings (`flagged`, from `out_of_fold`) minus the shipped
    point's, on the same cases, with a paired percentile bootstrap interval: each case is read
    both ways, so the cases are resampled together (each class on its own), and what they share
    cancels. A difference of J is the mean over positives plus the mean over negatives of how
    much more often each case is read right. The interval holds the cases' sampling, not the
    refitting's own variation (averaged over the shuffles)."""
    truth = cases.is_positive
    shipped_right = ((cases.prob(shipped_temperature) >= shipped_threshold) == truth).astype(np.float64)
    site_right = (np.asarray(flagged, bool) == truth).mean(axis=0)
    better = site_right - shipped_right
    positives, negatives = better[truth], better[~truth]
    rng = np.random.default_rng(seed)
    resampled = positives[rng.integers(0, len(positives), (rounds, len(positives)))].mean(axis=1) + negatives[
        rng.integers(0, len(negatives), (rounds, len(negatives)))
    ].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return PairedGain(_round(positives.mean() + negatives.mean()), (_round(low), _round(high)))


def _sensitivity(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(predicted[truth].mean()) if truth.any() else float("nan")


def _specificity(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float((~predicted[~truth]).mean()) if (~truth).any() else float("nan")


def _interval(
    statistic: Any, truth: np.ndarray, predicted: np.ndarray, seed: int, rounds: int, right: np.ndarray
) -> tuple[float, float]:
    """The percentile bootstrap interval of a proportion (`right`: its cases, read right or
    not), exact on the side where it is 0 or 1 (`metrics.widened_at_bounds`)."""
    found = m.bootstrap_interval(statistic, truth, predicted, rounds=rounds, seed=seed)
    low, high = m.widened_at_bounds(found, right)
    return (_round(low), _round(high))


def _round(value: float) -> float:
    return round(float(value), 4)
