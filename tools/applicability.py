"""Fit, threshold and measure a model's applicability check (edge/inference/scope.py).

    python -m tools.applicability --config tools/configs/cxr-pneumonia.toml [--write]

1. Features: the released FP32 model's `features` output (tools/graph_edits.py) for every
   labelled image of the recipe, through the product's own decoder and preprocessing.
2. Fit: class means and a Ledoit-Wolf shared covariance on the training images.
3. Threshold: the distance that at most 1% of in-distribution validation images exceed, through
   each variant's features (the largest of the variants' thresholds). For a
   split recipe the validation split (fitted on train); for a cross-validated one, out of fold:
   each fold scored by statistics fitted on the other four (the shipped network itself saw every
   image: the card says so). The validation distances are shipped too: the device turns a
   distance into a conformal p-value against them.
4. Measure: in-distribution images (the holdout split, or the out-of-fold scores) against each
   out-of-distribution set of tools/ood_sets.py: AUROC and the share refused at the threshold,
   also through the INT8 QDQ variant's features (what a Jetson serves).
`--write` puts `applicability.npz` in models/<name>/, the `[applicability]` table into its
model.toml and the measured table into its card (between markers, re-written on each run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
from rich.console import Console

from edge.compat import tomllib
from edge.imaging.preprocess import preprocess_batch
from edge.inference import metrics as m
from edge.inference.scope import ScopeCheck, layer_values
from tools.ood_sets import ood_sets
from tools.recipe import (
    REPO,
    Recipe,
    group_folds,
    group_split,
    load_recipe,
    model_inputs,
    read_samples,
    run_onnx_outputs,
)

console = Console()
MAX_REFUSED = 0.01
"""At most this share of in-distribution validation images may be refused."""
CARD_BEGIN = "<!-- applicability table: tools/applicability.py -->"
CARD_END = "<!-- end applicability table -->"
STATS = "applicability.npz"
REDUCED = ("int8-qdq", "int8-qop")
"""The reduced-precision variants the device may serve: their numerical noise is part of the fit."""
LOOKS_LIKE = {
    "cxr-pneumonia": "a frontal paediatric chest X-ray",
    "us-breast": "a breast ultrasound image",
    "us-lung": "a lung ultrasound image",
}
"""What an in-scope input is, in the technician's refusal sentence."""


