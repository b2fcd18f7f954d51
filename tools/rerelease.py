"""Re-release a shipped model with the same weights: temperature and operating points chosen
again by today's release rules, every figure restated, a new version.

    python -m tools.rerelease --config tools/configs/cxr-pneumonia.toml --version 1.1.1

Why: the shipped chest X-ray model chose its thresholds on the clean validation split, and its
balanced point did not transfer to another hospital's films (issue 15). tools/release.py now
chooses under the acquisition shifts of tools/shift_eval.py, but a release needs a training run.
This one needs only the released folder (models/<name>/): the same ONNX files (their bytes and
hashes unchanged, so a repository or a device stores nothing new), the same samples, export check,
INT8 gates and applicability statistics. It rewrites model.toml's temperature, operating points
and metrics (clean and `_shifted`), the ROC and reliability plots and the card (with the per-shift
table). It never changes the manifest's shape: a section the shipped manifest lacks (such as
[robustness], newer than some devices' software) goes into the card only, so every device that
runs the shipped version can install the new one. Not redone: plots/failures.png and the card's
observed failure modes in the recipe's [card] limitations, which quote the old threshold's errors
(`python -m tools.failures` with a runs folder holding the split and this FP32 file, then edit
the recipe's text and run this again).

Before choosing anything it scores the recipe's validation split with the shipped FP32 file at the
shipped temperature and thresholds, and stops unless that reproduces the manifest's own validation
figures: otherwise the split or the weights are not those the release was made from.

Cross-validated recipes choose on out-of-fold predictions, which need the fold models of their
training run: they are refused here (use tools.crossval and tools.release), as is a manifest with
clip findings across input size (they depend on the clip thresholds, and only a release measures
them) and a version that is not above the shipped one (devices never install it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import tomli_w
from rich.console import Console

from edge.compat import tomllib
from edge.inference.calibration import rule_description
from edge.inference.registry import Registry
from edge.sync.releases import is_newer
from tools.recipe import REPO, Recipe, load_recipe
from tools.release import git_commit, write_plots
from tools.release_sets import (
    Choice,
    Predictions,
    choose,
    cv_needs_folds,
    evaluation_sets,
    manifest_operating_points,
    measure_variants,
    report,
    shifted_sets,
)
from tools.robustness import shifts_measured

console = Console()
STAGING = ".rerelease-staging"  # under models/: the same file system, so the swap is two renames
REPRODUCED = ("auc", "balanced_sensitivity", "balanced_specificity", "screening_sensitivity")
"""The shipped validation figures the shipped file must reproduce before anything is chosen."""


def check_reproduces(recipe: Recipe, manifest: dict[str, Any], validation: Predictions, seed: int) -> None:
    shipped = manifest["metrics"]["validation"]
    thresholds = {name: op["threshold"] for name, op in manifest["operating_points"].items()}
    again = report(validation, recipe, manifest["output"]["temperature"], thresholds, seed)
    differ = {k: (shipped.get(k), again.get(k)) for k in REPRODUCED if shipped.get(k) != again.get(k)}
    if differ or again["images"] != shipped["images"]:
        raise SystemExit(
            f"{recipe.name} {manifest['version']}: the shipped FP32 file on today's validation split does "
            f"not reproduce the manifest's validation figures (manifest, now: {differ or 'image count'}): "
            "the split or the weights differ from the release's; nothing was written"
        )


def rereleased(
    manifest: dict[str, Any], recipe: Recipe, sets: dict[str, Predictions], choice: Choice, version: str
) -> dict[str, Any]:
    """The manifest of the new version: what was chosen and measured replaced, the rest kept."""
    out = dict(manifest)
    out["version"] = version
    out["output"] = {**manifest["output"], "temperature": choice.temperature}
    out["operating_points"] = manifest_operating_points(recipe, sets, choice)
    out["metrics"] = choice.metrics
    out["training"] = {**manifest["training"], "released": dt.date.today().isoformat()}
    return out


def lineage_text(previous: dict[str, Any], choice: Choice, sets: dict[str, Predictions]) -> list[str]:
    """The card's note: which weights, what changed, and what the previous version shipped."""
    rule = rule_description("balanced", choice.screening_target, f"the {sets[choice.chosen_on].kind}")
    before = previous["operating_points"]
    return [
        "## Re-release",
        f"The weights, INT8 variants, gates, samples and applicability statistics of {previous['name']} "
        f"{previous['version']}, byte for byte (the same ONNX hashes); made by `tools/rerelease.py` at "
        f"commit `{git_commit()[:12]}`. Only the temperature and the operating points were chosen again, "
        f"on the {sets[choice.chosen_on].kind}, and every figure restated at them.",
        "",
        "| | temperature | balanced threshold | screening threshold | how chosen (balanced) |",
        "|---|---|---|---|---|",
        f"| {previous['version']} | {previous['output']['temperature']:.4f} "
        f"| {before['balanced']['threshold']:.4f} | {before['screening']['threshold']:.4f} "
        f"| {before['balanced'].get('description', '')} |",
        f"| this version | {choice.temperature:.4f} | {choice.thresholds['balanced']:.4f} "
        f"| {choice.thresholds['screening']:.4f} | {rule} |",
        "",
        "A site profile fitted on a site's own cases for the previous version keeps serving this one",
        "(a profile is fitted to weights, and these are the same): the site's calibration, not this",
        "version's, stays in force until the site resets it (`edge models calibrate NAME --reset`).",
        "",
    ]


