"""Package a trained model for the device: calibration, operating points, variants, samples,
manifest and model card, all into models/<name>/.

    python -m tools.release --config tools/configs/cxr-pneumonia.toml --version 1.0.0

Needs runs/<name>/ from tools.train and tools.quantize. Every choice (temperature, thresholds)
is made on the validation split; the holdout split is only measured, never tuned on.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tomli_w
from pydicom.uid import RLELossless
from rich.console import Console

from edge import metrics as m
from edge.imaging.decode import decode_bytes
from edge.postprocess import softmax
from tools import dicomgen
from tools.recipe import REPO, Recipe, Sample, load_recipe, model_inputs, run_onnx, split_samples

console = Console()
SCREENING_SENSITIVITY = 0.95  # default; a recipe may ask for more ([release] screening_sensitivity)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def binary_report(
    truth: np.ndarray, prob: np.ndarray, thresholds: dict[str, float], seed: int
) -> dict[str, Any]:
    auc = m.roc_auc(truth, prob)
    low, high = m.bootstrap_interval(m.roc_auc, truth, prob, rounds=1000, seed=seed)
    out: dict[str, Any] = {
        "images": len(truth),
        "positives": int(truth.sum()),
        "auc": round(auc, 4),
        "auc_ci95": [round(low, 4), round(high, 4)],
    }
    for name, threshold in thresholds.items():
        counts = m.at_threshold(truth, prob, threshold)
        out[f"{name}_sensitivity"] = round(counts.sensitivity, 4)
        out[f"{name}_specificity"] = round(counts.specificity, 4)
        out[f"{name}_accuracy"] = round(counts.accuracy, 4)
    return out


def pick_samples(holdout: list[Sample], recipe: Recipe, per_class: int, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    picked = []
    for label in range(len(recipe.labels)):
        members = [s for s in holdout if s.label == label]
        for index in rng.choice(len(members), size=min(per_class, len(members)), replace=False):
            picked.append(members[int(index)])
    return picked


def write_samples(
    recipe: Recipe, folder: Path, validation: list[Sample], demo_png: list[Sample], demo_dcm: list[Sample]
) -> list[dict[str, str]]:
    """PNG copies of the chosen images (pixels exactly as decoded) and a few DICOMs."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "demo").mkdir(parents=True)
    rows = []

    def decoded_pixels(sample: Sample) -> np.ndarray:
        return decode_bytes((recipe.data_root / sample.path).read_bytes(), sample.path).pixels

    def save_png(sample: Sample, relative: str) -> None:
        pixels = decoded_pixels(sample)
        bgr = pixels if pixels.ndim == 2 else pixels[:, :, ::-1]
        ok, encoded = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        assert ok
        (folder / relative).write_bytes(encoded.tobytes())
        rows.append({"path": relative, "label": recipe.labels[sample.label], "origin": sample.path})

    # Neutral file names: the published names give the label away ("NORMAL2-...", "..._virus_...");
    # labels.csv keeps the origin for attribution.
    for number, sample in enumerate(validation, start=1):
        save_png(sample, f"sample-{number:02d}.png")
    for number, sample in enumerate(demo_png, start=1):
        save_png(sample, f"demo/demo-{number:02d}.png")
    styles = [
        {"photometric": "MONOCHROME2", "window": (2048, 4096)},
        {"photometric": "MONOCHROME1", "window": (2048, 4096), "transfer_syntax": RLELossless},
        {"photometric": "MONOCHROME2", "window": (2048, 4096), "signed": True},
        {"photometric": "MONOCHROME2", "voi": True},
    ]
    for number, (sample, style) in enumerate(zip(demo_dcm, styles, strict=False), start=1):
        display = decoded_pixels(sample)
        stored = dicomgen.twelve_bit(display)
        kwargs: dict[str, Any] = {
            "bits_stored": 12,
            "photometric": style["photometric"],
            "patient_id": f"SYNTH-{number:04d}",
            "modality": "CR",
        }
        if style["photometric"] == "MONOCHROME1":
            stored = (4095 - stored).astype(np.uint16)
        if style.get("signed"):
            stored = (stored.astype(np.int32) - 1024).astype(np.int16)
            kwargs.update(bits_stored=16)
        if style.get("voi"):
            lut = (np.arange(4096) // 16).astype(np.uint16)
            kwargs["voi_lut"] = ([4096, 0, 8], lut)
        for key in ("window", "transfer_syntax"):
            if key in style:
                kwargs[key] = style[key]
        if style.get("signed"):
            kwargs["rescale"] = (1.0, 1024.0)
        ds = dicomgen.grey_dicom(stored, **kwargs)
        relative = f"demo/demo-{len(demo_png) + number:02d}.dcm"
        (folder / relative).write_bytes(dicomgen.to_bytes(ds))
        rows.append({"path": relative, "label": recipe.labels[sample.label], "origin": sample.path})
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "label", "origin"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def torch_logits(recipe: Recipe, samples_dir: Path, rows: list[dict[str, str]]) -> dict[str, list[float]]:
    """The training framework's own logits for each sample file, via the product's decoder."""
    import torch

    from edge.imaging.preprocess import preprocess
    from tools.train import build_net

    net = build_net(recipe)
    net.load_state_dict(torch.load(recipe.run_dir() / "best.pt"))
    net.eval()
    out = {}
    with torch.no_grad():
        for row in rows:
            pixels = decode_bytes((samples_dir / row["path"]).read_bytes(), row["path"]).pixels
            tensor = torch.from_numpy(preprocess(pixels, recipe.spec)[None])
            out[row["path"]] = [float(v) for v in net(tensor)[0][0]]
    return out


def write_plots(
    folder: Path,
    recipe: Recipe,
    logits: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    temperature: float,
    positive: int,
) -> None:
    """ROC per split and the reliability diagram before/after temperature scaling."""
    from edge import plots

    series = []
    for name, label in (("val", "validation"), ("holdout", "holdout")):
        prob = softmax(logits[name], temperature)[:, positive]
        fpr, tpr, _ = m.roc_curve(truth[name] == positive, prob)
        series.append(plots.Series(f"{label}, AUC {m.roc_auc(truth[name] == positive, prob):.3f}", fpr, tpr))
    plots.save_png(plots.roc_plot(series, f"{recipe.name}: {recipe.positive} vs rest"), folder / "roc.png")
    curves, counts = [], []
    for label, t in (("uncalibrated", 1.0), (f"T = {temperature:.2f}", temperature)):
        probs = softmax(logits["val"], t)
        correct = (probs.argmax(1) == truth["val"]).astype(float)
        bins = m.reliability_bins(correct, probs.max(1))
        ece = m.expected_calibration_error(correct, probs.max(1))
        curves.append(
            plots.Series(
                f"{label}, ECE {ece:.3f}", np.array([b[0] for b in bins]), np.array([b[1] for b in bins])
            )
        )
        counts.append([b[2] for b in bins])
    plots.save_png(
        plots.reliability_plot(curves, counts, "Reliability on validation (top-1, 15 bins)"),
        folder / "reliability.png",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--samples-per-class", type=int, default=10)
    args = parser.parse_args()
    recipe = load_recipe(args.config)
    run = recipe.run_dir()
    seed = recipe.raw["seed"]
    summary = json.loads((run / "summary.json").read_text())
    gates = json.loads((run / "gate.json").read_text())
    positive = recipe.labels.index(recipe.positive)
    out_dir = REPO / "models" / recipe.name
    out_dir.mkdir(parents=True, exist_ok=True)

    with console.status("running FP32 on the validation and holdout splits..."):
        splits = {name: split_samples(recipe, name) for name in ("val", "holdout")}
        inputs = {name: model_inputs(recipe, samples) for name, samples in splits.items()}
        truth = {name: np.array([s.label for s in samples]) for name, samples in splits.items()}
        logits = {name: run_onnx(run / f"{recipe.name}-fp32.onnx", x) for name, x in inputs.items()}

    temperature = m.fit_temperature(logits["val"], truth["val"])
    prob_val = softmax(logits["val"], temperature)[:, positive]
    screening_target = float(
        recipe.raw.get("release", {}).get("screening_sensitivity", SCREENING_SENSITIVITY)
    )
    balanced = m.youden_threshold(truth["val"] == positive, prob_val)
    # Screening must never be less sensitive than the balanced point.
    screening = min(
        balanced, m.threshold_for_sensitivity(truth["val"] == positive, prob_val, screening_target)
    )
    thresholds = {"balanced": balanced, "screening": screening}
    metrics: dict[str, dict[str, Any]] = {}
    for name in ("val", "holdout"):
        raw = softmax(logits[name])
        cal = softmax(logits[name], temperature)
        correct = raw.argmax(1) == truth[name]
        report = binary_report(truth[name] == positive, cal[:, positive], thresholds, seed)
        report["ece_uncalibrated"] = round(m.expected_calibration_error(correct, raw.max(1)), 4)
        report["ece_calibrated"] = round(m.expected_calibration_error(correct, cal.max(1)), 4)
        metrics["validation" if name == "val" else "holdout"] = report
    console.print(f"temperature {temperature:.3f}; thresholds {thresholds}")
    write_plots(out_dir / "plots", recipe, logits, truth, temperature, positive)
    console.print(json.dumps(metrics, indent=1))

    for old in out_dir.glob("*.onnx"):
        old.unlink()
    variants: dict[str, Any] = {}
    fp32_name = f"{recipe.name}-fp32.onnx"
    shutil.copyfile(run / fp32_name, out_dir / fp32_name)
    variants["fp32"] = {
        "file": fp32_name,
        "sha256": sha256(out_dir / fp32_name),
        "precision": "fp32",
        "quantization": "none",
        "backends": ["onnxruntime", "tensorrt"],
    }
    for variant, gate in gates.items():
        quantization = "qdq" if variant.endswith("qdq") else "qoperator"
        if not gate["passed"]:
            console.print(f"[red]{variant} failed its gate and is not shipped[/]: {gate}")
            continue
        shutil.copyfile(run / gate["file"], out_dir / gate["file"])
        holdout_logits = run_onnx(out_dir / gate["file"], inputs["holdout"])
        metrics[f"holdout_{variant}"] = binary_report(
            truth["holdout"] == positive, softmax(holdout_logits, temperature)[:, positive], thresholds, seed
        )
        variants[variant] = {
            "file": gate["file"],
            "sha256": sha256(out_dir / gate["file"]),
            "precision": "int8",
            "quantization": quantization,
            # TensorRT builds from explicit QDQ only; QOperator graphs are for ONNX Runtime.
            "backends": ["onnxruntime", "tensorrt"] if quantization == "qdq" else ["onnxruntime"],
            "gate": {
                k: gate[k]
                for k in (
                    "passed",
                    "images",
                    "auc_reference",
                    "auc",
                    "auc_delta",
                    "agreement",
                    "max_abs_logit_diff",
                    "rule",
                )
            },
        }

    holdout = splits["holdout"]
    validation_set = pick_samples(holdout, recipe, args.samples_per_class, seed)
    rest = [s for s in holdout if s not in validation_set]
    demo = pick_samples(rest, recipe, 4, seed + 1)
    demo_png = [s for i, s in enumerate(demo) if i % 4 < 2]
    demo_dcm = [s for i, s in enumerate(demo) if i % 4 >= 2]
    rows = write_samples(recipe, out_dir / "samples", validation_set, demo_png, demo_dcm)
    check = torch_logits(recipe, out_dir / "samples", rows)
    (out_dir / "export_check.json").write_text(
        json.dumps(
            {
                "about": "logits of the training framework (torch) for each sample, saved at release; "
                "tests require the shipped FP32 ONNX to reproduce them",
                "torch": summary["torch"],
                "logits": check,
            },
            indent=1,
        )
    )

    info = recipe.raw.get("card", {})
    manifest = {
        "schema_version": 1,
        "name": recipe.name,
        "version": args.version,
        "title": recipe.raw["title"],
        "task": "classification",
        "description": info.get("description", ""),
        "accepts": recipe.raw.get("accepts", {}),
        "input": {"name": "image", **recipe.raw["input"]},
        "output": {
            "logits": "logits",
            "cam": "cam",
            "labels": recipe.labels,
            "positive": recipe.positive,
            "temperature": round(temperature, 4),
        },
        "default_operating_point": "balanced",
        "operating_points": {
            "balanced": {
                "threshold": round(thresholds["balanced"], 4),
                "description": "Youden's J on the validation split",
                "sensitivity": metrics["validation"]["balanced_sensitivity"],
                "specificity": metrics["validation"]["balanced_specificity"],
            },
            "screening": {
                "threshold": round(thresholds["screening"], 4),
                "description": f"sensitivity >= {screening_target} on the validation split",
                "sensitivity": metrics["validation"]["screening_sensitivity"],
                "specificity": metrics["validation"]["screening_specificity"],
            },
        },
        "variants": variants,
        "metrics": metrics,
        "training": {
            "recipe": str(args.config),
            "data": recipe.raw["data"]["root"],
            "split": f"by {recipe.data.get('group_column') or 'image'}: "
            f"{summary['train_images']} train / {summary['val_images']} val / "
            f"{summary['holdout_images']} holdout images",
            "seed": seed,
            "epochs_run": summary["epochs_run"],
            "best_epoch": summary["best_epoch"],
            "train_seconds": summary["train_seconds"],
            "params": summary["params"],
            "gflops": round(summary["gflops"], 4),
            "torch": summary["torch"],
            "commit": git_commit(),
            "released": dt.date.today().isoformat(),
        },
        "samples": "samples",
    }
    (out_dir / "model.toml").write_text(tomli_w.dumps(manifest))
    from tools.card import write_card

    write_card(recipe, manifest, out_dir)
    console.print(f"[green]released[/] {recipe.name} {args.version} into {out_dir}")


if __name__ == "__main__":
    main()
