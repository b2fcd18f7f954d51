"""A tiny but real ONNX classifier and its model folder, for registry and runtime tests.

It computes a 1x1 convolution (the CAM) and its spatial mean (the logits), the same shape of
graph as the shipped models, in a few hundred bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tomli_w
from onnx import TensorProto, helper, numpy_helper


def tiny_onnx(path: Path, weight: float = 1.0, size: int = 8) -> None:
    w = numpy_helper.from_array(np.array([[[[-weight]]], [[[weight]]]], np.float32), "w")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["cam"]),
            helper.make_node("ReduceMean", ["cam", "axes"], ["logits"], keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, size, size])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["batch", 2, size, size]),
        ],
        [w, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def write_samples(folder: Path) -> None:
    """Two attributed-style sample images and their labels: what parity checks run on."""
    import cv2

    samples = folder / "samples"
    samples.mkdir(exist_ok=True)
    rows = ["path,label"]
    for name, value, label in (
        ("bright.png", 230, "finding"),
        ("dark.png", 20, "normal"),
        ("mid.png", 150, "finding"),
    ):
        ok, png = cv2.imencode(".png", np.full((16, 16), value, np.uint8))
        assert ok
        (samples / name).write_bytes(png.tobytes())
        rows.append(f"{name},{label}")
    (samples / "labels.csv").write_text("\n".join(rows) + "\n")


def manifest(folder: Path, *, int8_weight: float = 1.01, **overrides: Any) -> dict[str, Any]:
    """`int8_weight` far from 1 makes an "INT8" variant that computes something else."""
    files = {"fp32": "tiny-fp32.onnx", "int8": "tiny-int8.onnx"}
    tiny_onnx(folder / files["fp32"])
    tiny_onnx(folder / files["int8"], weight=int8_weight)
    write_samples(folder)

    def sha(name: str) -> str:
        return hashlib.sha256((folder / name).read_bytes()).hexdigest()

    data: dict[str, Any] = {
        "schema_version": 1,
        "name": folder.name,
        "version": "0.0.1",
        "title": "Tiny test model",
        "accepts": {"modalities": ["CR"], "body_parts": ["CHEST"]},
        "quality": {"min_side": 8},
        "input": {"shape": [1, 8, 8], "colour": "gray", "mean": [0.5], "std": [0.5]},
        "output": {"logits": "logits", "cam": "cam", "labels": ["normal", "finding"], "positive": "finding"},
        "default_operating_point": "balanced",
        "operating_points": {"balanced": {"threshold": 0.5}, "screening": {"threshold": 0.2}},
        "variants": {
            "fp32": {
                "file": files["fp32"],
                "sha256": sha(files["fp32"]),
                "precision": "fp32",
                "backends": ["onnxruntime", "tensorrt"],
            },
            "int8": {
                "file": files["int8"],
                "sha256": sha(files["int8"]),
                "precision": "int8",
                "quantization": "qdq",
                "backends": ["onnxruntime", "tensorrt"],
                "gate": {
                    "passed": True,
                    "images": 10,
                    "auc_reference": 0.9,
                    "auc": 0.9,
                    "auc_delta": 0.0,
                    "agreement": 1.0,
                },
            },
        },
    }
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def make_model_dir(
    models_dir: Path, name: str = "tiny", *, int8_weight: float = 1.01, **overrides: Any
) -> Path:
    folder = models_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.toml").write_text(tomli_w.dumps(manifest(folder, int8_weight=int8_weight, **overrides)))
    return folder
