"""What a release measures and chooses on: the evaluation sets (clean, and under the acquisition
shifts of tools/shift_eval.py), their figures, and the operating points chosen on one of them.

Every choice (temperature, thresholds) is made on one set, by the rules a site calibration uses
too (edge/inference/calibration.py); the others are only measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.inference import metrics as m
from edge.inference.calibration import RULES, SCREENING_SENSITIVITY, choose_thresholds, rule_description
from edge.inference.postprocess import softmax
from tools.recipe import Recipe, Sample, model_inputs, read_oof, read_samples, run_onnx, split_samples
from tools.shift_eval import held_out_models, shifted_predictions


@dataclass
class Predictions:
    """One evaluation set: which images, the FP32 logits for them, their true labels."""

    kind: str
    samples: list[Sample]
    logits: np.ndarray
    truth: np.ndarray


def evaluation_sets(recipe: Recipe) -> dict[str, Predictions]:
    """`validation` (what calibration and thresholds are fitted on) and, if any, `holdout`."""
    run = recipe.run_dir()
    if recipe.data.get("cv_folds"):
        by_path = read_oof(run / "oof.npz")
        samples = read_samples(recipe)
        logits = np.stack([by_path[s.path] for s in samples])
        kind = f"{recipe.data['cv_folds']}-fold cross-validation, out-of-fold predictions"
        return {"validation": Predictions(kind, samples, logits, np.array([s.label for s in samples]))}
    out = {}
    for split, name in (("val", "validation"), ("holdout", "holdout")):
        samples = split_samples(recipe, split)
        logits = run_onnx(run / f"{recipe.name}-fp32.onnx", model_inputs(recipe, samples))
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


def shifted_sets(recipe: Recipe, sets: dict[str, Predictions], seed: int) -> dict[str, Predictions]:
    """Each evaluation set again under every acquisition shift of tools/shift_eval.py, each image
    scored by a model that never trained on it: `<name>_shifted`."""
    out = {}
    for name, predictions in sets.items():
        model_of = held_out_models(recipe, predictions.samples)
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
