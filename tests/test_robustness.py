"""What a release measures beyond its clean figures (tools/robustness.py): per-shift figures at the
shipped threshold, the clip findings across input size through the product's clip path, and how
both reach the manifest, the card and `edge models show`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from rich.console import Console

from edge.compat import tomllib
from edge.inference.registry import Registry, Robustness
from tests.test_tools import make_recipe
from tools.recipe import Sample
from tools.release_sets import Predictions, report
from tools.robustness import by_shift, card_lines, clip_stability

REPO = Path(__file__).resolve().parents[1]


def _shifted_predictions(shifts: list[str], per_shift: int, seed: int = 3) -> Predictions:
    rng = np.random.default_rng(seed)
    samples, logits, truth = [], [], []
    for k, name in enumerate(shifts):
        labels = np.arange(per_shift) % 2
        # The later the shift, the worse the model separates the classes.
        score = labels * (2.0 - k) + rng.normal(0, 1, per_shift)
        for i, label in enumerate(labels):
            samples.append(Sample(f"{i}.png", int(label), f"p{i} | {name}", {"shift": name}))
        logits.append(np.stack([np.zeros(per_shift), score], axis=1))
        truth.append(labels)
    return Predictions(
        "holdout split under 2 acquisition shifts", samples, np.concatenate(logits), np.concatenate(truth)
    )


def test_each_shift_is_measured_alone_at_the_shipped_balanced_threshold(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, [])
    shifted = _shifted_predictions(["blur", "JPEG quality 25"], 60)
    thresholds = {"balanced": 0.42, "screening": 0.1}

    check = by_shift(shifted, recipe, 1.3, thresholds, seed=0)

    assert check["measured_on"] == shifted.kind
    assert check["operating_point"] == "balanced"
    assert list(check["shifts"]) == ["blur", "JPEG quality 25"]  # in the order they were applied
    for k, name in enumerate(check["shifts"]):
        rows = slice(60 * k, 60 * (k + 1))
        alone = Predictions(name, shifted.samples[rows], shifted.logits[rows], shifted.truth[rows])
        expected = report(alone, recipe, 1.3, {"balanced": 0.42}, seed=0)
        figures = check["shifts"][name]
        assert figures["auc"] == expected["auc"]
        assert figures["auc_ci95"] == expected["auc_ci95"]
        assert figures["sensitivity"] == expected["balanced_sensitivity"]
        assert figures["specificity"] == expected["balanced_specificity"]
        assert figures["accuracy"] == expected["balanced_accuracy"]
    assert check["shifts"]["JPEG quality 25"]["auc"] < check["shifts"]["blur"]["auc"]
    Robustness.model_validate({"by_shift": check})  # the manifest's schema takes it as written


def test_the_card_and_models_show_state_the_checks_and_a_missed_target_plainly() -> None:
    from edge.cli.reports import robustness_lines

    stability = {
        "clips": 8,
        "flipping_half_to_4x": 1,
        "flipping_stretched": 4,
        "flipping_stretched_with_profile": 0,
        "largest_spread": 0.088,
        "mean_spread": 0.027,
        "flips": {"lung-regular-alines.mp4": ["2x", "4x"]},
    }
    steady = {**stability, "flipping_half_to_4x": 0, "flips": {}}
    shifts = {
        "blur": {
            "auc": 0.99,
            "auc_ci95": [0.98, 1.0],
            "sensitivity": 0.97,
            "specificity": 0.93,
            "accuracy": 0.96,
        },
        "CLAHE": {
            "auc": 0.95,
            "auc_ci95": [0.93, 0.97],
            "sensitivity": 0.99,
            "specificity": 0.81,
            "accuracy": 0.9,
        },
    }
    robustness = {
        "by_shift": {"measured_on": "holdout split", "operating_point": "balanced", "shifts": shifts},
        "clip_scale": {"int8-qop": stability, "fp32": steady},
    }
    # Through TOML, as the manifest stores it.
    stored = tomllib.loads(tomli_w.dumps({"robustness": robustness}))["robustness"]

    card = "\n".join(card_lines(stored))
    assert "| CLAHE | 0.950 [0.930, 0.970] | 0.990 | 0.810 | 0.900 |" in card
    assert (
        "| int8-qop | 8 | 1 (lung-regular-alines.mp4 at 2x, 4x) | 4 | 0 | 0.088 / 0.027 | **missed** |"
        in card
    )
    assert "| fp32 | 8 | 0 | 4 | 0 | 0.088 / 0.027 | met |" in card
    assert card_lines(None) == []
    assert card_lines({}) == []

    shown = robustness_lines(Robustness.model_validate(stored))
    assert "lowest AUC 0.950 (CLAHE); lowest specificity at balanced 0.810 (CLAHE)" in shown[0]
    assert shown[1].startswith("clip findings across input size (int8-qop): 1 of 8 clips change")
    assert robustness_lines(None) == []


def test_clip_stability_runs_the_released_folder_through_the_clip_path(tmp_path: Path) -> None:
    """The summary a lung release writes: the shipped model's first clip through the product."""
    pytest.importorskip("onnxruntime")
    from edge.cli.reports import print_model

    result = clip_stability(REPO / "models", "us-lung", ["fp32"], limit=1)

    summary = result["fp32"]
    assert summary["clips"] == 1
    assert 0 <= summary["flipping_half_to_4x"] <= 1
    assert 0 <= summary["flipping_stretched"] <= 1
    assert 0 <= summary["largest_spread"] < 1
    assert summary["mean_spread"] == summary["largest_spread"]
    assert all(set(at) <= {"0.5x", "2x", "4x"} for at in summary["flips"].values())
    assert bool(summary["flips"]) == bool(summary["flipping_half_to_4x"])
    # A manifest carrying it loads, and `edge models show` prints it.
    entry = Registry(REPO / "models").get("us-lung")
    manifest = entry.manifest.model_copy(
        update={"robustness": Robustness.model_validate({"clip_scale": result})}
    )
    out = io.StringIO()
    print_model(Console(file=out, width=200), type(entry)(manifest, entry.folder), {})
    assert "clip findings across input size (fp32): " in out.getvalue()
