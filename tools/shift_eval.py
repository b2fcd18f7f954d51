"""Shift-aware validation: a model's figures on held-out images made to look as another site's.

    python -m tools.shift_eval --config tools/configs/cxr-pneumonia.toml            # the shipped model
    python -m tools.shift_eval --config ... --onnx runs/cxr-pneumonia/cxr-pneumonia-fp32.onnx  # a candidate

An internal validation split comes from the training distribution and flatters a model: the
shipped chest X-ray model ranks the external test films nearly as well as its own (AUC 0.971
against 0.998), but its balanced threshold, chosen on its own split, flags four in ten healthy
children there. This tool applies the acquisition shifts a new site brings (exposure, contrast
processing, resolution, blur, noise, re-compression, positioning: the primitives of
`tools/augment.py` at fixed strengths, one at a time) to images the model never saw, and reports
for each shift and for all of them pooled:

- AUC with a bootstrap interval (does the model still rank?);
- sensitivity, specificity and accuracy at the balanced threshold chosen on the clean validation
  split (does the threshold transfer?);
- the threshold Youden's J would choose on the pooled shifted validation split, and how the
  held-out figures look there (what a release should ship if it chose on shift).

The shipped model is read from models/<name> (its temperature and balanced threshold); a
candidate ONNX is calibrated here as the shipped models were (temperature by NLL and Youden's J
on the clean validation split), so the two are compared by the same rule. (A release now
chooses under shift: tools/release.py.) Images are
the recipe's patient-level `holdout` split (never used for any choice); thresholds come from
`val`. Cross-validated recipes have no split the shipped model never saw: the tool says so and
stops unless `--seen` is given (then every figure is labelled optimistic).

Synthetic shifts are a floor, not a stand-in for a real external set: a model can fail at a
real site in ways no transform here imitates (other patients, disease mix, devices).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from edge.imaging.preprocess import normalise
from edge.inference import metrics as m
from edge.inference.calibration import choose_thresholds, fitted_temperature
from edge.inference.postprocess import softmax
from edge.inference.registry import Registry
from tools import augment as a
from tools.recipe import REPO, Recipe, Sample, group_split, load_pixels, load_recipe, read_samples, run_onnx

console = Console(width=130)
Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# One transform each, at a strength a real site plausibly differs by (not the training extremes).
COMMON: dict[str, Shift] = {
    "half resolution": lambda x, r: a.lower_resolution(x, 0.5),
    "third resolution": lambda x, r: a.lower_resolution(x, 0.33),
    "blur (sigma 1.5 px)": lambda x, r: a.blur(x, 1.5),
    "local contrast (CLAHE 3)": lambda x, r: a.local_contrast(x, 3.0),
    "JPEG quality 25": lambda x, r: a.jpeg(x, 25),
    "zoomed in 15%": lambda x, r: a.affine(x, 0.0, 1.15, (0.0, 0.0)),
    "zoomed out 15%": lambda x, r: a.affine(x, 0.0, 0.85, (0.0, 0.0)),
}
XRAY: dict[str, Shift] = {
    "darker (gamma 1.6)": lambda x, r: a.intensity(x, gamma=1.6),
    "brighter (gamma 0.6)": lambda x, r: a.intensity(x, gamma=0.6),
    "low contrast (x0.65)": lambda x, r: a.intensity(x, contrast=0.65),
    "high contrast (x1.4)": lambda x, r: a.intensity(x, contrast=1.4),
    "noise (8 grey levels)": lambda x, r: a.noise(x, 8.0, r),
    "rotated 10 degrees": lambda x, r: a.affine(x, 10.0, 1.0, (0.0, 0.0)),
    **COMMON,
}
ULTRASOUND: dict[str, Shift] = {
    "gain 0.7": lambda x, r: a.intensity(x, gain=0.7),
    "gain 1.4": lambda x, r: a.intensity(x, gain=1.4),
    "low contrast (x0.65)": lambda x, r: a.intensity(x, contrast=0.65),
    "speckle 0.3": lambda x, r: a.speckle(x, 0.3, r),
    "shallower depth (25%)": lambda x, r: a.depth_crop(x, 0.25),
    "wider pixels (x1.33)": lambda x, r: a.stretch(x, 1.33),
    **COMMON,
}


def shifts_for(recipe: Recipe) -> dict[str, Shift]:
    return ULTRASOUND if recipe.raw["augment"].get("kind") == "ultrasound" else XRAY


class Scorer:
    """P(positive) of a model for uint8 images at its input size, as the product computes it."""

    def __init__(self, recipe: Recipe, onnx: Path, temperature: float, threshold: float) -> None:
        self.recipe, self.onnx = recipe, onnx
        self.temperature, self.threshold = temperature, threshold
        self.positive = recipe.labels.index(recipe.positive)

    def logits(self, images: np.ndarray) -> np.ndarray:
        spec = self.recipe.spec
        return run_onnx(self.onnx, np.stack([normalise(image, spec) for image in images]))

    def probability(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(softmax(self.logits(images), self.temperature)[:, self.positive])


def shipped_scorer(recipe: Recipe, models_dir: Path) -> Scorer:
    """The released model as its manifest says (read and its FP32 file verified by the registry)."""
    entry = Registry(models_dir).get(recipe.name)
    threshold = entry.manifest.operating_points["balanced"].threshold
    return Scorer(recipe, entry.variant_file("fp32"), entry.manifest.output.temperature, threshold)


def candidate_scorer(recipe: Recipe, onnx: Path, val_x: np.ndarray, val_y: np.ndarray) -> Scorer:
    """Calibrated as the released models were (`[release] choose_on = "clean"`): NLL temperature,
    then Youden's J on clean validation, so a candidate and a shipped model meet on one rule."""
    scorer = Scorer(recipe, onnx, 1.0, 0.5)
    logits = scorer.logits(val_x)
    scorer.temperature = fitted_temperature(logits, val_y)
    prob = softmax(logits, scorer.temperature)[:, scorer.positive]
    scorer.threshold = choose_thresholds(val_y == scorer.positive, prob, 0.95)["balanced"]
    return scorer


