"""tools/ensemble_eval.py: members and their ensembles, each calibrated and thresholded on the
validation split as a release would, measured on the holdout, clean and under the shifts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tomli_w

from edge.inference.calibration import fitted_temperature
from edge.inference.postprocess import softmax
from tests.test_tools import make_recipe
from tests.tinymodel import tiny_onnx
from tools import ensemble_eval
from tools.recipe import group_split, read_samples


def _world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """60 patients' films (pneumonia brighter, with noise), a written split, member 0 and
    member-1: real ONNX files that rank the films by brightness with different weights."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        label = "pneumonia" if i % 2 else "normal"
        level = (140 if i % 2 else 110) + rng.normal(0, 25)
        image = np.clip(rng.normal(level, 30, (48, 48)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / f"{i}.png"), image)
        rows.append({"path": f"{i}.png", "class_name": label, "patient": f"p{i}"})
    recipe = make_recipe(tmp_path, rows)
    recipe.raw["augment"] = {"kind": "xray"}
    config = tmp_path / "recipe.toml"
    config.write_bytes(tomli_w.dumps(recipe.raw).encode())
    monkeypatch.setenv("EDGE_TOOLS_RUNS", str(tmp_path / "runs"))
    run = recipe.run_dir()
    (run / "member-1").mkdir(parents=True)
    split = group_split(read_samples(recipe), recipe)  # as tools/train.py writes it (torch-free here)
    lines = ["path,label,group,split"] + [f"{path},x,x,{name}" for path, name in split.items()]
    (run / "split.csv").write_text("\n".join(lines) + "\n")
    tiny_onnx(run / "t-fp32.onnx", weight=1.0, size=32)
    tiny_onnx(run / "member-1" / "t-fp32.onnx", weight=3.0, size=32)
    return config


def test_members_and_their_ensemble_are_judged_on_the_holdout_by_the_release_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _world(tmp_path, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["ensemble_eval", "--config", str(config), "--members", "1"])
    ensemble_eval.main()

    results = json.loads((tmp_path / "runs" / "t" / "ensemble_eval.json").read_text())
    assert list(results) == ["member 0", "member 1", "ensemble of 2 (members 0, 1)"]
    for name, result in results.items():
        assert result["clean"]["images"] == result["shifted"]["images"] // 13, name  # 13 X-ray shifts
        assert 0.5 < result["clean"]["auc"] <= 1.0, name  # brightness separates the classes
        assert set(result["thresholds"]) == {"balanced", "screening"}
        assert result["worst_shift_auc"] <= result["clean"]["auc"] + 0.2
    assert "auc_minus_member_0" not in results["member 0"]
    assert results["member 1"]["auc_minus_member_0"]["clean"][0] == 0.0  # the same ranking
    assert all("_prob" not in result for result in results.values())
    # Both members rank by the same brightness, so their ensemble ranks as they do.
    assert results["ensemble of 2 (members 0, 1)"]["clean"]["auc"] == results["member 0"]["clean"]["auc"]


def test_the_holdout_chooses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _world(tmp_path, monkeypatch)
    recipe = ensemble_eval.load_recipe(config)
    files = ensemble_eval.member_files(recipe, [1])
    val = ensemble_eval.split_logits(recipe, "val", files, 1)
    hold = ensemble_eval.split_logits(recipe, "holdout", files, 2)
    first = ensemble_eval.assess(recipe, val, hold, val["logits"]["member 0"], hold["logits"]["member 0"], 0)
    scrambled = {c: -logits for c, logits in hold["logits"]["member 0"].items()}
    second = ensemble_eval.assess(recipe, val, hold, val["logits"]["member 0"], scrambled, 0)
    assert (first["temperature"], first["thresholds"]) == (second["temperature"], second["thresholds"])
    assert second["clean"]["auc"] == pytest.approx(1 - first["clean"]["auc"], abs=1e-3)
    # As tools/release.py: the temperature is fitted on the validation split under the shifts.
    shifted = [logits for c, logits in val["logits"]["member 0"].items() if c != ensemble_eval.CLEAN]
    expected = fitted_temperature(np.concatenate(shifted), np.tile(val["truth"], len(shifted)))
    assert first["temperature"] == expected
    assert expected != fitted_temperature(val["logits"]["member 0"]["clean"], val["truth"])


def test_differences_are_paired_by_image() -> None:
    rng = np.random.default_rng(2)
    truth = np.arange(200) % 2 == 1
    base = truth + rng.normal(0, 1.0, (14, 200))  # clean row, then 13 shifted copies
    same = ensemble_eval.paired_auc_difference(truth, base, base, rounds=200)
    assert same == {"clean": [0.0, 0.0, 0.0], "shifted": [0.0, 0.0, 0.0]}
    better = ensemble_eval.paired_auc_difference(
        truth, truth + rng.normal(0, 0.3, (14, 200)), base, rounds=200
    )
    for point, low, high in better.values():
        assert 0 < low <= point <= high


def test_an_ensemble_is_the_mean_of_its_members_probabilities() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 2, (50, 3)), rng.normal(0, 2, (50, 3))
    same = ensemble_eval.ensemble([{"clean": a}, {"clean": a}])["clean"]
    np.testing.assert_allclose(softmax(same), softmax(a), atol=1e-6)
    mixed = ensemble_eval.ensemble([{"clean": a}, {"clean": b}])["clean"]
    np.testing.assert_allclose(softmax(mixed), (softmax(a) + softmax(b)) / 2, atol=1e-6)


def test_a_member_not_trained_yet_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _world(tmp_path, monkeypatch)
    recipe = ensemble_eval.load_recipe(config)
    with pytest.raises(SystemExit, match="member-2"):
        ensemble_eval.member_files(recipe, [1, 2])
    monkeypatch.setattr(sys, "argv", ["ensemble_eval", "--config", str(config), "--members", "0"])
    with pytest.raises(SystemExit):
        ensemble_eval.main()
