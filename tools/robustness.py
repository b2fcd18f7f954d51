"""What a release measures beyond its clean figures (issue 15): the held-out set under each
acquisition shift in turn, and, for a model that scores clips, whether a clip's finding survives
another input size. Both go into the manifest's [robustness] and the card; neither chooses anything.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tools.recipe import Recipe
from tools.release_sets import Choice, Predictions, report

MEASURED_AT = "balanced"
COUNTS = (
    "flipping_half_to_4x",
    "flipping_stretched",
    "flipping_stretched_with_profile",
    "largest_spread",
    "mean_spread",
)
"""The sweep's summary kept in the manifest (tools/clip_scale.py names them as ClipStability does)."""


def shifts_measured(
    recipe: Recipe, sets: dict[str, Predictions], choice: Choice, seed: int
) -> dict[str, Any]:
    """[robustness] by_shift of a release: on the holdout split under the shifts where there is
    one, else on the shifted set the thresholds were chosen on (said so)."""
    measured = "holdout_shifted" if "holdout_shifted" in sets else "validation_shifted"
    return by_shift(
        sets[measured],
        recipe,
        choice.temperature,
        choice.thresholds,
        seed,
        chosen_here=measured == choice.chosen_on,
    )


def by_shift(
    shifted: Predictions,
    recipe: Recipe,
    temperature: float,
    thresholds: dict[str, float],
    seed: int,
    chosen_here: bool = False,
) -> dict[str, Any]:
    """Figures per shift of a `<set>_shifted` prediction set (its samples carry `row["shift"]`),
    at the balanced threshold as shipped. `chosen_here`: the threshold was chosen on this very
    set (a cross-validated recipe has no other), which the text then says: its sensitivity and
    specificity flatter; its AUCs do not."""
    names = list(dict.fromkeys(s.row["shift"] for s in shifted.samples))
    shifts = {}
    for name in names:
        rows = [i for i, s in enumerate(shifted.samples) if s.row["shift"] == name]
        subset = Predictions(
            f"{shifted.kind}: {name}",
            [shifted.samples[i] for i in rows],
            shifted.logits[rows],
            shifted.truth[rows],
        )
        figures = report(subset, recipe, temperature, {MEASURED_AT: thresholds[MEASURED_AT]}, seed)
        shifts[name] = {
            "auc": figures["auc"],
            "auc_ci95": figures["auc_ci95"],
            "sensitivity": figures[f"{MEASURED_AT}_sensitivity"],
            "specificity": figures[f"{MEASURED_AT}_specificity"],
            "accuracy": figures[f"{MEASURED_AT}_accuracy"],
        }
    where = shifted.kind + (
        " (the thresholds were chosen on these predictions: sensitivity and specificity are optimistic)"
        if chosen_here
        else ""
    )
    return {"measured_on": where, "operating_point": MEASURED_AT, "shifts": shifts}


def clip_stability(
    models_dir: Path, model: str, variants: list[str], limit: int | None = None
) -> dict[str, dict[str, Any]]:
    """Each variant through tools/clip_scale.py's sweep (the product's own clip path), summarised;
    `limit`: only the first clips (tests)."""
    from edge.config import Settings
    from edge.inference.pool import ModelPool
    from edge.inference.registry import Registry
    from tools.clip_scale import PROFILED, STRETCHED, clips, sweep

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        # The product's defaults, never this machine's config: a release measures the model.
        settings = Settings(data_dir=Path(tmp))
        settings.models.dir = models_dir
        pool = ModelPool(Registry(models_dir), settings, Path(tmp) / "cache")
        paths = clips(limit)
        for variant in variants:
            result = sweep(settings, pool.load_variant(model, variant), paths)
            # Per clip, the sizes (not the stretched views) at which its finding changed.
            at_size = {
                row["clip"]: [k for k in row["flips"] if k not in (STRETCHED, PROFILED)]
                for row in result["clips"]
            }
            out[variant] = {
                "clips": len(result["clips"]),
                **{k: result[k] for k in COUNTS},
                "flips": {clip: sizes for clip, sizes in at_size.items() if sizes},
            }
    return out


def card_lines(robustness: dict[str, Any] | None) -> list[str]:
    """The card's "Under acquisition shift" and "Clip findings across input size" sections."""
    if not robustness:
        return []
    lines: list[str] = []
    check = robustness.get("by_shift")
    if check:
        lines += [
            "## Under acquisition shift",
            f"Measured on: {check['measured_on']}; each shift alone, each image (for a clip model, each",
            f"frame) at the shipped {check['operating_point']} threshold. Synthetic shifts are a floor",
            "for what a new site sees, not a stand-in for an external test set.",
            "",
            "| shift | AUC [95% CI] | sensitivity | specificity | accuracy |",
            "|---|---|---|---|---|",
        ]
        for name, f in check["shifts"].items():
            low, high = f["auc_ci95"]
            lines.append(
                f"| {name} | {f['auc']:.3f} [{low:.3f}, {high:.3f}] | {f['sensitivity']:.3f} | "
                f"{f['specificity']:.3f} | {f['accuracy']:.3f} |"
            )
        lines.append("")
    stability = robustness.get("clip_scale")
    if stability:
        lines += [
            "## Clip findings across input size",
            "Each lung clip through the product's clip path (sector, crop, clip mean, clip threshold)",
            "at 0.5x, 2x and 4x of its size against 1x, and stretched to 3840x2160 without and with the",
            "device profile's `horizontal_stretch`. Target: no clip changes finding between 0.5x and 4x.",
            "The clips are made of frames the model trained on: this measures stability, not accuracy.",
            "",
            "| variant | clips | changed 0.5x-4x | changed, 4K stretched | with profile | "
            "largest / mean spread of P | target |",
            "|---|---|---|---|---|---|---|",
        ]
        for variant, s in stability.items():
            flips = "; ".join(f"{clip} at {', '.join(at)}" for clip, at in s["flips"].items())
            lines.append(
                f"| {variant} | {s['clips']} | {s['flipping_half_to_4x']}{f' ({flips})' if flips else ''} | "
                f"{s['flipping_stretched']} | {s['flipping_stretched_with_profile']} | "
                f"{s['largest_spread']:.3f} / {s['mean_spread']:.3f} | "
                f"{'met' if s['flipping_half_to_4x'] == 0 else '**missed**'} |"
            )
        lines.append("")
    return lines
