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
needed it before any release. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import json
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
from tools.recipe import REPO, group_split, load_recipe, model_inputs, read_samples, run_onnx

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
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    recipe = load_recipe(args.config)
    count = args.calibration_images or int(recipe.raw.get("quantize", {}).get("calibration_images", 400))
    split = group_split(read_samples(recipe), recipe)  # train.py's split, computed as it does
    evaluated, picked = gate_images(recipe, split, count)
    method = recipe.raw.get("quantize", {}).get("method", "minmax")
    inputs = model_inputs(recipe, evaluated)
    calibration = model_inputs(recipe, picked)
    truth = np.array([s.label for s in evaluated])
    positive = recipe.labels.index(recipe.positive)
    folder = args.models_dir / recipe.name
    fp32 = folder / f"{recipe.name}-fp32.onnx"
    reference = run_onnx(fp32, inputs)
    reference_positive = softmax(reference)[:, positive]
    candidates = {f"shipped int8-{fmt}": folder / f"{recipe.name}-int8-{fmt}.onnx" for fmt in ("qdq", "qop")}
    # The machine as the device keys its parity verdicts: its integer-kernel CPU features decide.
    report: dict[str, Any] = {"cpu": machine_key(), "images": len(evaluated), "variants": {}}
    entry = _entry(args.models_dir, recipe.name)
    if entry is not None:
        sample_inputs, sample_truth = sample_batch(entry, Code.VARIANT_PARITY_FAILED)
        sample_reference = run_onnx(fp32, sample_inputs)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prep.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
        for fmt in ("qdq", "qop"):
            out = Path(scratch) / f"int8-{fmt}.onnx"
            with console.status(f"quantising ({fmt}, {method}, {len(picked)} images)..."):
                quantize(prepared, out, calibration, fmt, method)
            candidates[f"requantised int8-{fmt}"] = out
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
            if entry is not None:  # what the device itself checks before serving it here
                served = judge(entry, sample_reference, run_onnx(path, sample_inputs), sample_truth)
                report["variants"][name]["serves_here"] = served.passed
                report["variants"][name]["samples_max_abs_logit_diff"] = round(served.max_abs_logit_diff, 4)
    console.print(f"{recipe.name}: {report['images']} images, {report['cpu']}")
    for name, row in report["variants"].items():
        console.print(
            f"  {name:22} agreement {row['agreement']:.4f}  AUC {row['auc']:.4f} (FP32 {row['auc_fp32']:.4f})"
            f"  largest change in P({recipe.positive}) {row['largest_probability_change']:.3f}"
            f"  {'passes' if row['passed'] else 'FAILS'} the gate's rule"
            + (
                f"; on the samples: max |logit diff| {row['samples_max_abs_logit_diff']:.3f},"
                f" {'served here' if row['serves_here'] else 'NOT served here'}"
                if "serves_here" in row
                else ""
            )
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
