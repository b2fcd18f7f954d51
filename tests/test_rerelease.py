"""tools/rerelease.py: a shipped model's operating points chosen again under shift, with the very
same weights, by the release's own rules; refused where it cannot be done honestly."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tomli_w

from edge.compat import tomllib
from edge.inference.registry import Registry
from tests.test_tools import make_recipe
from tests.tinymodel import manifest as tiny_manifest
from tools import shift_eval
from tools.recipe import Recipe

pytest.importorskip("onnxruntime")

VERSION = "0.0.1"


def _shipped(tmp_path: Path) -> tuple[Recipe, Path]:
    """A recipe over synthetic images (brighter is positive, the classes overlap) and a model
    folder released from it the old way: temperature and thresholds on the clean validation."""
    from tools.release_sets import choose, evaluation_sets, manifest_operating_points

    rng = np.random.default_rng(7)
    rows = []
    for index in range(60):
        label = index % 2
        image = np.clip(rng.normal(rng.normal(100 + 30 * label, 20), 12, (24, 24)), 0, 255)
        cv2.imwrite(str(tmp_path / f"{index}.png"), image.astype(np.uint8))
        name = ["normal", "pneumonia"][label]
        rows.append({"path": f"{index}.png", "class_name": name, "patient": f"p{index}"})
    recipe = make_recipe(tmp_path, rows)
    recipe.raw["input"]["shape"] = [1, 8, 8]
    recipe.raw["augment"] = {"kind": "xray"}
    models = tmp_path / "models"
    folder = models / recipe.name
    folder.mkdir(parents=True)
    data = tiny_manifest(folder, int8_weight=1.0, input={"name": "image", **recipe.raw["input"]})
    data["output"]["labels"], data["output"]["positive"] = recipe.labels, recipe.positive
    data["variants"]["fp32"]["quantization"] = "none"  # as a release writes it (the card shows it)
    recipe.raw["release"] = {"choose_on": "clean"}
    sets = evaluation_sets(recipe, folder / data["variants"]["fp32"]["file"])
    old = choose(recipe, sets, recipe.raw["seed"])
    del recipe.raw["release"]
    data["output"]["temperature"] = old.temperature
    data["operating_points"] = manifest_operating_points(recipe, sets, old)
    data["metrics"] = old.metrics
    data["training"] = {
        "recipe": "recipe.toml",
        "data": str(tmp_path),
        "split": "by patient",
        "seed": recipe.raw["seed"],
        "epochs_run": 1,
        "best_epoch": 1,
        "train_seconds": 60.0,
        "params": 2,
        "gflops": 0.0,
        "torch": "none",
        "commit": "0" * 40,
        "released": "2026-11-29",
    }
    (folder / "model.toml").write_text(tomli_w.dumps(data))
    Registry(models).get(recipe.name)  # a valid release
    return recipe, models


def _onnx_bytes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.onnx"))}


def test_a_rerelease_chooses_under_shift_and_keeps_every_weight(tmp_path: Path) -> None:
    from tools.release_sets import choose, evaluation_sets, shifted_sets
    from tools.rerelease import rerelease

    recipe, models = _shipped(tmp_path)
    folder = models / recipe.name
    before_bytes = _onnx_bytes(folder)
    before: dict[str, Any] = tomllib.loads((folder / "model.toml").read_text())

    new = rerelease(recipe, models, "0.0.2")

    assert _onnx_bytes(folder) == before_bytes  # not one weight changed
    assert new["variants"] == before["variants"]
    assert new["training"]["commit"] == before["training"]["commit"]  # the weights' origin
    entry = Registry(models).get(recipe.name)
    assert entry.manifest.version == "0.0.2"
    # Exactly what the release's rules choose on the shifted validation split, computed apart.
    fp32 = folder / before["variants"]["fp32"]["file"]
    sets = evaluation_sets(recipe, fp32)
    sets.update(shifted_sets(recipe, sets, recipe.raw["seed"], fp32))
    expected = choose(recipe, sets, recipe.raw["seed"])
    assert expected.chosen_on == "validation_shifted"
    assert entry.manifest.output.temperature == expected.temperature
    for name, threshold in expected.thresholds.items():
        assert entry.manifest.operating_points[name].threshold == threshold
    assert "under 13 acquisition shifts" in new["operating_points"]["balanced"]["description"]
    assert {"validation", "holdout", "validation_shifted", "holdout_shifted", "holdout_int8"} <= set(
        new["metrics"]
    )
    # The shipped manifest had no [robustness] (older devices refuse it): the shape is kept, so
    # every device that runs 0.0.1 installs 0.0.2; the per-shift table is in the card.
    assert set(new) == set(before)
    card = (folder / "MODEL_CARD.md").read_text()
    assert "## Under acquisition shift" in card
    for shift in shift_eval.XRAY:
        assert f"| {shift} |" in card
    assert "# Model card: t 0.0.2" in card
    assert "## Re-release" in card
    assert before["operating_points"]["balanced"]["description"] in card  # what 0.0.1 chose on
    assert f"{expected.thresholds['balanced']:.4f}" in card
    assert (folder / "plots" / "roc.png").is_file()

    # Once a manifest has [robustness], a re-release restates it at its own choices.
    (folder / "model.toml").write_text(tomli_w.dumps({**new, "robustness": {}}))
    again = rerelease(recipe, models, "0.0.3")
    assert list(again["robustness"]["by_shift"]["shifts"]) == list(shift_eval.XRAY)
    assert Registry(models).get(recipe.name).manifest.robustness is not None


def test_a_rerelease_refuses_other_weights_the_same_version_and_cross_validated_recipes(
    tmp_path: Path,
) -> None:
    from tools.rerelease import rerelease

    recipe, models = _shipped(tmp_path)
    folder = models / recipe.name
    for not_above in (VERSION, "0.0.0", "next"):  # devices install only a newer version
        with pytest.raises(SystemExit, match="not above it"):
            rerelease(recipe, models, not_above)

    # The manifest's figures are not what this file gives on this split: other weights or split.
    data = tomllib.loads((folder / "model.toml").read_text())
    data["metrics"]["validation"]["auc"] = round(data["metrics"]["validation"]["auc"] - 0.01, 4)
    (folder / "model.toml").write_text(tomli_w.dumps(data))
    written = (folder / "model.toml").read_bytes()
    with pytest.raises(SystemExit, match="does not reproduce"):
        rerelease(recipe, models, "0.0.2")
    assert (folder / "model.toml").read_bytes() == written  # nothing was written

    # Clip findings across input size move with the clip thresholds: only a release measures them.
    data["metrics"]["validation"]["auc"] = round(data["metrics"]["validation"]["auc"] + 0.01, 4)
    stable = dict.fromkeys(
        ("flipping_half_to_4x", "flipping_stretched", "flipping_stretched_with_profile"), 0
    )
    data["robustness"] = {
        "clip_scale": {"fp32": {"clips": 1, **stable, "largest_spread": 0.0, "mean_spread": 0.0}}
    }
    (folder / "model.toml").write_text(tomli_w.dumps(data))
    with pytest.raises(SystemExit, match="clip findings"):
        rerelease(recipe, models, "0.0.2")

    recipe.raw["data"]["cv_folds"] = 5
    with pytest.raises(SystemExit, match="cross-validated"):
        rerelease(recipe, models, "0.0.2")


def test_a_rerelease_that_fails_half_way_leaves_the_shipped_folder_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tools.card
    from tools.rerelease import STAGING, rerelease

    recipe, models = _shipped(tmp_path)
    folder = models / recipe.name
    shipped = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def card_fails(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    # The manifest and plots are written before the card: all of them must stay unseen.
    monkeypatch.setattr(tools.card, "write_card", card_fails)
    with pytest.raises(OSError, match="No space"):
        rerelease(recipe, models, "0.0.2")
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == shipped
    assert not (models / STAGING).exists()
    assert Registry(models).names() == [recipe.name]


def test_the_swap_and_a_run_stopped_half_way_through_it(tmp_path: Path) -> None:
    from tools.rerelease import recover, replaced_path, swap_in

    models = tmp_path / "models"
    shipped, staged = models / "m", models / ".rerelease-staging" / "m"
    for folder, text in ((shipped, "shipped"), (staged, "new")):
        folder.mkdir(parents=True)
        (folder / "model.toml").write_text(text)
    swap_in(staged, shipped)
    assert (shipped / "model.toml").read_text() == "new"
    assert not replaced_path(shipped).exists()
    # Stopped between the two renames (power cut): the next run puts the shipped folder back.
    shipped.rename(replaced_path(shipped))
    recover(models, "m")
    assert (shipped / "model.toml").read_text() == "new"
    assert not replaced_path(shipped).exists()


def test_a_failed_second_rename_restores_the_shipped_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tools.rerelease import replaced_path, swap_in

    shipped, staged = tmp_path / "m", tmp_path / "staged"
    for folder, text in ((shipped, "shipped"), (staged, "new")):
        folder.mkdir()
        (folder / "model.toml").write_text(text)
    original = Path.rename

    def rename(self: Path, target: Any) -> Path:
        if self == staged:
            raise OSError(5, "Input/output error")
        return original(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="Input/output"):
        swap_in(staged, shipped)
    assert (shipped / "model.toml").read_text() == "shipped"
    assert not replaced_path(shipped).exists()
