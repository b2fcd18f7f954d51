"""The training tools' pure parts (split, augmentation, calibration reader) and, where torch is
installed (`pip install -e '.[tools]'`), a smoke run of the network and its ONNX export."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tools.augment import augment
from tools.recipe import Recipe, group_split, read_samples


def make_recipe(tmp_path: Path, rows: list[dict[str, str]], group_column: str = "patient") -> Recipe:
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "class_name", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    raw = {
        "name": "t",
        "seed": 3,
        "data": {
            "root": str(tmp_path),
            "labels_csv": "labels.csv",
            "path_column": "path",
            "label_column": "class_name",
            "labels": ["normal", "pneumonia"],
            "positive": "pneumonia",
            "group_column": group_column,
            "val_fraction": 0.2,
            "holdout_fraction": 0.2,
        },
        "input": {
            "shape": [1, 32, 32],
            "colour": "gray",
            "resize": "stretch",
            "scale": 1 / 255,
            "mean": [0.5],
            "std": [0.25],
        },
    }
    return Recipe(raw, tmp_path / "recipe.toml")


def circle_images(folder: Path, count: int, seed: int) -> list[dict[str, str]]:
    """`count` 32x32 noise PNGs in `folder`, every other one with a bright disc ("pneumonia"),
    as labels.csv rows."""
    import cv2

    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        label = "pneumonia" if index % 2 else "normal"
        image = rng.integers(0, 60, (32, 32), dtype=np.uint8)
        if label == "pneumonia":
            cv2.circle(image, (16, 16), 8, 220, -1)
        cv2.imwrite(str(folder / f"{index}.png"), image)
        rows.append({"path": f"{index}.png", "class_name": label, "patient": ""})
    return rows


def test_group_split_keeps_patients_whole_and_classes_balanced(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for patient in range(300):
        label = "pneumonia" if patient % 4 else "normal"
        for image in range(int(rng.integers(1, 5))):
            rows.append({"path": f"{patient}-{image}.png", "class_name": label, "patient": f"p{patient}"})
    rows.append({"path": "x.png", "class_name": "bacteria", "patient": "p999"})  # unknown label: dropped
    recipe = make_recipe(tmp_path, rows)
    samples = read_samples(recipe)
    assert len(samples) == len(rows) - 1
    split = group_split(samples, recipe)
    by_patient: dict[str, set[str]] = {}
    for sample in samples:
        by_patient.setdefault(sample.group, set()).add(split[sample.path])
    assert all(len(sides) == 1 for sides in by_patient.values())
    for name, fraction in (("val", 0.2), ("holdout", 0.2), ("train", 0.6)):
        members = [s for s in samples if split[s.path] == name]
        assert abs(len(members) / len(samples) - fraction) < 0.05
        share = np.mean([s.label for s in members])
        assert abs(share - 0.75) < 0.08  # each split keeps the class mix
    assert group_split(samples, recipe) == split  # seeded: the same every time


def test_augment_keeps_shape_dtype_and_never_flips_xrays() -> None:
    rng = np.random.default_rng(1)
    image = np.zeros((64, 64), np.uint8)
    image[:, :16] = 255  # a bright band on the left must stay on the left
    params = {
        "kind": "xray",
        "rotate_deg": 7,
        "scale": [0.9, 1.1],
        "translate": 0.05,
        "contrast": [0.8, 1.2],
        "brightness": 0.08,
        "gamma": [0.8, 1.25],
        "hflip": False,
    }
    for _ in range(50):
        out = augment(image, params, rng)
        assert out.shape == image.shape
        assert out.dtype == np.uint8
        assert out[:, :20].mean() > out[:, 44:].mean()


def test_ultrasound_augment() -> None:
    rng = np.random.default_rng(2)
    image = np.full((48, 48, 3), 120, np.uint8)
    params = {"kind": "ultrasound", "gain": [0.8, 1.2], "speckle": 0.2, "depth_crop": 0.2, "hflip": True}
    out = augment(image, params, rng)
    assert out.shape == image.shape
    assert out.std() > 0  # speckle added texture


def test_calibration_reader_rewinds() -> None:
    pytest.importorskip("onnxruntime.quantization")
    from tools.quantize import ImageReader

    reader = ImageReader(np.zeros((40, 1, 8, 8), np.float32), batch=16)
    shapes = []
    while (batch := reader.get_next()) is not None:
        shapes.append(batch["image"].shape[0])
    assert shapes == [16, 16, 8]
    reader.rewind()
    assert reader.get_next() is not None
    default = ImageReader(np.zeros((7, 1, 8, 8), np.float32))  # what quantize() uses
    sizes = {b["image"].shape[0] for b in iter(default.get_next, None)}
    assert sizes == {1}  # equal batches: the histogram calibrators cannot stack ragged ones


def test_network_exports_to_onnx_with_the_same_logits(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="training tools need the tools extra")
    pytest.importorskip("onnxscript")
    from tools.nets import CamNet
    from tools.recipe import run_onnx
    from tools.train import export_onnx

    recipe = make_recipe(tmp_path, [])
    recipe.raw["net"] = {"widths": [4, 8, 8, 8, 8], "blocks": [1, 1, 1, 1]}
    net = CamNet(1, 2, [4, 8, 8, 8, 8], [1, 1, 1, 1]).eval()
    logits, cam = net(torch.zeros(2, 1, 32, 32))
    assert logits.shape == (2, 2)
    assert cam.shape == (2, 2, 1, 1)
    path = tmp_path / "net.onnx"
    export_onnx(net, recipe, path)
    batch = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(batch))[0].numpy()
    np.testing.assert_allclose(run_onnx(path, batch), expected, atol=1e-4)


def test_shipped_threshold_rounds_down_to_four_decimals() -> None:
    from edge.inference.calibration import shipped_threshold

    assert shipped_threshold(0.23138) == 0.2313  # rounding to nearest gave 0.2314: a lost case
    assert shipped_threshold(0.11806) == 0.118
    assert shipped_threshold(0.2314) == 0.2314  # already on the grid: unchanged
    assert shipped_threshold(0.0) == 0.0
    for value in np.random.default_rng(5).uniform(0, 1, 2000):
        shipped = shipped_threshold(float(value))
        assert shipped <= value < shipped + 1e-4
        assert round(shipped, 4) == shipped


def test_operating_points_state_the_figures_of_the_shipped_threshold(tmp_path: Path) -> None:
    """The manifest's threshold and temperature, fed to the product's decision rule, must give
    exactly the sensitivity and specificity written beside them (and in the metrics table)."""
    from edge.inference.postprocess import decide
    from tools.release_sets import Predictions, operating_point_entries, operating_points, report

    recipe = make_recipe(tmp_path, [])
    # One cancer sits at P = 0.23138, the top of Youden's range (0.23, 0.23138]: rounding to
    # 0.2314 would miss it; the shipped threshold is the range's middle, floored (0.2306).
    positives = [0.9, 0.8, 0.7, 0.6, 0.23138]
    negatives = [0.05, 0.1, 0.15, 0.2, 0.22, 0.23, 0.3]
    prob = np.array(positives + negatives)
    temperature = 1.2345
    logits = np.stack([np.zeros_like(prob), np.log(prob / (1 - prob)) * temperature], axis=1)
    truth = np.array([1] * len(positives) + [0] * len(negatives))
    validation = Predictions("validation", [], logits, truth)

    thresholds, target = operating_points(validation, recipe, temperature)
    metrics = report(validation, recipe, temperature, thresholds, seed=0)
    entries = operating_point_entries(thresholds, metrics, target)
    for name, entry in entries.items():
        assert round(entry["threshold"], 4) == entry["threshold"]
        found = np.array(
            [
                decide(row, recipe.labels, recipe.positive, temperature, entry["threshold"], name).finding
                == recipe.positive
                for row in logits
            ]
        )
        sensitivity = found[truth == 1].mean()
        specificity = (~found[truth == 0]).mean()
        assert entry["sensitivity"] == metrics[f"{name}_sensitivity"] == round(sensitivity, 4)
        assert entry["specificity"] == metrics[f"{name}_specificity"] == round(specificity, 4)
    assert entries["balanced"]["threshold"] == 0.2306
    assert entries["balanced"]["sensitivity"] == 1.0  # the edge case is kept, not lost
    assert entries["screening"]["threshold"] <= entries["balanced"]["threshold"]


def test_near_duplicate_groups_join_and_flag_conflicts() -> None:
    from tools.dedup import components, duplicate_groups

    assert components(["c", "a", "b", "d"], [("c", "b"), ("b", "a"), ("x", "d")]) == {
        "a": "a",
        "b": "a",
        "c": "a",
        "d": "d",
    }
    groups = {"p1-a": "p1", "p1-b": "p1", "p2-a": "p2", "p3-a": "p3", "p4-a": "p4", "p4-b": "p4"}
    labels = {"p1-a": "benign", "p1-b": "benign", "p2-a": "benign", "p3-a": "malignant"}
    labels |= {"p4-a": "normal", "p4-b": "benign"}  # one patient, two labels: not a conflict
    joined, conflicting = duplicate_groups(groups, labels, [("p1-b", "p2-a"), ("p2-a", "p3-a")])
    # p1's other image follows it into the joined group; p4 stays alone.
    assert joined == {"p1-a": "p1", "p1-b": "p1", "p2-a": "p1", "p3-a": "p1", "p4-a": "p4", "p4-b": "p4"}
    # Conflicts are judged on the near-duplicate component itself, not on the patient.
    assert conflicting == {"p1-b", "p2-a", "p3-a"}


def test_near_duplicates_stay_in_one_fold_and_conflicts_are_dropped(tmp_path: Path) -> None:
    from tools.recipe import NEAR_DUPLICATE_GROUP, group_folds

    rows = [
        {"path": f"{i}.png", "class_name": "pneumonia" if i % 3 else "normal", "patient": ""}
        for i in range(60)
    ]
    pairs = [(f"{i}.png", f"{i + 1}.png") for i in range(0, 30, 2) if (i % 3 != 0) == ((i + 1) % 3 != 0)]
    pairs += [("0.png", "1.png")]  # normal vs pneumonia: a conflicting pair
    with (tmp_path / "dups.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path_a", "label_a", "path_b", "label_b", "corr16", "sift_inliers"])
        writer.writerows([a, "", b, "", "0.99", "100"] for a, b in pairs)
    recipe = make_recipe(tmp_path, rows, group_column=NEAR_DUPLICATE_GROUP)
    recipe.raw["data"] |= {"near_duplicates": "dups.csv", "conflicting_duplicates": "exclude"}
    samples = read_samples(recipe)
    assert {s.path for s in samples} == {r["path"] for r in rows} - {"0.png", "1.png"}
    assert all(s.row[NEAR_DUPLICATE_GROUP] == s.group for s in samples)
    folds = group_folds(samples, recipe, 5)
    linked = [(a, b) for a, b in pairs if a in folds and b in folds]
    assert len(linked) == len(pairs) - 1
    assert all(folds[a] == folds[b] for a, b in linked)
    recipe.raw["data"]["conflicting_duplicates"] = "keep"
    assert len(read_samples(recipe)) == len(rows)


def test_near_duplicate_rule_finds_a_reannotated_copy_but_not_another_image() -> None:
    import cv2

    from tools.dedup import near_duplicate_pairs

    rng = np.random.default_rng(7)

    def scene(seed: int) -> np.ndarray:
        r = np.random.default_rng(seed)
        base = cv2.GaussianBlur(r.uniform(0, 255, (256, 256)).astype(np.float32), (0, 0), 6)
        base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
        for _ in range(30):
            cv2.circle(
                base, (int(r.integers(20, 236)), int(r.integers(20, 236))), int(r.integers(3, 12)), 255, -1
            )
        return base.astype(np.uint8)

    original = scene(1)
    speckled = np.clip(original * rng.gamma(20, 1 / 20, original.shape), 0, 255).astype(np.uint8)
    annotated = cv2.resize(original[8:248, 8:248], (256, 256))  # re-cropped and re-scaled
    cv2.putText(annotated, "RT 5", (20, 230), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2)
    other = scene(2)
    pairs = near_duplicate_pairs(["o", "s", "a", "x"], [original, speckled, annotated, other])
    found = {(p.a, p.b) for p in pairs}
    assert {("o", "s"), ("o", "a")} <= found
    assert not any("x" in pair for pair in found)


def test_a_cross_validated_int8_gate_measures_each_fold_on_unseen_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train two tiny folds and the final model, quantise: gate.json holds the shipped model's
    fidelity and the out-of-fold comparison (each fold's INT8 against its FP32 on its held-out
    images, checked against the logits training recorded), and the manifest schema takes it."""
    pytest.importorskip("torch")
    import json
    import os
    import subprocess
    import sys

    import tomli_w

    from edge.inference.registry import Gate
    from tools.release import _without_none

    recipe = make_recipe(tmp_path, circle_images(tmp_path, 32, seed=1), group_column="")
    recipe.raw["data"].update(cv_folds=2)
    recipe.raw.update(
        net={"widths": [4, 8], "blocks": [1]},
        augment={
            "kind": "xray",
            "rotate_deg": 0.0,
            "scale": [1.0, 1.0],
            "translate": 0.0,
            "contrast": [1.0, 1.0],
            "brightness": 0.0,
            "gamma": [1.0, 1.0],
            "hflip": False,
        },
        train={
            "epochs": 2,
            "batch_size": 8,
            "lr": 0.01,
            "weight_decay": 0.0,
            "warmup_epochs": 0,
            "class_weighting": "balanced",
        },
    )
    config = tmp_path / "recipe.toml"
    config.write_text(tomli_w.dumps(recipe.raw))
    env = {**os.environ, "EDGE_TOOLS_RUNS": str(tmp_path / "runs")}
    for module, extra in (("tools.crossval", []), ("tools.quantize", ["--calibration-images", "8"])):
        subprocess.run(
            [sys.executable, "-m", module, "--config", str(config), *extra],
            check=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
        )
    gates = json.loads((tmp_path / "runs" / "t" / "gate.json").read_text())
    for name in ("int8-qdq", "int8-qop"):
        held_out = gates[name]["out_of_fold"]
        assert held_out["images"] == 32  # every image, each predicted by the fold that never saw it
        assert 0 <= held_out["accuracy"] <= 1
        assert 0 <= held_out["agreement"] <= 1
        # As the release writes it: unmeasured fields (None) left out, TOML having no null.
        assert (
            Gate(
                **{
                    k: v
                    for k, v in _without_none(gates[name]).items()
                    if k not in ("file", "method", "calibration_images", "bytes")
                }
            ).out_of_fold
            is not None
        )


