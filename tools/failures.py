"""Observed failure modes of a released model, reproducibly: which images it gets wrong at its
default operating point, what it called them, where its heatmap lies, and a contact sheet.

    python -m tools.failures --config tools/configs/us-breast.toml [--json]

The predictions are ones the model did not train on: a cross-validated recipe's out-of-fold
logits (runs/<name>/oof.npz), each image's CAM from the fold model that never saw it; otherwise
the validation and holdout splits through runs/<name>/<name>-fp32.onnx. Temperature and the
`balanced` threshold come from the shipped manifest, so the errors are the product's errors.
Writes models/<name>/plots/failures.png: the most confident false negatives and false positives,
each as the image beside its heatmap exactly as the product draws it.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.imaging.decode import decode_bytes
from edge.imaging.explain import evidence_map, overlay, to_image_frame
from edge.imaging.preprocess import preprocess, to_colour
from edge.inference.plots import save_png
from edge.inference.postprocess import softmax
from edge.inference.registry import read_manifest
from tools.recipe import (
    REPO,
    Recipe,
    Sample,
    check_oof,
    load_recipe,
    read_samples,
    read_split,
    run_onnx_outputs,
    split_samples,
)

NEAR_FIELD = 0.2  # top fifth of the frame: skin line and subcutaneous fat in ultrasound; one row of a 5x5 CAM
WORST_PER_KIND = 4  # cases of each kind on the contact sheet
PANEL = 160  # pixels per square panel; keeps a 2 x 8 panel sheet of speckle under ~400 KB


@dataclass
class Evaluation:
    """Images the model never trained on, their logits and CAMs, and which ONNX file made them."""

    kind: str
    samples: list[Sample]
    logits: np.ndarray  # N x classes
    cams: np.ndarray  # N x classes x h x w
    sizes: list[tuple[int, int]]  # decoded height, width: where the CAM maps back to


def errors_at_threshold(
    is_positive: np.ndarray, prob: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of false negatives (lowest P first) and false positives (highest P first): the
    most confidently wrong lead. `prob >= threshold` is a positive call, as in the product."""
    called = prob >= threshold
    missed = np.flatnonzero(is_positive & ~called)
    missed = missed[np.argsort(prob[missed], kind="stable")]
    false_alarms = np.flatnonzero(~is_positive & called)
    return missed, false_alarms[np.argsort(-prob[false_alarms], kind="stable")]


def worst_distinct(indices: np.ndarray, groups: list[str], count: int) -> list[int]:
    """The first `count` of `indices` (worst first) from different groups: BUSI's near-duplicate
    copies would otherwise fill the sheet with one lesion twice."""
    seen: set[str] = set()
    picked = []
    for index in indices.tolist():
        if groups[index] not in seen and len(picked) < count:
            seen.add(groups[index])
            picked.append(index)
    return picked


def peak_depth(heat: np.ndarray) -> float | None:
    """Row of the heatmap's maximum as a fraction of its height (0 = top edge), or None where
    the map is blank (no location argues for the class)."""
    if not float(heat.max()) > 0:
        return None
    row = int(np.unravel_index(int(np.argmax(heat)), heat.shape)[0])
    return row / heat.shape[0]


def near_field_share(depths: list[float | None], fraction: float = NEAR_FIELD) -> dict[str, int]:
    """How many peaks lie in the top `fraction` of the frame, of how many maps had a peak."""
    located = [d for d in depths if d is not None]
    return {
        "near_field": sum(d < fraction for d in located),
        "with_peak": len(located),
        "blank": len(depths) - len(located),
    }


def _decode(recipe: Recipe, sample: Sample) -> np.ndarray:
    return decode_bytes((recipe.data_root / sample.path).read_bytes(), sample.path).pixels


