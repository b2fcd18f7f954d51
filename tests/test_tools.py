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
