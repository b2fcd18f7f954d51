"""Does an ensemble of independently trained members generalise better than one model? (issue 15)

    python -m tools.train --config tools/configs/cxr-pneumonia.toml --member 1   # and 2, ...
    python -m tools.ensemble_eval --config tools/configs/cxr-pneumonia.toml --members 1 2

Deep ensembles are the best known defence against dataset shift (Ovadia et al. 2019), and they
multiply a release's ONNX bytes, so they ship only where they are measured to help. For a recipe
with a fixed split, this scores the ordinary run (member 0) and each `member-K` on the held-out
split, clean and under every acquisition shift of tools/shift_eval.py, and the ensembles of the
first 2, 3, ... members (the mean of the members' probabilities). Each candidate is calibrated and
thresholded as tools/release.py does it (temperature and operating points on the validation
split under the shifts), so the comparison is on the release's rules; the holdout fits nothing.
Differences against member 0 come with a paired bootstrap that resamples holdout images (an
image's shifted copies travel together). Whether ensembles ship is then decided on these
holdout figures: say so wherever the decision is reported.
Writes runs/<name>/ensemble_eval.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from edge.imaging.preprocess import normalise
from edge.inference import metrics as m
from edge.inference.calibration import fitted_temperature
from edge.inference.postprocess import softmax
from tools.recipe import Recipe, load_pixels, load_recipe, run_onnx, split_samples
from tools.release_sets import Predictions, operating_points, report
from tools.shift_eval import shifted, shifts_for

console = Console()
CLEAN = "clean"


def member_files(recipe: Recipe, members: list[int]) -> dict[str, Path]:
    run = recipe.run_dir()
    files = {"member 0": run / f"{recipe.name}-fp32.onnx"}
    files.update({f"member {k}": run / f"member-{k}" / f"{recipe.name}-fp32.onnx" for k in members})
    missing = [str(path) for path in files.values() if not path.exists()]
    if missing:
        raise SystemExit(f"not trained yet: {', '.join(missing)}")
    return files


def split_logits(recipe: Recipe, split: str, files: dict[str, Path], seed: int) -> dict[str, Any]:
    """Every model's logits for one split, clean and under each shift (the same shifted images
    for every model): {"truth": labels, "logits": {model: {condition: logits}}}."""
    samples = split_samples(recipe, split)
    pixels = load_pixels(recipe, samples)
    conditions = {CLEAN: pixels}
    for k, (name, shift) in enumerate(shifts_for(recipe).items()):
        conditions[name] = shifted(pixels, shift, seed + k)
    logits: dict[str, dict[str, np.ndarray]] = {model: {} for model in files}
    for condition, images in conditions.items():
        inputs = np.stack([normalise(image, recipe.spec) for image in images])
        for model, path in files.items():
            logits[model][condition] = run_onnx(path, inputs)
    return {"truth": np.array([s.label for s in samples]), "logits": logits}


def ensemble(members: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The mean of the members' probabilities, as logits (log p, which softmax maps back to p)."""
    return {
        condition: np.log(np.mean([softmax(member[condition]) for member in members], axis=0) + 1e-12)
        for condition in members[0]
    }


def assess(
    recipe: Recipe, val: dict[str, Any], hold: dict[str, Any], val_logits: dict, hold_logits: dict, seed: int
) -> dict[str, Any]:
    """One candidate, calibrated and thresholded as a release would, measured on the holdout."""
    shifts = [c for c in val_logits if c != CLEAN]
    n_shifts = len(shifts)
    val_shifted = Predictions(
        "validation under shifts",
        [],
        np.concatenate([val_logits[c] for c in shifts]),
        np.tile(val["truth"], n_shifts),
    )
    temperature = fitted_temperature(val_shifted.logits, val_shifted.truth)
    thresholds, _ = operating_points(val_shifted, recipe, temperature)
    pooled = Predictions(
        "holdout under shifts",
        [],
        np.concatenate([hold_logits[c] for c in shifts]),
        np.tile(hold["truth"], n_shifts),
    )
    clean = Predictions("holdout", [], hold_logits[CLEAN], hold["truth"])
    positive = recipe.labels.index(recipe.positive)
    per_shift_auc = {
        c: m.roc_auc(hold["truth"] == positive, softmax(hold_logits[c], temperature)[:, positive])
        for c in shifts
    }
    worst = min(per_shift_auc, key=lambda c: per_shift_auc[c])
    return {
        # P(positive) per condition and holdout image, for the paired comparison (not written).
        "_prob": np.stack([softmax(hold_logits[c], temperature)[:, positive] for c in [CLEAN, *shifts]]),
        "temperature": temperature,
        "thresholds": thresholds,
        "clean": report(clean, recipe, temperature, thresholds, seed),
        "shifted": report(pooled, recipe, temperature, thresholds, seed),
        "nll_clean": round(m.negative_log_likelihood(clean.logits, clean.truth, temperature), 4),
        "nll_shifted": round(m.negative_log_likelihood(pooled.logits, pooled.truth, temperature), 4),
        "worst_shift": worst,
        "worst_shift_auc": round(per_shift_auc[worst], 4),
    }


