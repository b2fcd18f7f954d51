"""What a release measures and chooses on: the evaluation sets (clean, and under the acquisition
shifts of tools/shift_eval.py), their figures, and the operating points chosen on one of them.

Every choice (temperature, thresholds) is made on one set, by the rules a site calibration uses
too (edge/inference/calibration.py); the others are only measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference import metrics as m
from edge.inference.calibration import (
    DECIMALS,
    RULES,
    SCREENING_SENSITIVITY,
    choose_thresholds,
    rule_description,
)
from edge.inference.postprocess import softmax
from tools.recipe import (
    Recipe,
    Sample,
    group_split,
    model_inputs,
    read_oof,
    read_samples,
    read_split,
    run_onnx,
)
from tools.shift_eval import held_out_models, shifted_predictions


@dataclass
class Predictions:
    """One evaluation set: which images, the FP32 logits for them, their true labels."""

    kind: str
    samples: list[Sample]
    logits: np.ndarray
    truth: np.ndarray


def evaluation_sets(
    recipe: Recipe, fp32: Path | None = None, names: tuple[str, ...] = ("validation", "holdout")
) -> dict[str, Predictions]:
    """`validation` (what calibration and thresholds are fitted on) and, if any, `holdout`.

    `fp32`: the weights to score (a shipped model's file); default the run's own export.
    `names`: only these of the two are scored (cross-validated recipes: validation only)."""
    run = recipe.run_dir()
    if recipe.data.get("cv_folds"):
        if fp32 is not None:
            raise SystemExit(cv_needs_folds(recipe))
        by_path = read_oof(run / "oof.npz")
        samples = read_samples(recipe)
        logits = np.stack([by_path[s.path] for s in samples])
        kind = f"{recipe.data['cv_folds']}-fold cross-validation, out-of-fold predictions"
        return {"validation": Predictions(kind, samples, logits, np.array([s.label for s in samples]))}
    out = {}
    # The run's split.csv, or (a shipped model, no run) the recipe's seeded split recomputed.
    every = read_samples(recipe)
    split_of = read_split(recipe) if fp32 is None else group_split(every, recipe)
    for split, name in (("val", "validation"), ("holdout", "holdout")):
        if name not in names:
            continue
        samples = [s for s in every if split_of.get(s.path) == split]
        logits = run_onnx(fp32 or run / f"{recipe.name}-fp32.onnx", model_inputs(recipe, samples))
        out[name] = Predictions(f"{name} split", samples, logits, np.array([s.label for s in samples]))
    return out


def report(
    predictions: Predictions, recipe: Recipe, temperature: float, thresholds: dict[str, float], seed: int
) -> dict[str, Any]:
    positive = recipe.labels.index(recipe.positive)
    cal = softmax(predictions.logits, temperature)
    raw = softmax(predictions.logits)
    truth = predictions.truth
    is_positive, prob = truth == positive, cal[:, positive]
    low, high = m.bootstrap_interval(m.roc_auc, is_positive, prob, rounds=1000, seed=seed)
    out: dict[str, Any] = {
        "kind": predictions.kind,
        "images": len(truth),
        "positives": int(is_positive.sum()),
        "auc": round(m.roc_auc(is_positive, prob), 4),
        "auc_ci95": [round(low, 4), round(high, 4)],
    }
    for name, threshold in thresholds.items():
        counts = m.at_threshold(is_positive, prob, threshold)
        out[f"{name}_sensitivity"] = round(counts.sensitivity, 4)
        out[f"{name}_specificity"] = round(counts.specificity, 4)
        out[f"{name}_accuracy"] = round(counts.accuracy, 4)
    if len(recipe.labels) > 2:
        out["accuracy_top1"] = round(float((cal.argmax(1) == truth).mean()), 4)
    out["ece_uncalibrated"] = round(m.expected_calibration_error(raw.argmax(1) == truth, raw.max(1)), 4)
    out["ece_calibrated"] = round(m.expected_calibration_error(cal.argmax(1) == truth, cal.max(1)), 4)
    return out


def grouped(predictions: Predictions, recipe: Recipe, temperature: float, column: str) -> Predictions:
    """One row per group (e.g. per video): the mean of its images' calibrated probabilities,
    expressed back as log-probabilities so that `report` can treat it like any other set."""
    probs = softmax(predictions.logits, temperature)
    groups: dict[str, list[int]] = {}
    for index, sample in enumerate(predictions.samples):
        groups.setdefault(sample.row.get(column) or sample.group, []).append(index)
    names = sorted(groups)
    mean = np.stack([probs[groups[g]].mean(axis=0) for g in names])
    truth = np.array([int(np.bincount(predictions.truth[groups[g]]).argmax()) for g in names])
    members = [predictions.samples[groups[g][0]] for g in names]
    # log(p) * temperature reproduces p exactly through softmax(. / temperature).
    return Predictions(
        f"per {column} (mean of its frames)", members, np.log(mean + 1e-12) * temperature, truth
    )


def cv_needs_folds(recipe: Recipe) -> str:
    return (
        f"{recipe.name} is cross-validated: its thresholds are chosen on out-of-fold predictions, "
        "which need the fold models of its training run (tools.crossval), not the shipped file"
    )


def shifted_sets(
    recipe: Recipe, sets: dict[str, Predictions], seed: int, fp32: Path | None = None
) -> dict[str, Predictions]:
    """Each evaluation set again under every acquisition shift of tools/shift_eval.py, each image
    scored by a model that never trained on it (`fp32` where given, as `evaluation_sets`):
    `<name>_shifted`."""
    if fp32 is not None and recipe.data.get("cv_folds"):
        raise SystemExit(cv_needs_folds(recipe))
    out = {}
    for name, predictions in sets.items():
        model_of = (
            {s.path: fp32 for s in predictions.samples}
            if fp32 is not None
            else held_out_models(recipe, predictions.samples)
        )
        samples, logits = shifted_predictions(recipe, predictions.samples, model_of, seed)
        copies = len(samples) // len(predictions.samples)
        kind = f"{predictions.kind} under {copies} acquisition shifts"
        out[f"{name}_shifted"] = Predictions(kind, samples, logits, np.tile(predictions.truth, copies))
    return out


def operating_points(
    validation: Predictions, recipe: Recipe, temperature: float
) -> tuple[dict[str, float], float]:
    """The shipped thresholds (already floored to DECIMALS) and the screening target.

    Pass the shipped (rounded) temperature, so that the probabilities are the product's."""
    positive = recipe.labels.index(recipe.positive)
    truth = validation.truth == positive
    prob = softmax(validation.logits, temperature)[:, positive]
    target = float(recipe.raw.get("release", {}).get("screening_sensitivity", SCREENING_SENSITIVITY))
    return choose_thresholds(truth, prob, target), target


def operating_point_entries(
    thresholds: dict[str, float],
    validation_metrics: dict[str, Any],
    screening_target: float,
    clips: tuple[dict[str, float], dict[str, Any]] | None = None,
    where: str = "the validation predictions",
) -> dict[str, dict[str, Any]]:
    """The manifest's [operating_points]: each threshold exactly as shipped, with the sensitivity
    and specificity that `report` measured at that very threshold on the set it was chosen on
    (`where`, its kind). `clips`: the per-video thresholds and the per-video metrics measured at
    them, for models that score clips."""
    descriptions = {name: rule_description(name, screening_target, where) for name in RULES}
    entries: dict[str, dict[str, Any]] = {}
    for name in ("balanced", "screening"):
        entry = {
            "threshold": thresholds[name],
            "description": descriptions[name],
            "sensitivity": validation_metrics[f"{name}_sensitivity"],
            "specificity": validation_metrics[f"{name}_specificity"],
        }
        if clips is not None:
            clip_thresholds, clip_metrics = clips
            entry["clip_threshold"] = clip_thresholds[name]
            entry["clip_sensitivity"] = clip_metrics[f"{name}_sensitivity"]
            entry["clip_specificity"] = clip_metrics[f"{name}_specificity"]
        entries[name] = entry
    return entries


@dataclass
class Choice:
    """What a release chose (temperature, thresholds, per clip too) on the set `chosen_on`, and
    every set's figures at those choices (`metrics`, keyed as the manifest's [metrics])."""

    chosen_on: str
    temperature: float
    thresholds: dict[str, float]
    screening_target: float
    clip_thresholds: dict[str, float] | None
    metrics: dict[str, Any]


def choose(recipe: Recipe, sets: dict[str, Predictions], seed: int) -> Choice:
    """The release's rules, on `sets` from `evaluation_sets` plus `shifted_sets`."""
    settings = recipe.raw.get("release", {})
    # Chosen where a new site's images look different (issue 15): the clean validation split
    # flatters, and its threshold did not transfer. `[release] choose_on = "clean"` for the old rule.
    chosen_on = "validation" if settings.get("choose_on") == "clean" else "validation_shifted"
    fitted = sets[chosen_on]
    # Rounded once, here: the probabilities behind every threshold and figure are then exactly
    # those the product computes from the manifest.
    temperature = round(m.fit_temperature(fitted.logits, fitted.truth), DECIMALS)
    thresholds, screening_target = operating_points(fitted, recipe, temperature)
    metrics = {name: report(p, recipe, temperature, thresholds, seed) for name, p in sets.items()}
    clip_thresholds: dict[str, float] | None = None
    if settings.get("aggregate_by"):
        column = settings["aggregate_by"]
        # A clip's probability is the mean of its frames': its thresholds are chosen by the same
        # rules on the per-group (per-video) means, and its figures are stated at them.
        per_clip = grouped(fitted, recipe, temperature, column)
        clip_thresholds, _ = operating_points(per_clip, recipe, temperature)
        for name, p in list(sets.items()):
            per_group = grouped(p, recipe, temperature, column)
            metrics[f"{name}_per_{column}"] = report(per_group, recipe, temperature, clip_thresholds, seed)
    return Choice(chosen_on, temperature, thresholds, screening_target, clip_thresholds, metrics)


def measure_variants(
    recipe: Recipe, sets: dict[str, Predictions], files: dict[str, Path], choice: Choice, seed: int
) -> None:
    """Each INT8 variant's own figures on the holdout split, at the FP32's choices
    (`holdout_<variant>` in `choice.metrics`). `files`: variant -> its ONNX file."""
    if "holdout" not in sets:
        return
    holdout = sets["holdout"]
    inputs = model_inputs(recipe, holdout.samples)
    for variant, path in files.items():
        logits = run_onnx(path, inputs)
        choice.metrics[f"holdout_{variant}"] = report(
            Predictions(f"holdout split, {variant}", holdout.samples, logits, holdout.truth),
            recipe,
            choice.temperature,
            choice.thresholds,
            seed,
        )


def manifest_operating_points(
    recipe: Recipe, sets: dict[str, Predictions], choice: Choice
) -> dict[str, dict[str, Any]]:
    """The manifest's [operating_points] for `choice` (`operating_point_entries`)."""
    column = recipe.raw.get("release", {}).get("aggregate_by")
    clips = None
    if choice.clip_thresholds:
        clips = (choice.clip_thresholds, choice.metrics[f"{choice.chosen_on}_per_{column}"])
    return operating_point_entries(
        choice.thresholds,
        choice.metrics[choice.chosen_on],
        choice.screening_target,
        clips=clips,
        where=f"the {sets[choice.chosen_on].kind}",
    )
