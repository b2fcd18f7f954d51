"""`edge models eval`: a model's accuracy on a labelled folder, through the product's own path.

This is how a site validates a model locally before use (WHO advises local threshold calibration
for CAD software), and how the model cards' numbers can be re-checked: the same decoder,
preprocessing, backend, calibration and thresholds as in service, so what it reports is what the
site will get. Nothing is written to the clinic's database.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.imaging.decode import decode_bytes, read_input
from edge.inference import gate, orientation, plots
from edge.inference import metrics as m
from edge.inference.labels_table import read_labels
from edge.inference.pool import ModelPool
from edge.inference.postprocess import softmax
from edge.inference.registry import Registry

BATCH = 16
BOOTSTRAP_ROUNDS = 1000


@dataclass
class Evaluation:
    model: str
    version: str
    variant: str
    backend: str
    operating_point: str
    threshold: float
    images: int
    refused: list[dict[str, str]] = field(default_factory=list)
    temperature: float = 1.0
    profile_id: str | None = None
    """The site profile whose temperature and threshold were used (None: the shipped ones)."""
    every_image: bool = False
    """Images the applicability check refuses were scored too (as a model card counts them);
    otherwise they are left out and listed, as in service, where they get no result."""
    repeated: int = 0
    """Lines of labels.csv that listed an image again under the same label (counted once)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def evaluate(
    settings: Settings,
    name: str,
    folder: Path,
    out_dir: Path,
    *,
    variant: str | None = None,
    operating_point: str | None = None,
    every_image: bool = False,
) -> Evaluation:
    registry = Registry(settings.models.dir)
    entry = registry.get(name)
    labels = entry.manifest.output.labels
    table = read_labels(folder, labels)
    rows = table.rows
    pool = ModelPool(registry, settings, settings.data_dir / "cache")
    try:
        served = pool.load_variant(name, variant) if variant else pool.get(name)
        # What serves here: the site profile in force, if any, else the manifest's calibration.
        temperature, op_name, op, profile_id = served.calibration(
            operating_point or settings.models.operating_point
        )
        # As in service, where an image the gate or the applicability check refuses gets no
        # result (and as `edge models calibrate` counts the same folder), unless every image is
        # asked for.
        logits, truth, kept, refused = _run(served, rows, settings, labels, every_image=every_image)
    finally:
        pool.close()
    result = Evaluation(
        name,
        entry.manifest.version,
        served.variant_name,
        served.backend,
        op_name,
        op.threshold,
        len(kept),
        refused,
        temperature,
        profile_id,
        every_image,
        table.repeated,
    )
    if not kept:
        why = ", ".join(sorted({item["code"] for item in refused}))
        hint = "; --every-image scores those out of scope" if "OUT_OF_SCOPE" in why else ""
        raise EdgeError(
            Code.INPUT_NOT_IMAGE, f"none of the {len(rows)} images could be analysed ({why}){hint}"
        )
    positive = labels.index(entry.manifest.output.positive)
    probs = softmax(logits, temperature)
    raw = softmax(logits)
    result.metrics = _metrics(truth, probs, raw, positive, op.threshold, len(labels))
    out_dir.mkdir(parents=True, exist_ok=True)
    result.files = _write_outputs(out_dir, kept, truth, probs, raw, positive, labels, result)
    return result


@dataclass
class Scored:
    """A labelled folder as the served model scored it (`edge models calibrate`)."""

    logits: np.ndarray
    truth: np.ndarray
    kept: list[Path]
    refused: list[dict[str, str]]
    variant: str
    backend: str
    repeated: int = 0
    """Lines of labels.csv that listed an image again under the same label (counted once)."""
    table_digest: str = ""
    """sha256 of the labels.csv read."""


def score_folder(settings: Settings, name: str, folder: Path) -> Scored:
    """Raw logits of every image of a labelled folder through the served model (the path of
    `edge models eval`); images the applicability check refuses (OUT_OF_SCOPE, as in service,
    where they get no result) or the gate refuses (its metadata and quality checks, as in
    service) are left out with their code, like undecodable ones: a site's threshold fitted on
    films the device gives no result for (a blurred site's, 9 in 10) is fitted on the wrong
    films."""
    registry = Registry(settings.models.dir)
    labels = registry.get(name).manifest.output.labels
    table = read_labels(folder, labels)
    rows = table.rows
    pool = ModelPool(registry, settings, settings.data_dir / "cache")
    try:
        served = pool.get(name)
        logits, truth, kept, refused = _run(served, rows, settings, labels)
    finally:
        pool.close()
    return Scored(
        logits, truth, kept, refused, served.variant_name, served.backend, table.repeated, table.digest
    )