def figures(truth: np.ndarray, prob: np.ndarray, threshold: float, seed: int = 0) -> dict[str, Any]:
    counts = m.at_threshold(truth, prob, threshold)
    low, high = m.bootstrap_interval(m.roc_auc, truth, prob, rounds=300, seed=seed)
    return {
        "auc": round(m.roc_auc(truth, prob), 4),
        "auc_ci95": [round(low, 4), round(high, 4)],
        "sensitivity": round(counts.sensitivity, 4),
        "specificity": round(counts.specificity, 4),
        "accuracy": round(counts.accuracy, 4),
        "median_p_negatives": round(float(np.median(prob[~truth])), 4),
    }


def shifted(images: np.ndarray, shift: Shift, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([shift(image, rng) for image in images])


def evaluate(
    scorer: Scorer,
    shifts: dict[str, Shift],
    test: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    seed: int,
) -> dict[str, Any]:
    test_x, test_y = test
    truth = test_y == scorer.positive
    clean_p = scorer.probability(test_x)
    rows: dict[str, Any] = {"clean": figures(truth, clean_p, scorer.threshold, seed)}
    pooled_p, pooled_t, val_p, val_t = [], [], [], []
    for k, (name, shift) in enumerate(shifts.items()):
        prob = scorer.probability(shifted(test_x, shift, seed + k))
        rows[name] = figures(truth, prob, scorer.threshold, seed)
        pooled_p.append(prob)
        pooled_t.append(truth)
        if val is not None:
            val_p.append(scorer.probability(shifted(val[0], shift, seed + 100 + k)))
            val_t.append(val[1] == scorer.positive)
    all_p, all_t = np.concatenate(pooled_p), np.concatenate(pooled_t)
    rows["all shifts pooled"] = figures(all_t, all_p, scorer.threshold, seed)
    out: dict[str, Any] = {
        "onnx": str(scorer.onnx),
        "temperature": scorer.temperature,
        "balanced_threshold": scorer.threshold,
        "rows": rows,
    }
    if val_p:
        on_shift = choose_thresholds(np.concatenate(val_t), np.concatenate(val_p), 0.95)["balanced"]
        out["threshold_chosen_on_shifted_validation"] = on_shift
        out["pooled_at_shift_threshold"] = figures(all_t, all_p, on_shift, seed)
        out["clean_at_shift_threshold"] = figures(truth, clean_p, on_shift, seed)
    return out


def print_table(title: str, result: dict[str, Any]) -> None:
    table = Table(title=f"{title} (balanced threshold {result['balanced_threshold']})")
    for column in ("shift", "AUC [95% CI]", "sens", "spec", "acc", "median p of negatives"):
        table.add_column(column, justify="left" if column == "shift" else "right")
    for name, row in result["rows"].items():
        low, high = row["auc_ci95"]
        table.add_row(
            name,
            f"{row['auc']:.3f} [{low:.3f}, {high:.3f}]",
            f"{row['sensitivity']:.3f}",
            f"{row['specificity']:.3f}",
            f"{row['accuracy']:.3f}",
            f"{row['median_p_negatives']:.3f}",
        )
    console.print(table)
    if "threshold_chosen_on_shifted_validation" in result:
        pooled, clean = result["pooled_at_shift_threshold"], result["clean_at_shift_threshold"]
        console.print(
            f"Youden's J on the shifted validation split chooses "
            f"{result['threshold_chosen_on_shifted_validation']}: pooled shifted held-out "
            f"sens {pooled['sensitivity']:.3f} spec {pooled['specificity']:.3f} "
            f"acc {pooled['accuracy']:.3f}; "
            f"clean held-out acc {clean['accuracy']:.3f}"
        )


def splits(recipe: Recipe, seen: bool) -> tuple[list[Sample], list[Sample], str]:
    samples = read_samples(recipe)
    if recipe.data.get("cv_folds"):
        if not seen:
            raise SystemExit(
                f"{recipe.name} is cross-validated: the shipped model was trained on every image, so no "
                "split is held out from it. Pass --seen for figures on images it saw (optimistic)."
            )
        return samples, [], "every image (the model saw them: optimistic)"
    split = group_split(samples, recipe)
    pick = {name: [s for s in samples if split[s.path] == name] for name in ("val", "holdout")}
    return pick["holdout"], pick["val"], "patient-level holdout split (never used for any choice)"


def held_out_models(recipe: Recipe, samples: list[Sample]) -> dict[str, Path]:
    """image path -> the FP32 ONNX of a model that never trained on it: each cross-validation
    fold's own (exported once from its checkpoint: torch), else the run's model."""
    run = recipe.run_dir()
    if not recipe.data.get("cv_folds"):
        return {s.path: run / f"{recipe.name}-fp32.onnx" for s in samples}
    from tools.recipe import read_split
    from tools.train import fold_fp32  # torch, as every release needs

    fold_of = read_split(recipe)
    exported = {fold: fold_fp32(recipe, run / fold) for fold in sorted({fold_of[s.path] for s in samples})}
    return {s.path: exported[fold_of[s.path]] for s in samples}


def shifted_predictions(
    recipe: Recipe, samples: list[Sample], model_of: dict[str, Path], seed: int
) -> tuple[list[Sample], np.ndarray]:
    """Every sample under every shift of its modality, each scored by `model_of[sample.path]`:
    the samples (tagged with the shift in `row["shift"]` and, so that a per-video mean never
    mixes shifts, in `group` and any `[release] aggregate_by` column) and their logits."""
    pixels = load_pixels(recipe, samples)
    column = recipe.raw.get("release", {}).get("aggregate_by")
    models = sorted(set(model_of.values()))
    tagged: list[Sample] = []
    logits: list[np.ndarray] = []
    for k, (name, shift) in enumerate(shifts_for(recipe).items()):
        images = shifted(pixels, shift, seed + k)
        inputs = np.stack([normalise(image, recipe.spec) for image in images])
        out = np.zeros((len(samples), len(recipe.labels)), np.float32)
        for model in models:
            rows = np.array([model_of[s.path] == model for s in samples])
            out[rows] = run_onnx(model, inputs[rows])
        logits.append(out)
        for sample in samples:
            row = {**sample.row, "shift": name}
            if column:
                row[column] = f"{sample.row.get(column) or sample.group} | {name}"
            tagged.append(replace(sample, group=f"{sample.group} | {name}", row=row))
    return tagged, np.concatenate(logits)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models", help="released models")
    parser.add_argument("--onnx", type=Path, help="a candidate FP32 ONNX instead of the shipped model")
    parser.add_argument("--limit", type=int, help="at most N images per split (smoke tests)")
    parser.add_argument("--seen", action="store_true", help="cross-validated recipes: use every image")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--seed", type=int, default=20261203)
    args = parser.parse_args()

    recipe = load_recipe(args.config)
    test_s, val_s, kind = splits(recipe, args.seen)
    if args.limit:
        rng = np.random.default_rng(args.seed)
        test_s = [test_s[i] for i in sorted(rng.permutation(len(test_s))[: args.limit])]
        val_s = [val_s[i] for i in sorted(rng.permutation(len(val_s))[: args.limit])]
    with console.status("decoding images with the product's decoder..."):
        test = load_pixels(recipe, test_s), np.array([s.label for s in test_s])
        val = (load_pixels(recipe, val_s), np.array([s.label for s in val_s])) if val_s else None
    if args.onnx:
        if val is None:
            raise SystemExit("a candidate needs a validation split to be calibrated on")
        scorer = candidate_scorer(recipe, args.onnx, *val)
    else:
        scorer = shipped_scorer(recipe, args.models_dir)
    result = evaluate(scorer, shifts_for(recipe), test, val, args.seed)
    result.update(model=recipe.name, images=len(test_s), kind=kind)
    print_table(f"{recipe.name}: {len(test_s)} images, {kind}", result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
