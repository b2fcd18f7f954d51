"""QDQ files TensorRT can build, and graph edits that change no answer (tools/graph_edits.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tools.graph_edits import (
    FEATURES,
    add_features_output,
    feature_taps,
    fold_int32_dequantize,
    tensorrt_qdq_problems,
)

MODELS = Path(__file__).resolve().parents[1] / "models"
QDQ_FILES = sorted(MODELS.glob("*/*-qdq.onnx"))


@pytest.mark.parametrize("path", QDQ_FILES, ids=lambda p: p.name)
def test_every_shipped_qdq_file_dequantizes_only_what_tensorrt_accepts(path: Path) -> None:
    """TensorRT's DequantizeLinear takes INT8/FP8/INT4: an int32 bias there and no engine builds."""
    assert tensorrt_qdq_problems(onnx.load(str(path))) == []


def test_the_check_finds_an_int32_dequantize() -> None:
    assert QDQ_FILES, "no QDQ model shipped"
    assert tensorrt_qdq_problems(_tiny_qdq()) == ["DequantizeLinear bias_dq dequantizes INT32"]


def _tiny_qdq() -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(W from int8 DQ, bias from int32 DQ) -> Relu -> y: what ONNX Runtime's
    quantiser writes by default."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, (4, 1, 3, 3), dtype=np.int8)
    bias = rng.integers(-5000, 5000, (4,), dtype=np.int32)
    inits = [
        numpy_helper.from_array(np.float32(0.02), "x_scale"),
        numpy_helper.from_array(np.int8(0), "x_zero"),
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zero"),
        numpy_helper.from_array(bias, "b_q"),
        numpy_helper.from_array(np.full(4, 0.0002, np.float32), "b_scale"),
        numpy_helper.from_array(np.zeros(4, np.int32), "b_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b"], name="bias_dq", axis=0),
        helper.make_node("Conv", ["xd", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(outputs, {"x": x})


def test_folding_the_bias_gives_bit_identical_outputs() -> None:
    model = _tiny_qdq()
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    before = _run(model, x)[0]
    assert fold_int32_dequantize(model) == 1
    onnx.checker.check_model(model)
    assert tensorrt_qdq_problems(model) == []
    assert np.array_equal(_run(model, x)[0], before)


def test_features_output_pools_every_block_and_changes_no_answer() -> None:
    """On the shipped FP32 cxr model stripped of its features output: re-adding it keeps logits
    and CAM bit-identical, and `features` is the pooled stem and block activations."""
    model = onnx.load(str(MODELS / "cxr-pneumonia" / "cxr-pneumonia-fp32.onnx"))
    taps = feature_taps(model)
    assert len(taps) == 9  # the stem and 8 residual blocks
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    keep = [n for n in stripped.graph.node if not n.name.startswith("features_")]
    del stripped.graph.node[:]
    stripped.graph.node.extend(keep)
    outputs = [o for o in stripped.graph.output if o.name != FEATURES]
    del stripped.graph.output[:]
    stripped.graph.output.extend(outputs)
    x = np.random.default_rng(2).standard_normal((2, 1, 224, 224)).astype(np.float32)
    session = ort.InferenceSession(stripped.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, cam = session.run(["logits", "cam"], {"image": x})
    edited = add_features_output(stripped, taps)
    session = ort.InferenceSession(edited.SerializeToString(), providers=["CPUExecutionProvider"])
    logits2, cam2, features = session.run(["logits", "cam", FEATURES], {"image": x})
    assert np.array_equal(logits, logits2)
    assert np.array_equal(cam, cam2)
    assert features.shape == (2, 16 + 2 * (32 + 48 + 96 + 128))  # stem, then two blocks per stage
    assert (features >= 0).all()  # pooled ReLU outputs