def fit(
    features: np.ndarray, labels: np.ndarray, classes: int, noise: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the shared precision matrix of one layer: the Ledoit-Wolf shrunk
    covariance of the class-centred features (a few hundred images do not pin down 96-128
    dimensions alone), plus `noise`, the second moment of what a reduced-precision variant
    computes differently (INT8 rounding must not read as "unlike the training images")."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, np.float64)
    means = np.stack([features[labels == c].mean(axis=0) for c in range(classes)])
    covariance = LedoitWolf(assume_centered=True).fit(features - means[labels]).covariance_
    if noise is not None:
        covariance = covariance + noise
    return means, np.linalg.inv(covariance)


def layer_sizes(path: Path) -> list[int]:
    """Channels of each pooled layer in `features` (tools/graph_edits.py names them features_<k>)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: v.type.tensor_type.shape.dim for v in model.graph.value_info}
    sizes = []
    while f"features_{len(sizes)}" in shapes:
        sizes.append(int(shapes[f"features_{len(sizes)}"][1].dim_value))
    return sizes


def fit_check(
    features: np.ndarray,
    labels: np.ndarray,
    classes: int,
    sizes: list[int],
    variants: list[np.ndarray] | None = None,
) -> ScopeCheck:
    """Every layer's statistics (scales 1 and no calibration yet: `raw_distances` needs neither).
    `variants`: the same images' features from each servable reduced-precision variant; their
    differences from FP32 widen the covariance, so one set of statistics judges them all."""
    means, precisions = [], []
    start = 0
    for size in sizes:
        layer = layer_values(features, start, size)
        noise = None
        for other in variants or []:
            delta = layer_values(other, start, size) - layer
            noise = (0 if noise is None else noise) + delta.T @ delta / len(delta)
        start += size
        mean, precision = fit(layer, labels, classes, noise)
        means.append(mean)
        precisions.append(precision)
    return ScopeCheck(sizes, means, precisions, np.ones(len(sizes)), np.zeros(1), np.inf)


def raw_distances(check: ScopeCheck, features: np.ndarray) -> np.ndarray:
    """Layers x images: unscaled distances."""
    return np.stack(check.layer_distances(features))


def scaled(raw: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return np.max(raw / scales[:, None], axis=0)


def threshold_for(validation: np.ndarray) -> float:
    """The smallest distance that at most MAX_REFUSED of the validation images exceed."""
    ordered = np.sort(validation)
    allowed = int(np.floor(MAX_REFUSED * len(ordered)))
    return float(ordered[len(ordered) - 1 - allowed])


def variant_file(recipe: Recipe, variant: str) -> Path:
    return REPO / "models" / recipe.name / f"{recipe.name}-{variant}.onnx"


_FEATURES: dict[tuple[str, str], np.ndarray] = {}


def labelled_features(recipe: Recipe, variant: str) -> np.ndarray:
    """One variant's `features` for every labelled image of the recipe (computed once per run)."""
    key = (recipe.name, variant)
    if key not in _FEATURES:
        samples = read_samples(recipe)
        with console.status(f"{recipe.name} {variant}: features of {len(samples)} labelled images..."):
            inputs = model_inputs(recipe, samples)
            _FEATURES[key] = run_onnx_outputs(variant_file(recipe, variant), inputs, ("features",))[0]
    return _FEATURES[key]


def in_distribution(recipe: Recipe, variant: str = "fp32") -> dict[str, Any]:
    """The check fitted on the FP32 features; validation and evaluation distances of `variant`'s
    features (the device may serve an INT8 variant, whose features the FP32 statistics judge).
    Each layer's scale is its 99th percentile of validation distances (FP32)."""
    samples = read_samples(recipe)
    labels = np.array([s.label for s in samples])
    fitted = labelled_features(recipe, "fp32")
    scored = labelled_features(recipe, variant)
    reduced = [labelled_features(recipe, v) for v in REDUCED]
    sizes = layer_sizes(variant_file(recipe, "fp32"))
    classes = len(recipe.labels)
    folds = int(recipe.data.get("cv_folds", 0))
    if folds:
        fold_of = group_folds(samples, recipe, folds)
        fold = np.array([fold_of[s.path] for s in samples])
        raw_fp32 = np.zeros((len(sizes), len(samples)))
        raw = np.zeros((len(sizes), len(samples)))
        for k in range(folds):
            train = fold != k
            check = fit_check(fitted[train], labels[train], classes, sizes, [r[train] for r in reduced])
            raw_fp32[:, fold == k] = raw_distances(check, fitted[fold == k])
            raw[:, fold == k] = raw_distances(check, scored[fold == k])
        scales = np.quantile(raw_fp32, 1 - MAX_REFUSED, axis=1)
        validation = scaled(raw, scales)
        group = recipe.data.get("group_column") or "near-duplicate group"
        return {
            "check": fit_check(fitted, labels, classes, sizes, reduced),
            "scales": scales,
            "validation": validation,
            "evaluation": validation,
            "evaluation_kind": f"out of fold ({len(samples)} images)",
            "calibration_kind": f"out of fold, {folds}-fold cross-validation by {group}",
        }
    split = group_split(samples, recipe)
    where = np.array([split[s.path] for s in samples])
    train = where == "train"
    check = fit_check(fitted[train], labels[train], classes, sizes, [r[train] for r in reduced])
    scales = np.quantile(raw_distances(check, fitted[where == "val"]), 1 - MAX_REFUSED, axis=1)
    return {
        "check": check,
        "scales": scales,
        "validation": scaled(raw_distances(check, scored[where == "val"]), scales),
        "evaluation": scaled(raw_distances(check, scored[where == "holdout"]), scales),
        "evaluation_kind": f"holdout split ({int((where == 'holdout').sum())} images)",
        "calibration_kind": f"validation split ({int((where == 'val').sum())} images), fitted on train",
    }


def measure(recipe: Recipe, variant: str, stats: dict[str, Any], threshold: float) -> list[dict[str, Any]]:
    """AUROC and share refused per out-of-distribution set, beside the in-distribution row."""
    spec = recipe.spec
    path = variant_file(recipe, variant)
    inside = stats["evaluation"]
    rows = [
        {
            "set": f"in distribution: {stats['evaluation_kind']}",
            "images": len(inside),
            "auroc": None,
            "refused": round(float((inside > threshold).mean()), 4),
        }
    ]
    for name, loader in ood_sets(recipe.name).items():
        with console.status(f"{recipe.name} {variant}: {name}..."):
            images = loader()
            inputs = np.concatenate(
                [preprocess_batch(images[i : i + 64], spec) for i in range(0, len(images), 64)]
            )
            features = run_onnx_outputs(path, inputs, ("features",))[0]
        outside = scaled(raw_distances(stats["check"], features), stats["scales"])
        truth = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
        auroc = m.roc_auc(truth, np.r_[inside, outside])
        rows.append(
            {
                "set": name,
                "images": len(outside),
                "auroc": round(float(auroc), 4),
                "refused": round(float((outside > threshold).mean()), 4),
            }
        )
        console.print(
            f"  {name}: {len(outside)} images, AUROC {auroc:.4f}, refused {rows[-1]['refused']:.1%}"
        )
    return rows


def card_table(
    rows: dict[str, list[dict[str, Any]]], thresholds: dict[str, float], calibration_kind: str
) -> str:
    shown = ", ".join(f"{variant} {value:.3f}" for variant, value in thresholds.items())
    lines = [
        CARD_BEGIN,
        "## Applicability (out-of-distribution check)",
        "",
        "Every input is also scored by its distance from the training images in the network's",
        "own feature space, layer by layer (class-conditional Mahalanobis distance with a shared",
        "covariance, Lee et al. 2018: `edge/inference/scope.py`); above the threshold it is",
        f"refused as `OUT_OF_SCOPE`, not answered. Thresholds ({shown}): at most 1% of",
        f"in-distribution validation images ({calibration_kind}) are refused, through each",
        "variant's own features (INT8 rounding moves them; a TensorRT engine uses its source's).",
        "AUROC: in-distribution evaluation images against each set (1.0 = always told apart);",
        "refused: the share refused at the shipped threshold. Reproduce:",
        "`python -m tools.applicability --config tools/configs/<name>.toml`.",
        "",
    ]
    variants = list(rows)
    header = "| set | images | " + " | ".join(f"AUROC ({v}) | refused ({v})" for v in variants) + " |"
    lines += [header, "|---|---|" + "---|---|" * len(variants)]
    for index, row in enumerate(rows[variants[0]]):
        cells = []
        for v in variants:
            r = rows[v][index]
            cells += ["-" if r["auroc"] is None else f"{r['auroc']:.3f}", f"{r['refused']:.1%}"]
        lines.append(f"| {row['set']} | {row['images']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "What these figures can and cannot show: the sets are the kinds of wrong input a clinic box",
        "meets (another modality or body part, another device, a photograph, a screenshot, a blank",
        "frame); an image of the right kind from another hospital or unit is in scope by design and",
        "is what local validation (`edge models eval`) is for. The network that makes the features",
        "saw every training image, so the in-distribution share refused on new images of the right",
        "kind may be somewhat higher than on the validation images. The combination of layers was",
        "chosen after the last layer alone fell short on these sets for the ultrasound models (a",
        "chest X-ray given to us-breast: AUROC 0.81), so the sets are not wholly independent of",
        "that one design choice; independent checks with other images will tell.",
        CARD_END,
    ]
    return "\n".join(lines)


def write(
    recipe: Recipe,
    per_variant: dict[str, dict[str, Any]],
    thresholds: dict[str, float],
    rows: dict[str, list[dict[str, Any]]],
) -> None:
    stats = per_variant["fp32"]
    threshold = thresholds["fp32"]
    folder = REPO / "models" / recipe.name
    target = folder / STATS
    check: ScopeCheck = stats["check"]
    layers: dict[str, np.ndarray] = {}
    for k, (means, precision) in enumerate(zip(check.means, check.precisions, strict=True)):
        layers[f"means_{k}"] = means.astype(np.float32)
        layers[f"precision_{k}"] = precision.astype(np.float32)
    np.savez(
        target,
        sizes=np.array(check.sizes, np.int32),
        scales=stats["scales"].astype(np.float32),
        calibration=np.sort(stats["validation"]).astype(np.float32),
        **{
            f"calibration_{v}": np.sort(per_variant[v]["validation"]).astype(np.float32)
            for v in per_variant
            if v != "fp32"
        },
        **layers,
    )
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    manifest_path = folder / "model.toml"
    manifest = tomllib.loads(manifest_path.read_text())
    validation = stats["validation"]
    manifest["applicability"] = {
        "method": "mahalanobis",
        "features": "features",
        "looks_like": LOOKS_LIKE[recipe.name],
        "file": STATS,
        "sha256": digest,
        "threshold": round(threshold, 4),
        "variant_thresholds": {v: round(t, 4) for v, t in thresholds.items() if v != "fp32"},
        "calibration": stats["calibration_kind"],
        "validation_refused": round(float((validation > threshold).mean()), 4),
        "measured": {
            variant: {r["set"]: {k: v for k, v in r.items() if k != "set" and v is not None} for r in vrows}
            for variant, vrows in rows.items()
        },
    }
    manifest_path.write_text(tomli_w.dumps(manifest))
    write_card(recipe)


def write_card(recipe: Recipe, folder: Path | None = None) -> None:
    """The card's applicability table, from the figures the manifest holds (models/<name>/)."""
    folder = folder or REPO / "models" / recipe.name
    spec = tomllib.loads((folder / "model.toml").read_text())["applicability"]
    rows = {
        variant: [{"set": name, "auroc": None, **figures} for name, figures in sets.items()]
        for variant, sets in spec["measured"].items()
    }
    card = folder / "MODEL_CARD.md"
    text = card.read_text()
    thresholds = {"fp32": spec["threshold"], **spec.get("variant_thresholds", {})}
    table = card_table(rows, thresholds, spec["calibration"])
    if CARD_BEGIN in text:
        text = text[: text.index(CARD_BEGIN)] + table + text[text.index(CARD_END) + len(CARD_END) :]
    else:
        anchor = "## Operating points"
        text = (
            text.replace(anchor, table + "\n\n" + anchor, 1) if anchor in text else text + "\n" + table + "\n"
        )
    card.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--write", action="store_true", help="write the statistics, manifest table and card")
    parser.add_argument(
        "--card-only", action="store_true", help="re-render the card from the manifest's figures"
    )
    parser.add_argument(
        "--variants",
        default="fp32,int8-qdq,int8-qop",
        help="variants the device may serve (default: all three)",
    )
    args = parser.parse_args()
    recipe = load_recipe(args.config)
    if args.card_only:
        write_card(recipe)
        return
    variants = args.variants.split(",")
    per_variant = {variant: in_distribution(recipe, variant) for variant in variants}
    # Each variant its own threshold: at most 1% of validation refused through its own features.
    thresholds = {v: threshold_for(per_variant[v]["validation"]) for v in variants}
    for variant in variants:
        refused = (per_variant[variant]["validation"] > thresholds[variant]).mean()
        console.print(
            f"{recipe.name} {variant}: threshold {thresholds[variant]:.3f}, "
            f"{refused:.2%} of validation refused"
        )
    rows = {}
    for variant in variants:
        rows[variant] = measure(recipe, variant, per_variant[variant], thresholds[variant])
    print(json.dumps(rows, indent=1))
    if args.write:
        write(recipe, per_variant, thresholds, rows)
        console.print(f"written: models/{recipe.name}/{STATS}, model.toml [applicability], MODEL_CARD.md")


if __name__ == "__main__":
    main()