def _run(
    served: Any,
    rows: list[tuple[Path, str]],
    settings: Settings,
    labels: list[str],
    *,
    every_image: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[Path], list[dict[str, str]]]:
    """Every row's logits through `served`, but for those service gives no result (`every_image`:
    all that decode), which are `refused` with their code, as the pipeline would record it."""
    gated = settings.gate.enabled and not every_image
    refuse_out_of_scope = settings.gate.refuses_out_of_scope and not every_image
    manifest = served.entry.manifest
    logits: list[np.ndarray] = []
    truth: list[int] = []
    kept: list[Path] = []
    refused: list[dict[str, str]] = []
    for start in range(0, len(rows), BATCH):
        images, batch_rows = [], []
        for path, label in rows[start : start + BATCH]:
            try:
                images.append(decode_bytes(read_input(path, settings.store.max_input_bytes), path.name))
                batch_rows.append((path, label))
            except EdgeError as error:
                refused.append(
                    {"path": str(path), "code": error.code.value, "reason": error.message, "by": "decoder"}
                )
        if not images:
            continue
        predictions = served.predict([decoded.pixels for decoded in images])
        for (path, label), decoded, given in zip(batch_rows, images, predictions, strict=True):
            verdict = gate.check(decoded, manifest) if gated else None
            refusal: EdgeError | None
            prediction = given
            if verdict is not None and not verdict.passed:
                scope_refusal = served.out_of_scope(given.scope, refuse_out_of_scope)
                refusal = gate.refusal_in_service(verdict, lambda: scope_refusal)  # noqa: B023 - called now
            else:  # as the pipeline reads a picture the gate passed (a thin frame read through)
                prediction, refusal = orientation.judged(served, decoded.pixels, given, refuse_out_of_scope)
            if refusal is not None:  # what service refuses: the gate's codes, or OUT_OF_SCOPE
                refused.append(
                    {"path": str(path), "code": refusal.code.value, "reason": refusal.message, "by": "gate"}
                )
                continue
            logits.append(prediction.outputs[served.entry.manifest.output.logits])
            truth.append(labels.index(label))
            kept.append(path)
    return np.array(logits), np.array(truth), kept, refused


def _with_interval(statistic: Any, *arrays: np.ndarray, right: np.ndarray | None = None) -> dict[str, float]:
    """`right`: a proportion's cases, each read right or not (its interval exact at 0 and 1)."""
    value = float(statistic(*arrays))
    found = m.bootstrap_interval(statistic, *arrays, rounds=BOOTSTRAP_ROUNDS, seed=0)
    low, high = found if right is None else m.widened_at_bounds(found, right)
    return {"value": round(value, 4), "ci95_low": round(low, 4), "ci95_high": round(high, 4)}


def _metrics(
    truth: np.ndarray, probs: np.ndarray, raw: np.ndarray, positive: int, threshold: float, classes: int
) -> dict[str, Any]:
    is_positive = truth == positive
    p_positive = probs[:, positive]
    predicted_positive = p_positive >= threshold

    def sensitivity(t: np.ndarray, p: np.ndarray) -> float:
        return float(p[t].mean()) if t.any() else float("nan")

    def specificity(t: np.ndarray, p: np.ndarray) -> float:
        return float((~p[~t]).mean()) if (~t).any() else float("nan")

    def accuracy(t: np.ndarray, p: np.ndarray) -> float:
        return float((t == p).mean())

    def ece(t: np.ndarray, pr: np.ndarray) -> float:
        return m.expected_calibration_error(pr.argmax(1) == t, pr.max(1))

    out: dict[str, Any] = {
        "positives": int(is_positive.sum()),
        "negatives": int((~is_positive).sum()),
        "auc": _with_interval(m.roc_auc, is_positive, p_positive),
        "sensitivity": _with_interval(
            sensitivity, is_positive, predicted_positive, right=predicted_positive[is_positive]
        ),
        "specificity": _with_interval(
            specificity, is_positive, predicted_positive, right=~predicted_positive[~is_positive]
        ),
        "accuracy": _with_interval(
            accuracy, is_positive, predicted_positive, right=predicted_positive == is_positive
        ),
        "ece": _with_interval(ece, truth, probs),
        "ece_uncalibrated": round(m.expected_calibration_error(raw.argmax(1) == truth, raw.max(1)), 4),
    }
    if classes > 2:
        out["accuracy_top1"] = _with_interval(accuracy, truth, probs.argmax(1))
    return out


def _write_outputs(
    out_dir: Path,
    kept: list[Path],
    truth: np.ndarray,
    probs: np.ndarray,
    raw: np.ndarray,
    positive: int,
    labels: list[str],
    result: Evaluation,
) -> dict[str, str]:
    is_positive = truth == positive
    fpr, tpr, _ = m.roc_curve(is_positive, probs[:, positive])
    auc = result.metrics["auc"]["value"]
    roc = plots.roc_plot(
        [plots.Series(f"{labels[positive]} vs rest, AUC {auc:.3f}", fpr, tpr)],
        f"{result.model} {result.version} ({result.variant}) ROC, n={len(truth)}",
    )
    files = {
        "roc": out_dir / "roc.png",
        "reliability": out_dir / "reliability.png",
        "predictions": out_dir / "predictions.csv",
        "metrics": out_dir / "metrics.json",
    }
    plots.save_png(roc, files["roc"])
    series, counts = [], []
    for label, matrix in (("uncalibrated", raw), ("calibrated", probs)):
        bins = m.reliability_bins((matrix.argmax(1) == truth).astype(float), matrix.max(1))
        series.append(
            plots.Series(
                f"{label}, ECE {m.expected_calibration_error(matrix.argmax(1) == truth, matrix.max(1)):.3f}",
                np.array([b[0] for b in bins]),
                np.array([b[1] for b in bins]),
            )
        )
        counts.append([b[2] for b in bins])
    plots.save_png(
        plots.reliability_plot(series, counts, "Reliability (top-1 confidence, 15 bins)"),
        files["reliability"],
    )
    with files["predictions"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", *[f"p_{label}" for label in labels]])
        for path, t, row in zip(kept, truth, probs, strict=True):
            writer.writerow([str(path), labels[t], *[f"{v:.6f}" for v in row]])
    summary = {k: v for k, v in result.__dict__.items() if k != "files"}
    files["metrics"].write_text(json.dumps(summary, indent=2))
    return {k: str(v) for k, v in files.items()}