def replaced_path(out_dir: Path) -> Path:
    """Where the shipped folder waits while the new one is renamed into its place."""
    return out_dir.with_name(f".{out_dir.name}.replaced")


def recover(models_dir: Path, name: str) -> None:
    """After a run stopped between the two renames of `swap_in`: the shipped folder back."""
    out_dir, kept = models_dir / name, replaced_path(models_dir / name)
    if kept.is_dir() and not out_dir.exists():
        kept.rename(out_dir)
    shutil.rmtree(kept, ignore_errors=True)
    shutil.rmtree(models_dir / STAGING, ignore_errors=True)


def swap_in(staged: Path, out_dir: Path) -> None:
    """Two renames on one file system; the shipped folder is deleted only once the new one is
    in its place, and put back if that fails."""
    kept = replaced_path(out_dir)
    out_dir.rename(kept)
    try:
        staged.rename(out_dir)
    except BaseException:
        kept.rename(out_dir)
        raise
    shutil.rmtree(kept)


def rerelease(recipe: Recipe, models_dir: Path, version: str) -> dict[str, Any]:
    """Writes models_dir/<name>/ as `version` (module docstring) and returns its manifest."""
    if recipe.data.get("cv_folds"):
        raise SystemExit(cv_needs_folds(recipe))
    out_dir = models_dir / recipe.name
    recover(models_dir, recipe.name)
    entry = Registry(models_dir).get(recipe.name)  # verifies every variant's hash
    manifest = tomllib.loads((out_dir / "model.toml").read_text())
    if not is_newer(version, manifest["version"]):
        raise SystemExit(
            f"{recipe.name} {manifest['version']} is shipped: {version!r} is not above it, and devices "
            "install only a newer version"
        )
    if "clip_scale" in manifest.get("robustness", {}):
        raise SystemExit(
            f"{recipe.name} records clip findings across input size, which move with its clip "
            "thresholds and only a release measures (tools.release)"
        )
    seed = recipe.raw["seed"]
    fp32 = entry.variant_file("fp32")
    with console.status("the shipped FP32 file on the evaluation sets, clean and under shift..."):
        sets = evaluation_sets(recipe, fp32)
        check_reproduces(recipe, manifest, sets["validation"], seed)
        sets.update(shifted_sets(recipe, sets, seed, fp32))
    choice = choose(recipe, sets, seed)
    int8 = {v: entry.variant_file(v) for v in manifest["variants"] if v != "fp32"}
    measure_variants(recipe, sets, int8, choice, seed)
    new = rereleased(manifest, recipe, sets, choice, version)
    before = {k: v["threshold"] for k, v in manifest["operating_points"].items()}
    console.print(
        f"{manifest['version']} -> {version}: temperature {manifest['output']['temperature']} -> "
        f"{choice.temperature}; thresholds {before} -> {choice.thresholds}"
    )

    from tools import applicability
    from tools.card import write_card

    robustness = {"by_shift": shifts_measured(recipe, sets, choice, seed)}
    if "robustness" in manifest:  # the shape the shipped manifest has, no more
        new["robustness"] = robustness
    # Written into a copy beside the shipped folder and swapped in whole once the product reads
    # it: a failure half way leaves the shipped release as it was, never half old, half new.
    staging = models_dir / STAGING
    staged = staging / recipe.name
    try:
        shutil.copytree(out_dir, staged)
        write_plots(staged / "plots", recipe, sets, choice.temperature)
        (staged / "model.toml").write_text(tomli_w.dumps(new))
        card_from = {**new, "robustness": robustness}  # the card shows the per-shift table either way
        write_card(recipe, card_from, staged, extra=lineage_text(manifest, choice, sets))
        if "applicability" in new:  # the card's table, from the [applicability] kept as it was
            applicability.write_card(recipe, staged)
        Registry(staging).get(recipe.name)  # the product reads what was written
        swap_in(staged, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    console.print(
        "[yellow]not redone[/]: plots/failures.png and the observed failure modes in the recipe's "
        "\\[card] limitations quote the previous threshold (tools.failures)"
    )
    return new


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--version", required=True, help="the new version (above the shipped one)")
    args = parser.parse_args()
    recipe = load_recipe(args.config)
    rerelease(recipe, REPO / "models", args.version)
    console.print(f"[green]re-released[/] {recipe.name} {args.version} into models/{recipe.name}")


if __name__ == "__main__":
    main()
