"""A new site, simulated: after `edge models calibrate` on N of its labelled cases, how well are
its other cases read?

    python -m tools.site_sim --config tools/configs/cxr-pneumonia.toml
    python -m tools.site_sim --config ... --negatives 38 --positives 62 --draws 200 --json out.json
    python -m tools.site_sim --config ... --screening --draws 60   # the screening point's rule

Issue 15 asks that calibrating `cxr-pneumonia` on 100 labelled cases of a new site lift accuracy
on that site's other cases to 0.92 or more. That is checked on an external test set that is not in
this repository. This tool measures the same procedure on the sites we can make here.

**The sites.** The recipe's holdout split (patients that took part in no choice) under each
acquisition shift of tools/shift_eval.py, under a few combined shifts (a brighter and softer
film, the direction the external normals moved), and unshifted.

**The procedure.** The shipped FP32 file scores every image once. Each draw then does this:
1. It picks N cases of the site at random, stratified (default 38 normal and 62 pneumonia, the
   external test set's mix).
2. It fits them with `edge.inference.calibration.fit_site`, the very function
   `edge models calibrate` runs: the site temperature (NLL, a prior at the shipped one), the
   balanced point by Youden's J (the middle of its range, bagged: the median over 100
   resamples; `--bagging-rounds 0` reads the plain middle instead, to compare).
3. It reads every other case of that site at the shipped point and at the site's point.

Accuracy is reported at the drawn mix (sensitivity and specificity weighted by it), so the
holdout's own prevalence does not decide the figure.

**What it cannot show.** Synthetic shifts are a floor: a real site also differs in its patients,
its disease mix and its devices, and the external films moved this model more than any transform
here does. Its figures are a sanity check of the mechanism, not the external target. The cases
are scored with FP32; a device serving INT8 scores within its parity gate of that.
Cross-validated recipes have no holdout the shipped model never saw, so the tool refuses them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from edge.imaging.preprocess import normalise
from edge.inference import calibration
from edge.inference import metrics as m
from edge.inference.calibration import Cases
from edge.inference.postprocess import softmax
from edge.inference.registry import ModelEntry, Registry
from edge.inference.site_calibration import calibratable_points
from tools import augment as a
from tools.recipe import REPO, Recipe, load_pixels, load_recipe, run_onnx
from tools.release_sets import cv_needs_folds, evaluation_sets
from tools.shift_eval import Shift, shifted, shifts_for

console = Console(width=130)
TARGET = 0.92  # issue 15: accuracy on the site's other cases after calibrating on 100
UNSHIFTED = "as trained (no shift)"
# Two shifts at once, as a real site differs in more than one way; brighter first, as the
# external normals scored higher (see the module docstring).
COMBINED: dict[str, dict[str, Shift]] = {
    "xray": {
        "brighter + softer (gamma 0.75, blur 2.5, noise 3)": lambda x, r: a.noise(
            a.blur(a.intensity(x, gamma=0.75), 2.5), 3.0, r
        ),
        "brighter + zoomed in + JPEG 40": lambda x, r: a.jpeg(
            a.affine(a.intensity(x, gamma=0.7), 0.0, 1.1, (0.0, 0.0)), 40
        ),
        "low contrast + half resolution": lambda x, r: a.lower_resolution(a.intensity(x, contrast=0.7), 0.5),
    },
    "ultrasound": {
        "gain 1.3 + speckle 0.2": lambda x, r: a.speckle(a.intensity(x, gain=1.3), 0.2, r),
        "low contrast + half resolution": lambda x, r: a.lower_resolution(a.intensity(x, contrast=0.7), 0.5),
    },
}


def site_logits(
    recipe: Recipe, fp32: Path, seed: int, split: str = "holdout"
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The split's FP32 logits as each simulated site would produce them, and the labels."""
    holdout = evaluation_sets(recipe, fp32, (split,)).get(split)
    if holdout is None:
        raise SystemExit(f"{recipe.name} has no {split} split to simulate sites from")
    kind = "ultrasound" if recipe.raw["augment"].get("kind") == "ultrasound" else "xray"
    pixels = load_pixels(recipe, holdout.samples)
    sites = {UNSHIFTED: holdout.logits}
    every = {**shifts_for(recipe), **COMBINED[kind]}
    for k, (name, shift) in enumerate(every.items()):
        images = shifted(pixels, shift, seed + k)
        sites[name] = run_onnx(fp32, np.stack([normalise(image, recipe.spec) for image in images]))
    return sites, holdout.truth


def _setup(
    entry: ModelEntry, truth: np.ndarray
) -> tuple[list[str], str, np.ndarray, dict[str, float], dict[str, float]]:
    """The model's labels and positive label, which cases are positive, its shipped thresholds
    and the screening targets a refit chooses for."""
    manifest = entry.manifest
    labels, positive = list(manifest.output.labels), manifest.output.positive
    shipped = {name: op.threshold for name, op in manifest.operating_points.items()}
    targets = calibration.targets_for(
        {name: manifest.operating_points[name].description for name in calibratable_points(entry)}
    )
    return labels, positive, truth == labels.index(positive), shipped, targets