def test_failures_picks_the_most_confident_errors_at_the_threshold() -> None:
    from tools.failures import errors_at_threshold, worst_distinct

    is_positive = np.array([True, True, True, False, False, False])
    prob = np.array([0.5, 0.1, 0.3, 0.5, 0.9, 0.2])
    missed, false_alarms = errors_at_threshold(is_positive, prob, 0.5)
    assert missed.tolist() == [1, 2]  # P == threshold is a positive call, as in the product
    assert false_alarms.tolist() == [4, 3]  # most confident first
    groups = ["a", "b", "b", "c", "d", "d"]
    assert worst_distinct(np.array([1, 2, 0]), groups, 5) == [1, 0]  # 2 is a copy of 1
    assert worst_distinct(np.array([4, 3, 5]), groups, 1) == [4]


def test_failures_locates_the_heatmap_peak_in_the_near_field() -> None:
    from tools.failures import near_field_share, peak_depth

    heat = np.zeros((10, 10), np.float32)
    assert peak_depth(heat) is None  # blank: nothing argues for the class
    heat[1, 7] = 1.0
    assert peak_depth(heat) == 0.1
    heat[6, 2] = 2.0
    assert peak_depth(heat) == 0.6
    assert near_field_share([0.0, 0.1, 0.2, 0.6, None]) == {"near_field": 2, "with_peak": 4, "blank": 1}