def paired_auc_difference(
    truth: np.ndarray, prob: np.ndarray, baseline: np.ndarray, rounds: int = 1000, seed: int = 0
) -> dict[str, list[float]]:
    """AUC(prob) - AUC(baseline) with a 95% bootstrap interval, clean (row 0) and under the shifts
    pooled (the other rows). Both arrays are (conditions, images); resampling picks images, so an
    image's shifted copies, and both candidates' scores of it, are drawn together."""
    rng = np.random.default_rng(seed)
    n = truth.shape[0]

    def deltas(pick: np.ndarray) -> tuple[float, float]:
        labels = truth[pick]
        clean = m.roc_auc(labels, prob[0, pick]) - m.roc_auc(labels, baseline[0, pick])
        tiled = np.tile(labels, prob.shape[0] - 1)
        pooled = m.roc_auc(tiled, prob[1:, pick].ravel()) - m.roc_auc(tiled, baseline[1:, pick].ravel())
        return clean, pooled

    point = deltas(np.arange(n))
    draws = np.array([deltas(rng.integers(0, n, n)) for _ in range(rounds)])
    low, high = np.nanpercentile(draws, [2.5, 97.5], axis=0)
    return {
        name: [round(point[k], 4), round(float(low[k]), 4), round(float(high[k]), 4)]
        for k, name in enumerate(("clean", "shifted"))
    }


def print_table(results: dict[str, dict[str, Any]]) -> None:
    table = Table(title="holdout: clean | under the shifts pooled (balanced threshold chosen on shifted val)")
    columns = (
        "model",
        "AUC clean",
        "AUC shifted",
        "vs member 0 (paired 95% CI)",
        "worst shift",
        "acc",
        "sens",
    )
    for column in (*columns, "spec", "NLL"):
        table.add_column(column)
    for name, r in results.items():
        clean, pooled = r["clean"], r["shifted"]
        delta = r.get("auc_minus_member_0")
        versus = (
            " | ".join(f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]" for d in (delta["clean"], delta["shifted"]))
            if delta
            else ""
        )
        table.add_row(
            name,
            f"{clean['auc']:.4f}",
            f"{pooled['auc']:.4f}",
            versus,
            f"{r['worst_shift_auc']:.4f} ({r['worst_shift']})",
            f"{clean['balanced_accuracy']:.3f} | {pooled['balanced_accuracy']:.3f}",
            f"{clean['balanced_sensitivity']:.3f} | {pooled['balanced_sensitivity']:.3f}",
            f"{clean['balanced_specificity']:.3f} | {pooled['balanced_specificity']:.3f}",
            f"{r['nll_clean']:.3f} | {r['nll_shifted']:.3f}",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--members", type=int, nargs="+", required=True, help="the K of each member-K")
    args = parser.parse_args()
    if min(args.members) < 1 or len(set(args.members)) != len(args.members):
        parser.error("--members takes distinct K >= 1 (member 0 is the ordinary run, always included)")
    recipe = load_recipe(args.config)
    if recipe.data.get("cv_folds"):
        raise SystemExit("a cross-validated recipe has no holdout to judge an ensemble on")
    seed = int(recipe.raw["seed"])
    files = member_files(recipe, args.members)
    with console.status("scoring validation and holdout, clean and shifted, with every member..."):
        # The same shift seeds as tools/release.py's shifted sets, so member 0's thresholds are
        # the ones its release would choose.
        val = split_logits(recipe, "val", files, seed)
        hold = split_logits(recipe, "holdout", files, seed)
    results = {
        name: assess(recipe, val, hold, val["logits"][name], hold["logits"][name], seed) for name in files
    }
    names = list(files)
    for n in range(2, len(names) + 1):
        label = f"ensemble of {n} (members {', '.join(x.split()[-1] for x in names[:n])})"
        results[label] = assess(
            recipe,
            val,
            hold,
            ensemble([val["logits"][x] for x in names[:n]]),
            ensemble([hold["logits"][x] for x in names[:n]]),
            seed,
        )
    positive = hold["truth"] == recipe.labels.index(recipe.positive)
    baseline = results["member 0"]["_prob"]
    for name, result in results.items():
        if name != "member 0":
            result["auc_minus_member_0"] = paired_auc_difference(
                positive, result["_prob"], baseline, seed=seed
            )
    print_table(results)
    out = recipe.run_dir() / "ensemble_eval.json"
    written = {name: {k: v for k, v in r.items() if k != "_prob"} for name, r in results.items()}
    out.write_text(json.dumps(written, indent=1))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