@dataclass(frozen=True)
class Sampling:
    """How a site's calibration cases are drawn: `negatives` + `positives` cases per draw,
    `draws` draws, seeded (the same draws for the same sampling)."""

    negatives: int
    positives: int
    draws: int
    seed: int

    def split(self, is_positive: np.ndarray, positive: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each draw's stratified calibration cases and the site's rest."""
        rng = np.random.default_rng(self.seed)
        pos_index, neg_index = np.flatnonzero(is_positive), np.flatnonzero(~is_positive)
        if len(pos_index) <= self.positives or len(neg_index) <= self.negatives:
            raise SystemExit(
                f"the holdout has {len(pos_index)} {positive} and {len(neg_index)} other cases: too few "
                f"to draw {self.positives} and {self.negatives} and keep some to judge on"
            )
        for _ in range(self.draws):
            drawn = np.concatenate(
                [
                    rng.choice(pos_index, self.positives, replace=False),
                    rng.choice(neg_index, self.negatives, replace=False),
                ]
            )
            yield drawn, np.setdiff1d(np.arange(len(is_positive)), drawn)


def simulate(
    entry: ModelEntry,
    logits: np.ndarray,
    truth: np.ndarray,
    sampling: Sampling,
    bagging_rounds: int = calibration.BAGGING_ROUNDS,
) -> dict[str, Any]:
    """`draws` calibrations on stratified samples of one site, each judged on the site's rest.
    `bagging_rounds` other than the product's chooses the balanced point with that many (0: the
    plain middle of Youden's range), at the temperature the product fitted."""
    labels, positive, is_positive, shipped, targets = _setup(entry, truth)
    share = sampling.positives / (sampling.positives + sampling.negatives)
    shipped_t = entry.manifest.output.temperature
    before = _read(
        is_positive, softmax(logits, shipped_t)[:, labels.index(positive)], shipped["balanced"], share
    )
    after: list[dict[str, float]] = []
    for drawn, rest in sampling.split(is_positive, positive):
        # Few bootstrap rounds and no cross-validated reading: neither is read here, and the
        # temperature and thresholds do not depend on them.
        fit = calibration.fit_site(
            Cases(logits[drawn], truth[drawn], labels, positive),
            shipped_t,
            shipped,
            targets,
            "sim",
            rounds=20,
            cross_validate=False,
        )
        prob = softmax(logits, fit.temperature)[:, labels.index(positive)]
        point = fit.points["balanced"].threshold
        if bagging_rounds != calibration.BAGGING_ROUNDS:
            point = calibration.balanced_threshold(is_positive[drawn], prob[drawn], rounds=bagging_rounds)
        prob = prob[rest]
        after.append(
            {
                "threshold": point,
                "temperature": fit.temperature,
                **_read(is_positive[rest], prob, point, share),
            }
        )
    return {
        "cases": len(truth),
        "before": before,
        "after": {key: _spread([a[key] for a in after]) for key in after[0]},
        "after_reaching_target": round(float(np.mean([a["accuracy"] >= TARGET for a in after])), 3),
    }


def screening(
    entry: ModelEntry,
    logits: np.ndarray,
    truth: np.ndarray,
    sampling: Sampling,
) -> dict[str, Any]:
    """The screening point after calibrating, read on the site's rest, two ways on the same draws:
    as the product fits it (`fit_site` cross-validated: the shipped point kept where the site's
    own reads no better out of fold) and always the site's own (the rule before). Sensitivity is
    what the point is for: its mean and 5% worst draw; specificity its mean."""
    labels, positive, is_positive, shipped, targets = _setup(entry, truth)
    read: dict[str, list[tuple[float, float]]] = {"product": [], "always refit": []}
    kept = 0
    for drawn, rest in sampling.split(is_positive, positive):
        cases = Cases(logits[drawn], truth[drawn], labels, positive)
        t0 = entry.manifest.output.temperature
        for rule, cross_validate in (("product", True), ("always refit", False)):
            fit = calibration.fit_site(
                cases, t0, shipped, targets, "sim", rounds=20, cross_validate=cross_validate
            )
            point = fit.points["screening"]
            kept += cross_validate and point.description.startswith(calibration.KEPT)
            prob = softmax(logits[rest], fit.temperature)[:, labels.index(positive)]
            counts = m.at_threshold(is_positive[rest], prob, point.threshold)
            read[rule].append((counts.sensitivity, counts.specificity))
    out: dict[str, Any] = {"target": targets.get("screening"), "kept": round(kept / sampling.draws, 3)}
    for rule, rows in read.items():
        values = np.array(rows)
        out[rule] = {
            "sensitivity": round(float(values[:, 0].mean()), 4),
            "sensitivity_p05": round(float(np.percentile(values[:, 0], 5)), 4),
            "specificity": round(float(values[:, 1].mean()), 4),
        }
    return out


def print_screening(title: str, results: dict[str, dict[str, Any]]) -> None:
    table = Table(title=title)
    for column in (
        "site",
        "product: sens mean / 5% worst, spec",
        "always refit: the same",
        "shipped point kept",
    ):
        table.add_column(column, justify="left" if column == "site" else "right")
    for site, r in results.items():
        cells = [
            f"{r[rule]['sensitivity']:.3f} / {r[rule]['sensitivity_p05']:.3f}, {r[rule]['specificity']:.3f}"
            for rule in ("product", "always refit")
        ]
        table.add_row(site, *cells, f"{r['kept']:.0%}")
    console.print(table)


def _read(truth: np.ndarray, prob: np.ndarray, threshold: float, share: float) -> dict[str, float]:
    counts = m.at_threshold(truth, prob, threshold)
    accuracy = share * counts.sensitivity + (1 - share) * counts.specificity
    return {
        "sensitivity": round(counts.sensitivity, 4),
        "specificity": round(counts.specificity, 4),
        "accuracy": round(accuracy, 4),
    }


def _spread(values: list[float]) -> dict[str, float]:
    low, median, high = np.percentile(values, [5, 50, 95])
    return {"median": round(float(median), 4), "p05": round(float(low), 4), "p95": round(float(high), 4)}


def print_table(title: str, results: dict[str, dict[str, Any]]) -> None:
    table = Table(title=title)
    for column in (
        "site",
        "shipped point: acc (sens/spec)",
        "after calibrating: acc median [5%, 95%]",
        "sens / spec (median)",
        f"draws >= {TARGET}",
        "threshold (median)",
    ):
        table.add_column(column, justify="left" if column == "site" else "right")
    for site, r in results.items():
        b, after = r["before"], r["after"]
        table.add_row(
            site,
            f"{b['accuracy']:.3f} ({b['sensitivity']:.3f}/{b['specificity']:.3f})",
            _median_and_range(after["accuracy"]),
            f"{after['sensitivity']['median']:.3f} / {after['specificity']['median']:.3f}",
            f"{r['after_reaching_target']:.0%}",
            f"{after['threshold']['median']:.3f}",
        )
    console.print(table)


def _median_and_range(spread: dict[str, float]) -> str:
    return f"{spread['median']:.3f} [{spread['p05']:.3f}, {spread['p95']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models", help="released models")
    parser.add_argument("--negatives", type=int, default=38, help="calibration cases per draw, not positive")
    parser.add_argument("--positives", type=int, default=62, help="calibration cases per draw, positive")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument(
        "--split",
        choices=("holdout", "validation"),
        default="holdout",
        help="holdout to report; validation to tune the calibration procedure itself on",
    )
    parser.add_argument(
        "--bagging-rounds",
        type=int,
        default=calibration.BAGGING_ROUNDS,
        help="resamples the balanced point is the median of (0: the plain middle of Youden's range)",
    )
    parser.add_argument(
        "--screening",
        action="store_true",
        help="the screening point instead: as the product fits it (cross-validated, the shipped point "
        "kept where the site's gains nothing) against always the site's own, on the same draws (slower)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    recipe = load_recipe(args.config)
    if recipe.data.get("cv_folds"):
        raise SystemExit(cv_needs_folds(recipe))
    entry = Registry(args.models_dir).get(recipe.name)
    with console.status("scoring the holdout as each simulated site would show it..."):
        sites, truth = site_logits(recipe, entry.variant_file("fp32"), args.seed, args.split)
    sampling = Sampling(args.negatives, args.positives, args.draws, args.seed)
    if args.screening:
        found = {name: screening(entry, logits, truth, sampling) for name, logits in sites.items()}
        print_screening(
            f"{recipe.name} {entry.manifest.version}: the screening point after calibrating on "
            f"{args.negatives}+{args.positives} cases of each site ({args.draws} draws), read on the "
            f"site's other {args.split} cases",
            found,
        )
        if args.json:
            args.json.write_text(json.dumps({"model": recipe.name, "screening": found}, indent=1))
        return
    results = {
        name: simulate(entry, logits, truth, sampling, args.bagging_rounds) for name, logits in sites.items()
    }
    title = (
        f"{recipe.name} {entry.manifest.version}: calibrated on {args.negatives}+{args.positives} cases "
        f"of each site ({args.draws} draws), read on the site's other {args.split} cases"
    )
    if args.bagging_rounds != calibration.BAGGING_ROUNDS:
        title += (
            f"; the balanced point bagged over {args.bagging_rounds} resamples"
            if args.bagging_rounds
            else "; the balanced point: the plain middle of Youden's range"
        )
    print_table(title, results)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": recipe.name,
                    "version": entry.manifest.version,
                    "bagging_rounds": args.bagging_rounds,
                    "sites": results,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
