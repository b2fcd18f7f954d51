"""Package a trained model for the device: calibration, operating points, variants, samples,
plots, manifest and model card, all into models/<name>/.

    python -m tools.release --config tools/configs/cxr-pneumonia.toml --version 1.0.0

Needs runs/<name>/ from tools.train (or tools.crossval) and tools.quantize. Every choice
(temperature, thresholds) is made on the validation predictions under the acquisition shifts of
tools/shift_eval.py (`[release] choose_on = "clean"`: on them as they are): the validation
split, or for cross-validated recipes the out-of-fold predictions, each image scored by a model
that never trained on it (tools/release_sets.py). A holdout split, where there is one, is only
measured, never tuned on; the card states every set's figures, clean and under shift.
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

from edge.imaging.decode import decode_bytes
from edge.inference import metrics as m
from edge.inference import plots
from edge.inference.postprocess import softmax
from tools import dicomgen
from tools.recipe import (
    REPO,
    Recipe,
    Sample,
    load_recipe,
)
from tools.release_sets import (
    Predictions,
    choose,
    evaluation_sets,
    manifest_operating_points,
    measure_variants,
    shifted_sets,
)
from tools.robustness import clip_stability, shifts_measured

console = Console()
MAX_SAMPLE_BYTES = 160_000  # keeps each model's samples around a megabyte


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pick_samples(pool: list[Sample], recipe: Recipe, per_class: int, seed: int, small: bool) -> list[Sample]:
    rng = np.random.default_rng(seed)
    picked = []
    for label in range(len(recipe.labels)):
        members = [s for s in pool if s.label == label]
        if small:
            members = [s for s in members if (recipe.data_root / s.path).stat().st_size <= MAX_SAMPLE_BYTES]
        for index in rng.choice(len(members), size=min(per_class, len(members)), replace=False):
            picked.append(members[int(index)])
    return picked


def write_samples(
    recipe: Recipe, folder: Path, validation: list[Sample], demo_png: list[Sample], demo_dcm: list[Sample]
) -> list[dict[str, str]]:
    """Copies of the chosen images (PNG of the decoded pixels, or the original file) and, for the
    demo, a few DICOM files built from them in different encodings."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "demo").mkdir(parents=True)
    original = recipe.raw.get("release", {}).get("sample_format") == "original"
    rows = []

    def decoded_pixels(sample: Sample) -> np.ndarray:
        return decode_bytes((recipe.data_root / sample.path).read_bytes(), sample.path).pixels

    def save(sample: Sample, stem: str) -> None:
        source = recipe.data_root / sample.path
        if original:
            relative = stem + source.suffix.lower()
            shutil.copyfile(source, folder / relative)
        else:
            relative = stem + ".png"
            pixels = decoded_pixels(sample)
            bgr = pixels if pixels.ndim == 2 else pixels[:, :, ::-1]
            ok, encoded = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            assert ok
            (folder / relative).write_bytes(encoded.tobytes())
        rows.append({"path": relative, "label": recipe.labels[sample.label], "origin": sample.path})

    # Neutral file names: published names can give the label away ("NORMAL2-...", "..._virus_...");
    # labels.csv keeps the origin for attribution.
    for number, sample in enumerate(validation, start=1):
        save(sample, f"sample-{number:02d}")
    for number, sample in enumerate(demo_png, start=1):
        save(sample, f"demo/demo-{number:02d}")
    styles: list[dict[str, Any]] = [
        {"photometric": "MONOCHROME2", "window": (2048, 4096)},
        {"photometric": "MONOCHROME1", "window": (2048, 4096), "transfer_syntax": RLELossless},
        {"photometric": "MONOCHROME2", "window": (2048, 4096), "signed": True},
        {"photometric": "MONOCHROME2", "voi": True},
    ]
    for number, (sample, style) in enumerate(zip(demo_dcm, styles, strict=False), start=1):
        stored = dicomgen.twelve_bit(decoded_pixels(sample))
        kwargs: dict[str, Any] = {
            "bits_stored": 12,
            "photometric": style["photometric"],
            "patient_id": f"SYNTH-{number:04d}",
            "modality": "CR",
            "uid_seed": sample.path,  # the same release makes the same files
        }
        if style["photometric"] == "MONOCHROME1":
            stored = (4095 - stored).astype(np.uint16)
        if style.get("signed"):
            stored = (stored.astype(np.int32) - 1024).astype(np.int16)
            kwargs.update(bits_stored=16, rescale=(1.0, 1024.0))
        if style.get("voi"):
            kwargs["voi_lut"] = ([4096, 0, 8], (np.arange(4096) // 16).astype(np.uint16))
        for key in ("window", "transfer_syntax"):
            if key in style:
                kwargs[key] = style[key]
        relative = f"demo/demo-{len(demo_png) + number:02d}.dcm"
        (folder / relative).write_bytes(dicomgen.to_bytes(dicomgen.grey_dicom(stored, **kwargs)))
        rows.append({"path": relative, "label": recipe.labels[sample.label], "origin": sample.path})
    if not any((folder / "demo").iterdir()):
        (folder / "demo").rmdir()
    write_sample_labels(recipe, folder, rows)
    return rows


def write_sample_labels(recipe: Recipe, folder: Path, rows: list[dict[str, str]]) -> None:
    """labels.csv of the samples, each row attributed with its licence and source where the data
    set records them per image (the lung set mixes sources)."""
    attribution: dict[str, dict[str, str]] = {}
    with (recipe.data_root / recipe.data["labels_csv"]).open(newline="") as handle:
        for row in csv.DictReader(handle):
            attribution[row[recipe.data["path_column"]]] = {
                "license": row.get("license", ""),
                "source_url": row.get("source_url", ""),
            }
    columns = ["path", "label", "origin"]
    if any(a["license"] or a["source_url"] for a in attribution.values()):
        columns += ["license", "source_url"]
        rows = [{**row, **attribution.get(row["origin"], {})} for row in rows]
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


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


def write_plots(folder: Path, recipe: Recipe, sets: dict[str, Predictions], temperature: float) -> None:
    """ROC per evaluation set and the reliability diagram before/after temperature scaling."""
    positive = recipe.labels.index(recipe.positive)
    series = []
    for name, predictions in sets.items():
        truth = predictions.truth == positive
        prob = softmax(predictions.logits, temperature)[:, positive]
        fpr, tpr, _ = m.roc_curve(truth, prob)
        series.append(plots.Series(f"{name}, AUC {m.roc_auc(truth, prob):.3f}", fpr, tpr))
    plots.save_png(plots.roc_plot(series, f"{recipe.name}: {recipe.positive} vs rest"), folder / "roc.png")
    curves, counts = [], []
    validation = sets["validation"]
    for label, t in (("uncalibrated", 1.0), (f"T = {temperature:.2f}", temperature)):
        probs = softmax(validation.logits, t)
        correct = (probs.argmax(1) == validation.truth).astype(float)
        bins = m.reliability_bins(correct, probs.max(1))
        ece = m.expected_calibration_error(correct, probs.max(1))
        curves.append(
            plots.Series(
                f"{label}, ECE {ece:.3f}", np.array([b[0] for b in bins]), np.array([b[1] for b in bins])
            )
        )
        counts.append([b[2] for b in bins])
    title = "Reliability on validation (top-1, 15 bins)"
    plots.save_png(plots.reliability_plot(curves, counts, title), folder / "reliability.png")


def ship_variants(recipe: Recipe, out_dir: Path) -> dict[str, Any]:
    run = recipe.run_dir()
    gates = json.loads((run / "gate.json").read_text())
    for old in out_dir.glob("*.onnx"):
        old.unlink()
    fp32_name = f"{recipe.name}-fp32.onnx"
    shutil.copyfile(run / fp32_name, out_dir / fp32_name)
    variants: dict[str, Any] = {
        "fp32": {
            "file": fp32_name,
            "sha256": sha256(out_dir / fp32_name),
            "precision": "fp32",
            "quantization": "none",
            "backends": ["onnxruntime", "tensorrt"],
        }
    }
    for variant, gate in gates.items():
        quantization = "qdq" if variant.endswith("qdq") else "qoperator"
        if not gate["passed"]:
            console.print(f"[red]{variant} failed its gate and is not shipped[/]: {gate}")
            continue
        shutil.copyfile(run / gate["file"], out_dir / gate["file"])
        variants[variant] = {
            "file": gate["file"],
            "sha256": sha256(out_dir / gate["file"]),
            "precision": "int8",
            "quantization": quantization,
            # TensorRT builds from explicit QDQ only; QOperator graphs are for ONNX Runtime.
            "backends": ["onnxruntime", "tensorrt"] if quantization == "qdq" else ["onnxruntime"],
            "gate": {
                k: _without_none(gate[k])
                for k in (
                    "passed",
                    "images",
                    "auc_reference",
                    "auc",
                    "auc_delta",
                    "agreement",
                    "accuracy_reference",
                    "accuracy",
                    "max_abs_logit_diff",
                    "rule",
                    "out_of_fold",
                )
                if k in gate
            },
        }
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--samples-per-class", type=int, help="default: the recipe's, else 10")
    args = parser.parse_args()
    recipe = load_recipe(args.config)
    run = recipe.run_dir()
    seed = recipe.raw["seed"]
    settings = recipe.raw.get("release", {})
    summary = json.loads((run / "summary.json").read_text())
    out_dir = REPO / "models" / recipe.name
    out_dir.mkdir(parents=True, exist_ok=True)

    with console.status("FP32 predictions for the evaluation sets, clean and under shift..."):
        sets = evaluation_sets(recipe)
        sets.update(shifted_sets(recipe, sets, seed))
    validation = sets["validation"]
    choice = choose(recipe, sets, seed)
    temperature, metrics = choice.temperature, choice.metrics
    console.print(
        f"temperature {temperature:.3f}; thresholds {choice.thresholds}; "
        f"clip thresholds {choice.clip_thresholds}"
    )
    console.print(json.dumps(metrics, indent=1))
    write_plots(out_dir / "plots", recipe, sets, temperature)
    variants = ship_variants(recipe, out_dir)
    int8 = {v: out_dir / spec["file"] for v, spec in variants.items() if spec["precision"] != "fp32"}
    measure_variants(recipe, sets, int8, choice, seed)

    # Samples: from the holdout split where there is one; a cross-validated model's final run saw
    # every image, so its samples are training images (said in the card).
    pool = sets["holdout"].samples if "holdout" in sets else validation.samples
    small = settings.get("sample_format") == "original"
    per_class = args.samples_per_class or int(settings.get("samples_per_class", 10))
    chosen = pick_samples(pool, recipe, per_class, seed, small)
    demo_png: list[Sample] = []
    demo_dcm: list[Sample] = []
    if settings.get("demo", recipe.raw.get("modality") == "xray"):
        rest = [s for s in pool if s not in chosen]
        demo = pick_samples(rest, recipe, 4, seed + 1, small)
        demo_png = [s for i, s in enumerate(demo) if i % 4 < 2]
        demo_dcm = [s for i, s in enumerate(demo) if i % 4 >= 2]
    rows = write_samples(recipe, out_dir / "samples", chosen, demo_png, demo_dcm)
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
    if recipe.data.get("cv_folds"):
        groups = len({s.group for s in validation.samples})
        split = (
            f"{recipe.data['cv_folds']}-fold cross-validation by "
            f"{recipe.data.get('group_column') or 'image'} ({len(validation.samples)} images"
            f"{f' in {groups} groups' if groups != len(validation.samples) else ''}); "
            "the shipped model is then trained on all of them"
        )
    else:
        split = (
            f"by {recipe.data.get('group_column') or 'image'}: {summary['train_images']} train / "
            f"{summary['val_images']} val / {summary['holdout_images']} holdout images"
        )
    robustness: dict[str, Any] = {"by_shift": shifts_measured(recipe, sets, choice, seed)}
    manifest = {
        "schema_version": 1,
        "name": recipe.name,
        "version": args.version,
        "title": recipe.raw["title"],
        "task": "classification",
        "description": info.get("description", ""),
        "accepts": recipe.raw.get("accepts", {}),
        "quality": recipe.raw.get("quality", {}),
        "input": {"name": "image", **recipe.raw["input"]},
        "output": {
            "logits": "logits",
            "cam": "cam",
            "labels": recipe.labels,
            "positive": recipe.positive,
            "temperature": temperature,
        },
        "default_operating_point": "balanced",
        "operating_points": manifest_operating_points(recipe, sets, choice),
        "variants": variants,
        "metrics": metrics,
        "training": {
            "recipe": str(args.config),
            "data": recipe.raw["data"]["root"],
            "split": split,
            "seed": seed,
            "epochs_run": summary["epochs_run"],
            "best_epoch": summary["best_epoch"],
            "train_seconds": _training_seconds(recipe, summary),
            "params": summary["params"],
            "gflops": round(summary["gflops"], 4),
            "torch": summary["torch"],
            "commit": git_commit(),
            "released": dt.date.today().isoformat(),
        },
        "samples": "samples",
        "robustness": robustness,
    }
    (out_dir / "model.toml").write_text(tomli_w.dumps(manifest))
    from tools.card import write_card

    if settings.get("clip_scale"):
        # Through the product's clip path, so the released folder itself is what is measured.
        try:
            with console.status("clip findings across input size, every variant..."):
                robustness["clip_scale"] = clip_stability(out_dir.parent, recipe.name, list(variants))
        except Exception as exc:
            write_card(recipe, manifest, out_dir)  # the card matches the manifest, without the check
            raise SystemExit(
                f"{recipe.name} {args.version}: the clip check failed ({exc!r}). model.toml and the card "
                "are written without it: do not publish this folder; fix the cause and release again"
            ) from exc
        (out_dir / "model.toml").write_text(tomli_w.dumps(manifest))
    write_card(recipe, manifest, out_dir)
    console.print(f"[green]released[/] {recipe.name} {args.version} into {out_dir}")


def _without_none(value: Any) -> Any:
    """TOML has no null: a gate's unmeasured fields (a parity report's `scope_ratio`) are left out."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def _training_seconds(recipe: Recipe, summary: dict[str, Any]) -> float:
    """Wall time of every run that made this release (all folds and the final model)."""
    total = float(summary["train_seconds"])
    for path in recipe.run_dir().glob("fold-*/summary.json"):
        total += float(json.loads(path.read_text())["train_seconds"])
    return round(total, 1)


if __name__ == "__main__":
    main()
