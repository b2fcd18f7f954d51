"""Make the INT8 variants of a trained model and gate them against FP32.

    python -m tools.quantize --config tools/configs/cxr-pneumonia.toml

From runs/<name>/<name>-fp32.onnx this writes
  <name>-int8-qdq.onnx   QDQ, symmetric INT8 activations and weights, per-channel weights:
                         the format TensorRT builds a strongly typed INT8 engine from, and
                         which ONNX Runtime also runs;
  <name>-int8-qop.onnx   QOperator (QLinearConv...), UINT8 activations and 7-bit weights
                         (`reduce_range`: exact on x86 CPUs without VNNI, see quantize()):
                         often the fastest on a CPU; same calibration data;
and gate.json: each variant against FP32 on the validation split (|AUC delta| <= 0.005 and
top-1 agreement >= 99%). A variant that fails is marked so and tools/release.py does not ship
it. Calibration uses training images only, after ONNX Runtime's quantisation pre-processing
(shape inference and graph fusions, without which QDQ runs slower than FP32 on a CPU).

A cross-validated recipe has no validation split its shipped model did not see, so its gate has
two parts, both of which must pass: fidelity of the shipped model on every image, and the same
quantisation applied to each fold's model (calibrated on that fold's training images) compared
with FP32 on the images that fold never saw (`out_of_fold`): INT8 accuracy on unseen images.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from rich.console import Console

from edge.inference.parity import ParityReport, compare
from tools.graph_edits import fold_int32_dequantize, tensorrt_qdq_problems
from tools.recipe import (
    Recipe,
    Sample,
    check_oof,
    load_recipe,
    model_inputs,
    read_samples,
    read_split,
    run_onnx,
)

console = Console()


class ImageReader(CalibrationDataReader):
    """Calibration batches. The histogram calibrators (percentile, entropy) stack every batch's
    activations into one array, so batches must all be one size: a ragged last batch (612 images
    in 16s) crashes them. One image per batch always fits; calibration is a few hundred runs."""

    def __init__(self, inputs: np.ndarray, batch: int = 1) -> None:
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


def gate_images(
    recipe: Recipe, split: dict[str, str], calibration_images: int
) -> tuple[list[Sample], list[Sample]]:
    """The images the gate compares the precisions on, and the training images quantisation
    calibrates on (`calibration_images` of them, drawn with the recipe's seed). A cross-validated
    recipe's shipped model was trained on every image; its gate compares the two precisions of
    that one model on all of them (fidelity, not accuracy). `split`: path -> train.py's split."""
    samples = read_samples(recipe)
    if recipe.data.get("cv_folds"):
        val = train = samples
    else:
        val = [s for s in samples if split.get(s.path) == "val"]
        train = [s for s in samples if split.get(s.path) == "train"]
    # Positions, not samples: random.sample picks by index, so the same images as ever are chosen.
    count = min(calibration_images, len(train))
    picked = random.Random(recipe.raw["seed"]).sample(range(len(train)), count)
    return val, [train[i] for i in picked]


def quantize(prepared: Path, out: Path, calibration: np.ndarray, fmt: str, method: str) -> None:
    qdq = fmt == "qdq"
    quantize_static(
        prepared,
        out,
        ImageReader(calibration),
        quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
        per_channel=True,
        # The CPU format's weights are 7-bit: ONNX Runtime's x86 u8s8 kernels without VNNI
        # (AVX2 only) add pairs of u8 x s8 products in 16 bits, which saturate at full range
        # (edge/inference/local_parity.py). Measured on such a CPU (python
        # -m tools.quantize's recipe on cxr-pneumonia 1.2.0's FP32, its 782 validation images):
        # 8-bit weights, top-1 agreement with FP32 0.959 and AUC 0.992 against 0.998; 7-bit,
        # 0.997 and 0.998. QDQ is TensorRT's format, which has no such kernels: 8 bits kept.
        reduce_range=not qdq,
        # TensorRT needs symmetric INT8 (zero point 0) on both; the CPU QOperator path is
        # fastest with unsigned activations (u8s8 kernels).
        activation_type=QuantType.QInt8 if qdq else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=METHODS[method],
        extra_options={
            "ActivationSymmetric": qdq,
            "WeightSymmetric": True,
            "CalibPercentile": 99.999,
            # Biases stay float: TensorRT's DequantizeLinear takes INT8/FP8/INT4, never the int32
            # bias ONNX Runtime writes by default (onnx-tensorrt#850), so no engine would build.
            "QuantizeBias": False,
        },
    )
    if qdq:  # older quantisers ignore QuantizeBias: fold what is left, then refuse what TensorRT cannot take
        model = onnx.load(str(out))
        fold_int32_dequantize(model)
        problems = tensorrt_qdq_problems(model)
        if problems:
            raise SystemExit(f"{out}: TensorRT could not build this QDQ graph: {'; '.join(problems)}")
        onnx.save(model, str(out))


def gate_entry(report: ParityReport, reference: np.ndarray, candidate: np.ndarray, truth: np.ndarray) -> dict:
    """A ParityReport with the top-1 accuracy of both precisions (what a reader compares)."""
    return {
        **report.as_dict(),
        "accuracy_reference": round(float((reference.argmax(1) == truth).mean()), 6),
        "accuracy": round(float((candidate.argmax(1) == truth).mean()), 6),
    }


def out_of_fold_gates(
    recipe: Recipe, method: str, calibration_images: int, samples: list[Sample], inputs: np.ndarray
) -> dict[str, dict]:
    """Each fold's model quantised as the shipped one is, compared on its own held-out images."""
    from tools.train import fold_fp32  # torch, needed only here

    fold_of = read_split(recipe)
    labels = np.array([s.label for s in samples])
    positive = recipe.labels.index(recipe.positive)
    reference, truth = [], []
    candidates: dict[str, list[np.ndarray]] = {"qdq": [], "qop": []}
    for k in range(int(recipe.data["cv_folds"])):
        fold_dir = recipe.run_dir() / f"fold-{k}"
        held = np.array([fold_of[s.path] == f"fold-{k}" for s in samples])
        train_rows = np.flatnonzero(~held).tolist()
        count = min(calibration_images, len(train_rows))
        picked = random.Random(recipe.raw["seed"] + k).sample(train_rows, count)
        fp32 = fold_fp32(recipe, fold_dir)  # torch: exported once from the fold's checkpoint
        prepared = fold_dir / f"{recipe.name}-prep.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
        fold_reference = run_onnx(fp32, inputs[held])
        held_paths = [s.path for s, h in zip(samples, held, strict=True) if h]
        check_oof(fold_dir / "oof.npz", held_paths, fold_reference)
        reference.append(fold_reference)
        truth.append(labels[held])
        for fmt, fold_logits in candidates.items():
            out = fold_dir / f"{recipe.name}-int8-{fmt}.onnx"
            with console.status(f"fold {k}: quantising ({fmt}, {method})..."):
                quantize(prepared, out, inputs[picked], fmt, method)
            fold_logits.append(run_onnx(out, inputs[held]))
        prepared.unlink()
    ref, y = np.concatenate(reference), np.concatenate(truth)
    gates = {}
    for fmt, logits in candidates.items():
        candidate = np.concatenate(logits)
        report = compare(ref, candidate, y, positive)
        gates[fmt] = gate_entry(report, ref, candidate, y)
        console.print(
            f"int8-{fmt} out of fold: AUC {report.auc:.4f} vs fp32 {report.auc_reference:.4f} "
            f"(delta {report.auc_delta:+.4f}), agreement {report.agreement:.2%}"
        )
    return gates


def add_out_of_fold(gates: dict[str, dict], held_out: dict[str, dict]) -> None:
    """Put each format's out-of-fold check in its gate; a variant passes only if both parts do."""
    for fmt, check in held_out.items():
        gate = gates[f"int8-{fmt}"]
        gate["out_of_fold"] = check
        if not check["passed"]:
            gate["passed"] = False
            console.print(f"[red]int8-{fmt} FAILED its out-of-fold gate: not shipped[/]")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=None,
        help="training images to calibrate on (default: [quantize] calibration_images, else 400)",
    )
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
    calibration_images = args.calibration_images or int(
        recipe.raw.get("quantize", {}).get("calibration_images", 400)
    )

    cross_validated = bool(recipe.data.get("cv_folds"))
    val, picked = gate_images(recipe, {} if cross_validated else read_split(recipe), calibration_images)
    with console.status(f"preparing {len(picked)} calibration and {len(val)} validation images..."):
        val_inputs = model_inputs(recipe, val)
        calibration = model_inputs(recipe, picked)
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
        candidate = run_onnx(out, val_inputs)
        report = compare(reference, candidate, truth, positive)
        gates[f"int8-{fmt}"] = {
            **gate_entry(report, reference, candidate, truth),
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
    if cross_validated:
        add_out_of_fold(gates, out_of_fold_gates(recipe, method, calibration_images, val, val_inputs))
    (run / "gate.json").write_text(json.dumps(gates, indent=2))


if __name__ == "__main__":
    main()