def evaluate(recipe: Recipe) -> Evaluation:
    """Every evaluated image through the model that did not train on it."""
    run = recipe.run_dir()
    cross_validated = bool(recipe.data.get("cv_folds"))
    if cross_validated:
        samples = read_samples(recipe)
        fold_of = read_split(recipe)
        model_of = {s.path: run / fold_of[s.path] for s in samples}  # runs/<name>/fold-k
        kind = f"{recipe.data['cv_folds']}-fold cross-validation, out of fold"
    else:
        samples = split_samples(recipe, "val") + split_samples(recipe, "holdout")
        model_of = {s.path: run for s in samples}
        kind = "validation + holdout splits"
    pixels = [_decode(recipe, s) for s in samples]
    sizes = [(int(p.shape[0]), int(p.shape[1])) for p in pixels]
    inputs = np.stack([preprocess(p, recipe.spec) for p in pixels])
    del pixels
    logits = np.zeros((len(samples), len(recipe.labels)), np.float32)
    cams: np.ndarray | None = None
    for model_dir in sorted(set(model_of.values())):
        rows = np.array([model_of[s.path] == model_dir for s in samples])
        if cross_validated:
            from tools.train import fold_fp32  # exports once from best.pt (torch) if not cached

            model = fold_fp32(recipe, model_dir)
        else:
            model = model_dir / f"{recipe.name}-fp32.onnx"
        model_logits, model_cams = run_onnx_outputs(model, inputs[rows], ("logits", "cam"))
        if cams is None:
            cams = np.zeros((len(samples), *model_cams.shape[1:]), np.float32)
        logits[rows], cams[rows] = model_logits, model_cams
    assert cams is not None
    if cross_validated:
        # The CAMs must come from the models that made the recorded out-of-fold logits (the ones
        # the manifest's figures were computed from): otherwise a fold or export has changed.
        check_oof(run / "oof.npz", [s.path for s in samples], logits)
    return Evaluation(kind, samples, logits, cams, sizes)


