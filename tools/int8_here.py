"""Does INT8 compute here what FP32 computes here? The shipped variants, and the same FP32
quantised again by tools/quantize.py's current recipe, each against FP32 on this machine.

    python -m tools.int8_here --config tools/configs/cxr-pneumonia.toml

Each is also judged as the device judges it before serving it (edge/inference/local_parity.py:
the manifest's parity rule, on the model's sample images), where the model folder has samples.
The release gate is measured where the model was quantised. ONNX Runtime's x86 INT8 kernels
differ by CPU (edge/inference/local_parity.py): a variant that passed there can fail here, and
the device then serves FP32. This measures by how much, on the recipe's validation images (all
of its images for a cross-validated recipe: fidelity, as its gate), calibrated as quantize.py
does (the same images, the same seed), so a change to the recipe is judged on the CPU that
needed it before any release. Nothing is written outside a temporary folder, unless asked:

    python -m tools.int8_here --config C --keep DIR        # also save the requantised variants
    python -m tools.int8_here --config C --samples-only DIR  # on another CPU, no training data:
        # the shipped variants and DIR's, judged on the model's samples as the device judges them
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization.shape_inference import quant_pre_process
from rich.console import Console

from edge.errors import Code, EdgeError
from edge.inference.local_parity import judge, sample_batch
from edge.inference.parity import compare
from edge.inference.pool import machine_key
from edge.inference.postprocess import softmax
from edge.inference.registry import ModelEntry, Registry
from tools.quantize import gate_images, quantize
from tools.recipe import REPO, Recipe, Sample, group_split, load_recipe, model_inputs, read_samples, run_onnx

console = Console()


def _entry(models_dir: Path, name: str) -> ModelEntry | None:
    """The installed model with its sample images (the load-time parity check's), if any."""
    try:
        entry = Registry(models_dir).get(name)
    except EdgeError:
        return None
    return entry if entry.samples else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--calibration-images", type=int, default=None)
    parser.add_argument("--keep", type=Path, help="also save the requantised variants here")
    parser.add_argument(
        "--samples-only",
        type=Path,
        metavar="DIR",
        help="judge the shipped variants and DIR's (a --keep folder from another machine) on the "
        "model's samples only, as the device does: no training data needed",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    recipe = load_recipe(args.config)
    folder = args.models_dir / recipe.name
    fp32 = folder / f"{recipe.name}-fp32.onnx"
    candidates = {f"shipped int8-{fmt}": folder / f"{recipe.name}-int8-{fmt}.onnx" for fmt in FORMATS}
    # The machine as the device keys its parity verdicts: its integer-kernel CPU features decide.
    report: dict[str, Any] = {"cpu": machine_key(), "images": 0, "variants": {}}
    entry = _entry(args.models_dir, recipe.name)
    if args.samples_only:
        if entry is None:
            raise SystemExit(f"{folder} holds no model with samples to judge on")
        for fmt in FORMATS:
            candidates[f"requantised int8-{fmt}"] = args.samples_only / f"{recipe.name}-int8-{fmt}.onnx"
        report["variants"] = {name: {} for name, path in candidates.items() if path.is_file()}
        _judge_on_samples(entry, fp32, candidates, report)
    else:
        count = args.calibration_images or int(recipe.raw.get("quantize", {}).get("calibration_images", 400))
        # train.py's split, computed as it does; a cross-validated recipe has none (every image).
        split = {} if recipe.data.get("cv_folds") else group_split(read_samples(recipe), recipe)
        evaluated, picked = gate_images(recipe, split, count)
        with tempfile.TemporaryDirectory() as scratch:
            candidates.update(_requantise(recipe, fp32, picked, Path(scratch), args.keep))
            _measure_on_images(recipe, fp32, evaluated, candidates, report)
            if entry is not None:
                _judge_on_samples(entry, fp32, candidates, report)
    _print(recipe.name, recipe.positive, report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


FORMATS = ("qdq", "qop")


def _requantise(
    recipe: Recipe, fp32: Path, picked: list[Sample], scratch: Path, keep: Path | None
) -> dict[str, Path]:
    """The FP32 quantised again by the current recipe, calibrated as quantize.py does (the same
    images, the same seed); copied to `keep` too when asked."""
    method = recipe.raw.get("quantize", {}).get("method", "minmax")
    calibration = model_inputs(recipe, picked)
    prepared = scratch / "prep.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
    made = {}
    for fmt in FORMATS:
        out = scratch / f"{recipe.name}-int8-{fmt}.onnx"
        with console.status(f"quantising ({fmt}, {method}, {len(picked)} images)..."):
            quantize(prepared, out, calibration, fmt, method)
        made[f"requantised int8-{fmt}"] = out
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out, keep / out.name)
    return made


def _measure_on_images(
    recipe: Recipe, fp32: Path, evaluated: list[Sample], candidates: dict[str, Path], report: dict[str, Any]
) -> None:
    """Each variant against FP32 on the recipe's validation images (the gate's images)."""
    inputs = model_inputs(recipe, evaluated)
    truth = np.array([s.label for s in evaluated])
    positive = recipe.labels.index(recipe.positive)
    reference = run_onnx(fp32, inputs)
    reference_positive = softmax(reference)[:, positive]
    report["images"] = len(evaluated)
    for name, path in candidates.items():
        if not path.is_file():
            continue
        logits = run_onnx(path, inputs)
        parity = compare(reference, logits, truth, positive)
        moved = np.abs(reference_positive - softmax(logits)[:, positive])
        report["variants"][name] = {
            "agreement": round(parity.agreement, 4),
            "auc": round(parity.auc, 4),
            "auc_fp32": round(parity.auc_reference, 4),
            "passed": parity.passed,
            "largest_probability_change": round(float(moved.max()), 4),
        }


def _judge_on_samples(
    entry: ModelEntry, fp32: Path, candidates: dict[str, Path], report: dict[str, Any]
) -> None:
    """What the device itself checks before serving a variant here: the manifest's parity rule
    on the model's sample images."""
    sample_inputs, sample_truth = sample_batch(entry, Code.VARIANT_PARITY_FAILED)
    sample_reference = run_onnx(fp32, sample_inputs)
    for name, row in report["variants"].items():
        served = judge(entry, sample_reference, run_onnx(candidates[name], sample_inputs), sample_truth)
        row["serves_here"] = served.passed
        row["samples_max_abs_logit_diff"] = round(served.max_abs_logit_diff, 4)
        row["samples_agreement"] = round(served.agreement, 4)


def _print(name: str, positive: str, report: dict[str, Any]) -> None:
    console.print(f"{name}: {report['images']} validation images, {report['cpu']}")
    for variant, row in report["variants"].items():
        measured = (
            f"agreement {row['agreement']:.4f}  AUC {row['auc']:.4f} (FP32 {row['auc_fp32']:.4f})"
            f"  largest change in P({positive}) {row['largest_probability_change']:.3f}"
            f"  {'passes' if row['passed'] else 'FAILS'} the gate's rule"
            if "agreement" in row
            else "(samples only)"
        )
        judged = (
            f"; on the samples: agreement {row['samples_agreement']:.3f},"
            f" max |logit diff| {row['samples_max_abs_logit_diff']:.3f},"
            f" {'served here' if row['serves_here'] else 'NOT served here'}"
            if "serves_here" in row
            else ""
        )
        console.print(f"  {variant:22} {measured}{judged}")


if __name__ == "__main__":
    main()