def test_failures_summary_counts_errors_and_where_their_heatmaps_peak(tmp_path: Path) -> None:
    from tools.failures import Evaluation, summarise
    from tools.recipe import Sample

    recipe = make_recipe(tmp_path, [])
    truth = [1, 1, 1, 0, 0]
    logits = np.array([[0.0, 3.0], [2.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], np.float32)
    cams = np.zeros((5, 2, 5, 5), np.float32)
    cams[0, 1, 3, 2] = 1.0  # hit: evidence deep in the image
    cams[1, 1, 0, 4] = 1.0  # miss: evidence in the top row (near field)
    cams[3, 1, 2, 2] = 1.0  # false alarm: evidence mid-image; 2 and 4 have none (blank)
    samples = [Sample(f"{i}.png", label, f"g{i}", {}) for i, label in enumerate(truth)]
    evaluation = Evaluation("test", samples, logits, cams, [(40, 40)] * 5)
    manifest = {
        "name": "t",
        "version": "1.0.0",
        "output": {"temperature": 1.0},
        "operating_points": {"balanced": {"threshold": 0.5}, "screening": {"threshold": 0.2}},
    }
    summary, shown = summarise(recipe, manifest, evaluation)
    assert shown == {"FN": [1, 2], "FP": [3]}  # P(pneumonia) 0.12 is a worse miss than 0.27
    assert summary["false_negatives"]["count"] == 2
    assert summary["false_negatives"]["called"] == {"normal": 2}
    assert summary["false_negatives"]["still_missed_at_screening"] == 1
    assert summary["false_positives"]["truth"] == {"normal": 1}
    peaks = summary["cam_peak"]
    assert peaks["false_negatives"] == {"images": 2, "near_field": 1, "with_peak": 1, "blank": 1}
    assert peaks["true_positives"] == {"images": 1, "near_field": 0, "with_peak": 1, "blank": 0}
    assert peaks["false_positives"]["near_field"] == 0
    assert [case["path"] for case in summary["worst_false_negatives"]] == ["1.png", "2.png"]


def test_clip_operating_points_sit_beside_the_frame_ones() -> None:
    from edge.inference.registry import OperatingPoint
    from tools.release_sets import operating_point_entries

    frame = {"balanced_sensitivity": 0.9, "balanced_specificity": 0.8}
    frame |= {"screening_sensitivity": 0.95, "screening_specificity": 0.6}
    clip = {"balanced_sensitivity": 0.875, "balanced_specificity": 0.897}
    clip |= {"screening_sensitivity": 1.0, "screening_specificity": 0.759}
    entries = operating_point_entries(
        {"balanced": 0.7155, "screening": 0.0306},
        frame,
        0.95,
        clips=({"balanced": 0.1748, "screening": 0.0518}, clip),
    )
    assert entries["balanced"]["clip_threshold"] == 0.1748
    assert entries["screening"]["clip_sensitivity"] == 1.0
    assert OperatingPoint(**entries["balanced"]).threshold_for_clips == 0.1748
    without = operating_point_entries({"balanced": 0.5, "screening": 0.2}, frame, 0.95)
    assert "clip_threshold" not in without["balanced"]
    assert OperatingPoint(**without["balanced"]).threshold_for_clips == 0.5  # frames' threshold


def test_a_failed_out_of_fold_check_fails_the_whole_gate() -> None:
    from tools.quantize import add_out_of_fold

    gates = {"int8-qdq": {"passed": True}, "int8-qop": {"passed": True}}
    add_out_of_fold(gates, {"qdq": {"passed": False, "agreement": 0.97}, "qop": {"passed": True}})
    assert gates["int8-qdq"]["passed"] is False  # fidelity passed, unseen images did not: not shipped
    assert gates["int8-qdq"]["out_of_fold"]["agreement"] == 0.97
    assert gates["int8-qop"]["passed"] is True


def test_the_cpu_int8_format_has_7_bit_weights_and_tensorrts_qdq_keeps_8(tmp_path: Path) -> None:
    """QOperator (served by ONNX Runtime on a CPU) is quantised with reduce_range: x86 CPUs
    without VNNI saturate full-range u8s8 products (measured: agreement with FP32 0.959 instead
    of 0.997 on cxr-pneumonia). QDQ, TensorRT's, keeps all 8 bits of each weight."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tools.quantize import quantize

    rng = np.random.default_rng(3)
    weights = numpy_helper.from_array(rng.normal(size=(6, 1, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["features"]),
            helper.make_node("Relu", ["features"], ["logits"]),
        ],
        "conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 6, 6, 6])],
        [weights],
    )
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    prepared = tmp_path / "prep.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    calibration = rng.normal(size=(8, 1, 8, 8)).astype(np.float32)
    widest = {}
    for fmt in ("qop", "qdq"):
        out = tmp_path / f"{fmt}.onnx"
        quantize(prepared, out, calibration, fmt, "minmax")
        int8 = [
            numpy_helper.to_array(t)
            for t in onnx.load(str(out)).graph.initializer
            if t.data_type == TensorProto.INT8 and t.dims and len(t.dims) == 4
        ]
        assert len(int8) == 1  # the convolution's weights
        widest[fmt] = int(np.abs(int8[0].astype(np.int32)).max())
    assert widest["qop"] <= 64
    assert widest["qdq"] == 127


@pytest.mark.parametrize("cross_validated", [False, True])
def test_int8_here_compares_a_requantised_model_with_fp32_on_this_cpu(
    tmp_path: Path, cross_validated: bool
) -> None:
    """tools/int8_here.py on a tiny recipe: the requantised variants are measured against FP32
    on the recipe's validation images (every image of a cross-validated recipe, as its gate);
    a shipped variant that is absent is not listed."""
    import json
    import subprocess
    import sys

    import onnx
    import tomli_w
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    recipe = make_recipe(tmp_path, circle_images(tmp_path, 40, seed=2), group_column="")
    if cross_validated:  # as us-breast and us-lung: no validation split, folds instead
        del recipe.raw["data"]["val_fraction"], recipe.raw["data"]["holdout_fraction"]
        recipe.raw["data"]["cv_folds"] = 2
    (tmp_path / "recipe.toml").write_text(tomli_w.dumps(recipe.raw))
    initializers = [
        numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(4, 2)).astype(np.float32), "fc"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["features"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["features"], ["relu"]),
            helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "fc"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializers,
    )
    models = tmp_path / "models"
    (models / "t").mkdir(parents=True)
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        str(models / "t" / "t-fp32.onnx"),
    )
    out = tmp_path / "report.json"
    subprocess.run(
        [
            *(sys.executable, "-m", "tools.int8_here", "--config", str(tmp_path / "recipe.toml")),
            *("--models-dir", str(models), "--calibration-images", "8", "--json", str(out)),
            *("--keep", str(tmp_path / "kept")),
        ],
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
    )
    report = json.loads(out.read_text())
    assert report["cpu"]
    assert sorted(report["variants"]) == ["requantised int8-qdq", "requantised int8-qop"]
    assert report["images"] == (
        40
        if cross_validated
        else sum(1 for v in group_split(read_samples(recipe), recipe).values() if v == "val")
    )
    for row in report["variants"].values():
        assert 0.0 <= row["agreement"] <= 1.0
        assert 0.0 <= row["auc"] <= 1.0
        assert isinstance(row["passed"], bool)
    # --keep: the requantised files, named as a model folder names them, for another machine.
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["t-int8-qdq.onnx", "t-int8-qop.onnx"]


def test_int8_here_judges_variants_from_elsewhere_on_the_samples_alone(tmp_path: Path) -> None:
    """--samples-only: on a machine without the training data, a shipped model's variants and
    those brought in a folder are judged as the device judges them, on the model's samples."""
    import json
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    brought = tmp_path / "brought"
    brought.mkdir()
    shutil.copyfile(repo / "models/us-lung/us-lung-int8-qop.onnx", brought / "us-lung-int8-qop.onnx")
    out = tmp_path / "report.json"
    subprocess.run(
        [
            *(sys.executable, "-m", "tools.int8_here", "--config", "tools/configs/us-lung.toml"),
            *("--samples-only", str(brought), "--json", str(out)),
        ],
        check=True,
        cwd=repo,
        capture_output=True,
    )
    report = json.loads(out.read_text())
    assert report["images"] == 0  # no training data was read
    rows = report["variants"]
    assert sorted(rows) == ["requantised int8-qop", "shipped int8-qdq", "shipped int8-qop"]
    for row in rows.values():
        assert isinstance(row["serves_here"], bool)
        assert 0.0 <= row["samples_agreement"] <= 1.0
    # The same file judged twice gives the same verdict.
    assert rows["requantised int8-qop"] == rows["shipped int8-qop"]
