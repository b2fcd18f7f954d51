"""Make the INT8 variants of a trained model and gate them against FP32.

    python -m tools.quantize --config tools/configs/cxr-pneumonia.toml

From runs/<name>/<name>-fp32.onnx this writes
  <name>-int8-qdq.onnx   QDQ, symmetric INT8 activations and weights, per-channel weights:
                         the format TensorRT builds a strongly typed INT8 engine from, and
                         which ONNX Runtime also runs;
  <name>-int8-qop.onnx   QOperator (QLinearConv...), UINT8 activations: often the fastest on a
                         CPU; same calibration data;
and gate.json: each variant against FP32 on the validation split (|AUC delta| <= 0.005 and
top-1 agreement >= 99%). A variant that fails is marked so and tools/release.py does not ship
it. Calibration uses training images only, after ONNX Runtime's quantisation pre-processing
(shape inference and graph fusions, without which QDQ runs slower than FP32 on a CPU).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from rich.console import Console

from edge.parity import compare
from tools.recipe import load_recipe, model_inputs, read_samples, run_onnx, split_samples

console = Console()


class ImageReader(CalibrationDataReader):
    def __init__(self, inputs: np.ndarray, batch: int = 16) -> None:
        self.batches = [inputs[i : i + batch] for i in range(0, len(inputs), batch)]
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {"image": self.batches[self.index - 1]}

    def rewind(self) -> None:
        self.index = 0


METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


def quantize(prepared: Path, out: Path, calibration: np.ndarray, fmt: str, method: str) -> None:
    qdq = fmt == "qdq"
    quantize_static(
        prepared,
        out,
        ImageReader(calibration),
        quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
        per_channel=True,
        # TensorRT needs symmetric INT8 (zero point 0) on both; the CPU QOperator path is
        # fastest with unsigned activations (u8s8 kernels).
        activation_type=QuantType.QInt8 if qdq else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=METHODS[method],
        extra_options={
            "ActivationSymmetric": qdq,
            "WeightSymmetric": True,
            "CalibPercentile": 99.999,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--calibration-images", type=int, default=400)
    parser.add_argument(
        "--method",
        choices=sorted(METHODS),
        default=None,
        help="calibration method (default: the recipe's [quantize] method, else minmax)",
    )
    args = parser.parse_args()
    recipe = load_recipe(args.config)
    run = recipe.run_dir()
    fp32 = run / f"{recipe.name}-fp32.onnx"
    method = args.method or recipe.raw.get("quantize", {}).get("method", "minmax")

    cross_validated = bool(recipe.data.get("cv_folds"))
    # A cross-validated recipe's shipped model was trained on every image; its gate compares the
    # two precisions of that one model on all of them (fidelity, not accuracy).
    train = read_samples(recipe) if cross_validated else split_samples(recipe, "train")
    picked = random.Random(recipe.raw["seed"]).sample(train, min(args.calibration_images, len(train)))
    with console.status(f"preparing {len(picked)} calibration and the validation images..."):
        calibration = model_inputs(recipe, picked)
        val = read_samples(recipe) if cross_validated else split_samples(recipe, "val")
        val_inputs = model_inputs(recipe, val)
    truth = np.array([s.label for s in val])
    positive = recipe.labels.index(recipe.positive)

    prepared = run / f"{recipe.name}-prep.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
    reference = run_onnx(fp32, val_inputs)
    gates = {}
    for fmt in ("qdq", "qop"):
        out = run / f"{recipe.name}-int8-{fmt}.onnx"
        with console.status(f"quantising ({fmt}, {method})..."):
            quantize(prepared, out, calibration, fmt, method)
        report = compare(reference, run_onnx(out, val_inputs), truth, positive)
        gates[f"int8-{fmt}"] = {
            **report.as_dict(),
            "file": out.name,
            "method": method,
            "calibration_images": len(picked),
            "bytes": out.stat().st_size,
        }
        verdict = "[green]passed[/]" if report.passed else "[red]FAILED: not shipped[/]"
        console.print(
            f"int8-{fmt}: AUC {report.auc:.4f} vs fp32 {report.auc_reference:.4f} "
            f"(delta {report.auc_delta:+.4f}), agreement {report.agreement:.2%}, "
            f"max |logit diff| {report.max_abs_logit_diff:.3f}: {verdict}"
        )
    prepared.unlink()
    (run / "gate.json").write_text(json.dumps(gates, indent=2))


if __name__ == "__main__":
    main()