def summarise(
    recipe: Recipe, manifest: dict[str, Any], evaluation: Evaluation, cases: int = WORST_PER_KIND
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The statistics (JSON-ready), and the `cases` worst FNs and FPs (one per group) to show."""
    labels, positive = recipe.labels, recipe.labels.index(recipe.positive)
    temperature = float(manifest["output"]["temperature"])
    points = manifest["operating_points"]
    threshold = float(points["balanced"]["threshold"])
    probs = softmax(evaluation.logits, temperature)
    prob = probs[:, positive]
    truth = np.array([s.label for s in evaluation.samples])
    is_positive = truth == positive
    missed, false_alarms = errors_at_threshold(is_positive, prob, threshold)
    called = prob >= threshold
    depths = []
    for cam, (height, width) in zip(evaluation.cams, evaluation.sizes, strict=True):
        # The map a reviewer sees: evidence for the positive class, in the image's own frame.
        depths.append(peak_depth(to_image_frame(evidence_map(cam, positive), height, width, recipe.spec)))

    def case(index: int) -> dict[str, Any]:
        sample = evaluation.samples[index]
        return {"path": sample.path, "truth": labels[sample.label], "p": round(float(prob[index]), 4)}

    def median(rows: np.ndarray) -> float | None:
        return round(float(np.median(prob[rows])), 4) if len(rows) else None

    screening = float(points["screening"]["threshold"]) if "screening" in points else None
    outcomes = {
        "false_negatives": is_positive & ~called,
        "true_positives": is_positive & called,
        "false_positives": ~is_positive & called,
        "true_negatives": ~is_positive & ~called,
    }
    summary = {
        "model": f"{manifest['name']} {manifest['version']}",
        "evaluated": evaluation.kind,
        "images": len(truth),
        "positives": int(is_positive.sum()),
        "positive_class": recipe.positive,
        "temperature": temperature,
        "balanced_threshold": threshold,
        "false_negatives": {
            "count": len(missed),
            # Top-1 of the calibrated probabilities: a miss can still be top-1 positive when
            # the other classes share the rest of the mass.
            "called": dict(Counter(labels[i] for i in probs[missed].argmax(1))),
            "median_p": median(missed),
            "still_missed_at_screening": int((prob[missed] < screening).sum())
            if screening is not None
            else None,
        },
        "false_positives": {
            "count": len(false_alarms),
            "of": int((~is_positive).sum()),
            "truth": dict(Counter(labels[truth[i]] for i in false_alarms)),
            "median_p": median(false_alarms),
        },
        "near_field": f"peak of the {recipe.positive} heatmap in the top {NEAR_FIELD:.0%} of the image",
        # Where the heatmap peaks, per outcome: the errors' figure means something only beside the hits'.
        "cam_peak": {
            name: {"images": int(mask.sum()), **near_field_share([depths[i] for i in np.flatnonzero(mask)])}
            for name, mask in outcomes.items()
        },
    }
    groups = [s.group for s in evaluation.samples]
    shown = {"FN": worst_distinct(missed, groups, cases), "FP": worst_distinct(false_alarms, groups, cases)}
    summary["worst_false_negatives"] = [case(i) for i in shown["FN"]]
    summary["worst_false_positives"] = [case(i) for i in shown["FP"]]
    return summary, shown


def _fit(rgb: np.ndarray, side: int) -> np.ndarray:
    """Scale into a side x side black square, keeping the aspect ratio."""
    factor = side / max(rgb.shape[:2])
    height, width = max(1, round(rgb.shape[0] * factor)), max(1, round(rgb.shape[1] * factor))
    canvas = np.zeros((side, side, 3), np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = cv2.resize(
        rgb, (width, height), interpolation=cv2.INTER_AREA
    )
    return canvas


def _caption(panel: np.ndarray, lines: list[str]) -> None:
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.38
    for number, text in enumerate(lines):
        y = 13 + 14 * number
        (width, _), _ = cv2.getTextSize(text, font, scale, 1)
        panel[y - 11 : y + 3, 0 : width + 6] //= 3  # dark strip under the text, image still visible
        cv2.putText(panel, text, (3, y), font, scale, (255, 255, 255), 1, cv2.LINE_AA)


def contact_sheet(
    recipe: Recipe, evaluation: Evaluation, summary: dict[str, Any], rows: dict[str, list[int]]
) -> np.ndarray:
    """RGB sheet: one row per kind (FN, FP), each case as [image | heatmap overlay]."""
    positive = recipe.labels.index(recipe.positive)
    prob = softmax(evaluation.logits, summary["temperature"])[:, positive]
    columns = max([1, *(len(indices) for indices in rows.values())])
    strips = []
    for kind, indices in rows.items():
        panels = []
        for index in indices:
            sample = evaluation.samples[index]
            pixels = _decode(recipe, sample)
            heat = to_image_frame(
                evidence_map(evaluation.cams[index], positive), *pixels.shape[:2], recipe.spec
            )
            image = _fit(to_colour(pixels, "rgb"), PANEL)
            caption = [
                f"{kind} {Path(sample.path).name}",
                f"truth {recipe.labels[sample.label]}, P={prob[index]:.2f}",
            ]
            _caption(image, caption)
            panels += [image, _fit(overlay(pixels, heat, max_side=PANEL), PANEL)]
        panels += [np.zeros((PANEL, PANEL, 3), np.uint8)] * (2 * columns - len(panels))
        strips.append(np.hstack(panels))
    sheet = np.vstack(strips)
    header = np.zeros((20, sheet.shape[1], 3), np.uint8)
    title = (
        f"{summary['model']}: most confident false negatives (top) and false positives (bottom), "
        f"{summary['evaluated']}, P({recipe.positive}) at balanced threshold {summary['balanced_threshold']}"
    )
    cv2.putText(header, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([header, sheet])


def print_summary(summary: dict[str, Any]) -> None:
    fn, fp = summary["false_negatives"], summary["false_positives"]
    print(f"{summary['model']}, {summary['evaluated']}: {summary['images']} images, ", end="")
    print(f"{summary['positives']} {summary['positive_class']}; T = {summary['temperature']}, ", end="")
    print(f"balanced threshold {summary['balanced_threshold']}")
    print(f"false negatives: {fn['count']} of {summary['positives']}; called {fn['called']}; ", end="")
    print(f"median P {fn['median_p']}; {fn['still_missed_at_screening']} still missed at the screening point")
    print(f"false positives: {fp['count']} of {fp['of']}; truth {fp['truth']}; median P {fp['median_p']}")
    for name, peak in summary["cam_peak"].items():
        print(
            f"  heatmap peak in the top {NEAR_FIELD:.0%}, {name.replace('_', ' ')}: "
            f"{peak['near_field']} of {peak['with_peak']} with a peak ({peak['blank']} blank)"
        )
    for kind in ("worst_false_negatives", "worst_false_positives"):
        print(f"{kind.replace('_', ' ')}: " + "; ".join(f"{c['path']} P={c['p']}" for c in summary[kind]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--cases", type=int, default=WORST_PER_KIND, help="cases of each kind shown")
    parser.add_argument("--sheet", type=Path, help="default: models/<name>/plots/failures.png")
    args = parser.parse_args()
    recipe = load_recipe(args.config)
    # Validated as the product loads it; the dict form is what summarise() reads.
    manifest = read_manifest(REPO / "models" / recipe.name / "model.toml").model_dump()
    evaluation = evaluate(recipe)
    summary, shown = summarise(recipe, manifest, evaluation, args.cases)
    sheet_path = args.sheet or REPO / "models" / recipe.name / "plots" / "failures.png"
    sheet = contact_sheet(recipe, evaluation, summary, shown)
    save_png(np.ascontiguousarray(sheet[:, :, ::-1]), sheet_path)
    size = sheet_path.stat().st_size
    summary["sheet"] = {"path": str(sheet_path), "bytes": size}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print_summary(summary)
        print(f"wrote {sheet_path} ({size // 1024} KB)")


if __name__ == "__main__":
    main()
