"""Edits of released ONNX graphs that change no weight: a pooled-features output for the
applicability check, and biases folded to float so TensorRT can build the QDQ file.

    python -m tools.graph_edits models/cxr-pneumonia          # edit the three variants in place
    python -m tools.graph_edits --check models/*/*-qdq.onnx   # TensorRT problems, exit 1 if any

Why edit instead of re-exporting: the weights stay byte for byte what was trained, gated and
measured, so every figure in the card stays true, and git stores the new files as small deltas.

- `add_features_output`: the activations after the stem and after every residual block (tools/
  nets.py), each averaged over space and concatenated, as output `features` [N, sum of
  channels]: what the applicability check (edge/inference/scope.py) scores, layer by layer.
  The same on ONNX Runtime and TensorRT, no second network and no gradients.
- `fold_int32_dequantize`: ONNX Runtime's quantiser writes each bias as int32 with a
  DequantizeLinear; TensorRT's DequantizeLinear takes INT8/FP8/INT4 only (onnx-tensorrt#850,
  onnxruntime#14229, #17738), so no INT8 engine could build. Folding (q - zero_point) * scale into
  a float initializer computes exactly what ONNX Runtime computed from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = "features"
# What TensorRT's DequantizeLinear accepts as its quantised input (TensorRT 10 operator docs).
TENSORRT_DQ_INPUTS = {TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4}


def feature_taps(fp32: onnx.ModelProto) -> list[tuple[str, str]]:
    """(ReLU output, ReLU input) of the stem and of every residual block of a CamNet
    (tools/nets.py), found in its FP32 graph: the activations the applicability check pools."""
    graph = fp32.graph
    producers = {out: node for node in graph.node for out in node.output}
    relus = [node for node in graph.node if node.op_type == "Relu"]
    if not relus:
        raise ValueError("no ReLU in the graph: not a CamNet")
    taps = [relus[0]] + [n for n in relus[1:] if producers[n.input[0]].op_type == "Add"]
    return [(node.output[0], node.input[0]) for node in taps]


def add_features_output(model: onnx.ModelProto, taps: list[tuple[str, str]]) -> onnx.ModelProto:
    """`features` [N, sum of channels]: each tap averaged over space, as float, concatenated.

    In an FP32 or QDQ graph the ReLU output is a float tensor; in a QOperator graph the ReLU is
    fused into the quantised Add/Conv, whose unsigned output `<input>_quantized` (zero point 0:
    nothing below zero survives) is dequantised first."""
    if any(out.name == FEATURES for out in model.graph.output):
        return model
    produced = {out for node in model.graph.node for out in node.output}
    pooled = []
    for index, (relu_out, relu_in) in enumerate(taps):
        source = relu_out
        if relu_out not in produced:  # QOperator: the quantised tensor and its scale
            quantised = f"{relu_in}_quantized"
            if quantised not in produced:
                raise ValueError(f"neither {relu_out} nor {quantised} is in the graph")
            source = f"features_{index}_float"
            model.graph.node.append(
                helper.make_node(
                    "DequantizeLinear",
                    [quantised, f"{relu_in}_scale", f"{relu_in}_zero_point"],
                    [source],
                    name=f"features_{index}_dequantize",
                )
            )
        model.graph.node.append(
            helper.make_node(
                "GlobalAveragePool", [source], [f"features_{index}_pool"], name=f"features_{index}_pool"
            )
        )
        model.graph.node.append(
            helper.make_node(
                "Flatten",
                [f"features_{index}_pool"],
                [f"features_{index}"],
                axis=1,
                name=f"features_{index}_flat",
            )
        )
        pooled.append(f"features_{index}")
    model.graph.node.append(helper.make_node("Concat", pooled, [FEATURES], axis=1, name="features_concat"))
    model.graph.output.append(helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", None]))
    return model


def fold_int32_dequantize(model: onnx.ModelProto) -> int:
    """Replace every DequantizeLinear of a constant int32 tensor by its float value; returns how
    many were folded."""
    initializers = {init.name: init for init in model.graph.initializer}
    folded = 0
    for node in list(model.graph.node):
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        quantised = initializers[node.input[0]]
        if quantised.data_type != TensorProto.INT32:
            continue
        q = numpy_helper.to_array(quantised).astype(np.float64)
        scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
        zero = (
            numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64)
            if len(node.input) > 2 and node.input[2]
            else 0.0
        )
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if np.ndim(scale) == 1 and q.ndim > 1:  # per-axis scale: broadcast along `axis`
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
        # float32 arithmetic, as ONNX Runtime's kernel does it, so outputs stay bit-identical
        value = ((q - zero).astype(np.float32) * scale.astype(np.float32)).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        model.graph.node.remove(node)
        folded += 1
    used = {name for node in model.graph.node for name in node.input}
    for init in list(model.graph.initializer):  # the int32 values and their scales
        if init.name not in used:
            model.graph.initializer.remove(init)
    return folded


def tensorrt_qdq_problems(model: onnx.ModelProto) -> list[str]:
    """Why TensorRT could not build this QDQ graph: each DequantizeLinear whose quantised input
    is not INT8/FP8/INT4 (empty: none found)."""
    types = {init.name: init.data_type for init in model.graph.initializer}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        types.setdefault(value.name, value.type.tensor_type.elem_type)
    for node in model.graph.node:  # a QuantizeLinear's output has its zero point's type
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in types:
            types[node.output[0]] = types[node.input[2]]
    problems = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        kind = types.get(node.input[0])
        if kind not in TENSORRT_DQ_INPUTS:
            name = TensorProto.DataType.Name(kind) if kind else "unknown"
            problems.append(f"DequantizeLinear {node.name or node.output[0]} dequantizes {name}")
    return problems


def edit_release(folder: Path) -> list[str]:
    """Every variant of one released model folder edited in place; returns what was done."""
    done = []
    taps = feature_taps(onnx.load(str(next(folder.glob("*-fp32.onnx")))))
    for path in sorted(folder.glob("*.onnx")):
        model = onnx.load(str(path))
        folded = fold_int32_dequantize(model) if path.stem.endswith("-qdq") else 0
        had = any(out.name == FEATURES for out in model.graph.output)
        add_features_output(model, taps)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        _record_sha256(folder, path)
        done.append(
            f"{path.name}: {folded} bias dequantize folded, features output {'kept' if had else 'added'}"
        )
    return done


def _record_sha256(folder: Path, path: Path) -> None:
    """The manifest names the edited file's new sha256 (the device refuses a file that differs)."""
    import hashlib

    import tomli_w

    from edge.compat import tomllib

    manifest_path = folder / "model.toml"
    manifest = tomllib.loads(manifest_path.read_text())
    for variant in manifest.get("variants", {}).values():
        if variant["file"] == path.name:
            variant["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(tomli_w.dumps(manifest))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only report TensorRT QDQ problems")
    args = parser.parse_args()
    if args.check:
        bad = 0
        for path in args.paths:
            problems = tensorrt_qdq_problems(onnx.load(str(path)))
            bad += len(problems)
            print(f"{path}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
            for problem in problems:
                print(f"  {problem}")
        sys.exit(1 if bad else 0)
    for folder in args.paths:
        for line in edit_release(folder):
            print(line)


if __name__ == "__main__":
    main()
