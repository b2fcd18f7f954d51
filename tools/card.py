"""MODEL_CARD.md from a release's manifest and its recipe (Mitchell et al. 2019 headings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.recipe import Recipe
from tools.robustness import card_lines


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"{value[0]:.3f}-{value[1]:.3f}"
    return str(value)


def write_card(
    recipe: Recipe, manifest: dict[str, Any], out_dir: Path, extra: list[str] | None = None
) -> None:
    """`extra`: lines placed before the limitations (a re-release says what it kept)."""
    card = recipe.raw.get("card", {})
    t = manifest["training"]
    group = recipe.data.get("group_column") or "image"
    cross_validated = bool(recipe.data.get("cv_folds"))
    if cross_validated:
        split_text = [
            f"Split: {t['split']} (seed {t['seed']}). No {group} is in two folds. Tuning (temperature,",
            "thresholds) used the out-of-fold predictions only; there is no separate holdout, so these",
            "figures estimate, but slightly flatter, what a new site will see: validate locally.",
        ]
        gate_basis = (
            "fidelity on all training images; out of fold: each fold's model quantised alike, "
            "on the images it never saw"
        )
        sample_text = "a few training images (the shipped model saw every image; pixels exactly as published)"
    else:
        split_text = [
            f"Split: {t['split']} (seed {t['seed']}). No {group} is on two sides. Tuning (early stopping,",
            "temperature, thresholds, INT8 gate) used the validation split only; the holdout split was",
            "only measured.",
        ]
        gate_basis = "validation"
        sample_text = "a few holdout images (pixels exactly as published)"
    lines = [
        f"# Model card: {manifest['name']} {manifest['version']}",
        "",
        f"**{manifest['title']}.** {card.get('description', '')}",
        "",
        "> Not for clinical use without local validation. Every result is decision support for a",
        "> clinician, never a diagnosis.",
        "",
        "## Intended use",
        card.get("intended_use", ""),
        "",
        "## Data and licence",
        card.get("data", ""),
        "",
        *split_text,
        "",
        "## Model",
        f"A ResNet-style CNN trained from scratch (no pre-trained weights): {t['params']:,} parameters,",
        f"{t['gflops']:.3f} GFLOP per {manifest['input']['shape'][1]}x{manifest['input']['shape'][2]} "
        f"{manifest['input']['colour']} image, a class-activation-map head (heatmaps without gradients).",
        f"Trained {t['epochs_run']} epochs (best {t['best_epoch']}) in {t['train_seconds'] / 60:.0f} min "
        f"on 2 CPU cores with torch {t['torch']}; recipe `{t['recipe']}`, commit `{t['commit'][:12]}`.",
        "",
        "## Variants",
        f"| variant | precision | format | backends | gate (vs FP32, {gate_basis}) |",
        "|---|---|---|---|---|",
    ]
    for name, v in manifest["variants"].items():
        gate = v.get("gate")
        gate_text = (
            "reference"
            if gate is None
            else (
                f"{'passed' if gate['passed'] else 'failed'}: AUC delta {gate['auc_delta']:+.4f}, "
                f"top-1 agreement {gate['agreement']:.2%}" + _out_of_fold_text(gate.get("out_of_fold"))
            )
        )
        lines.append(
            f"| {name} | {v['precision']} | {v['quantization']} | {', '.join(v['backends'])} | {gate_text} |"
        )
    lines += ["", "## Performance", ""]
    keys = sorted({k for values in manifest["metrics"].values() for k in values})
    lines.append("| split | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for split, values in manifest["metrics"].items():
        lines.append(f"| {split} | " + " | ".join(_fmt(values.get(k, "")) for k in keys) + " |")
    lines += [
        "",
        "AUC intervals are 95% percentile bootstrap (1,000 resamples). Probabilities are calibrated by",
        f"temperature scaling (T = {manifest['output']['temperature']:.3f}, fitted where the thresholds were",
        "chosen: see Operating points); ECE uses 15 equal-width bins on top-1 confidence.",
        "",
        *(
            [
                "Rows ending `_shifted` are the same images under each acquisition shift of",
                "tools/shift_eval.py in turn (exposure, contrast, CLAHE, resolution, blur, noise, JPEG,",
                "zoom; for ultrasound gain, speckle, depth and pixel aspect), each scored by a model that",
                "never trained on it: a floor for what a new site sees, not a stand-in for an external",
                "test set (other patients, disease mix and devices shift in ways no transform imitates).",
                "",
            ]
            if any(name.endswith("_shifted") for name in manifest["metrics"])
            else []
        ),
        "![ROC](plots/roc.png) ![Reliability](plots/reliability.png)",
        "",
        "## Operating points",
    ]
    clips = any("clip_threshold" in op for op in manifest["operating_points"].values())
    clip_head = " clip threshold | clip sensitivity | clip specificity |" if clips else ""
    lines += [
        "| name | threshold (calibrated P) | sensitivity (val) | specificity (val) |"
        f"{clip_head} how chosen |",
        "|---|---|---|---|" + ("---|---|---|" if clips else "") + "---|",
    ]
    for name, op in manifest["operating_points"].items():
        clip_cells = (
            f" {op['clip_threshold']:.4f} | {op['clip_sensitivity']:.3f} | {op['clip_specificity']:.3f} |"
            if clips
            else ""
        )
        lines.append(
            f"| {name} | {op['threshold']:.4f} | {op['sensitivity']:.3f} | {op['specificity']:.3f} |"
            f"{clip_cells} {op['description']} |"
        )
    if clips:
        lines += [
            "",
            "A clip's probability is the mean of its frames'; its thresholds are chosen by the same rules",
            "on the per-video means of the validation predictions, and a clip result is judged by them.",
            "They are chosen and measured on the same few videos, so the clip figures are optimistic.",
        ]
    lines += [
        "",
        "A site picks one in its config (`[models] operating_point`), after validating locally.",
        "",
    ]
    lines += card_lines(manifest.get("robustness"))
    lines += extra or []
    lines += ["## Limitations and known failure modes"]
    lines += [f"- {item}" for item in card.get("limitations", [])]
    lines += [
        "",
        "## Samples",
        f"`samples/` holds {sample_text}, for the tests and the on-device parity check.",
        *(
            ["`samples/demo/` holds more holdout images, some as DICOM with synthetic patient attributes."]
            if (out_dir / "samples" / "demo").is_dir()
            else []
        ),
        "Attribution as under Data and licence.",
        "",
    ]
    (out_dir / "MODEL_CARD.md").write_text("\n".join(lines))


def _out_of_fold_text(held_out: dict[str, Any] | None) -> str:
    if not held_out:
        return ""
    return (
        f"; out of fold: AUC {held_out['auc']:.4f} vs FP32 {held_out['auc_reference']:.4f} "
        f"(delta {held_out['auc_delta']:+.4f}), agreement {held_out['agreement']:.2%}"
    )
