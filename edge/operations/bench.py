"""`edge bench`: where the time goes for one image, measured as ratios within one run.

Measured, each as the median of N runs at batch 1 on this machine, now:
- raw `session.run` of every servable ONNX Runtime variant (FP32, INT8 QDQ, INT8 QOperator);
- the same FP32 ONNX through OpenCV DNN (an independent runtime);
- what the applicability check adds (the `features` output and the distances);
- the product's full path (read + decode + route + durable store + preprocess + infer +
  applicability check + postprocess + result and outbox commit) for each kind of sample the
  model ships (PNG, JPEG, DICOM), per variant, each run on a distinct file so that
  de-duplication cannot short-cut it.
Absolute times on a shared machine are noise; the ratios between figures of one run are not.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from edge.config import Settings
from edge.device import Device
from edge.errors import Code, EdgeError
from edge.imaging.decode import decode_bytes
from edge.imaging.png import with_text
from edge.imaging.preprocess import preprocess
from edge.inference.pool import ModelPool, tensor_names
from edge.inference.registry import ModelEntry, Registry
from edge.runtime.onnxruntime import OnnxRuntimeRunner

WARMUP = 5


def sample_ms(fn: Callable[[], object], runs: int, warmup: int = WARMUP) -> list[float]:
    """`fn` run `warmup` times unmeasured (lazy allocations, clocks ramping up), then `runs`
    times, each timed in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def timed(fn: Callable[[], object], runs: int, warmup: int = WARMUP) -> dict[str, float]:
    samples = sorted(sample_ms(fn, runs, warmup))
    return {
        "median_ms": round(statistics.median(samples), 4),
        "p95_ms": round(samples[min(len(samples) - 1, int(0.95 * len(samples)))], 4),
        "runs": runs,
    }


def png_variants(data: bytes, count: int, tag: str = "") -> list[bytes]:
    """The same PNG with a distinct tEXt chunk each: same pixels, distinct bytes and sha256."""
    return [with_text(data, "bench", f"{tag}{index}") for index in range(count)]


def jpeg_variants(data: bytes, count: int, tag: str = "") -> list[bytes]:
    """The same JPEG with a distinct comment (COM) segment each: same pixels, distinct sha256."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    out = []
    for index in range(count):
        comment = f"bench {tag}{index}".encode()
        out.append(data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:])
    return out


def dicom_variants(data: bytes, count: int, tag: str = "") -> list[bytes]:
    """The same DICOM with a fresh SOP Instance UID each (as every new acquisition has)."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(data))
    out = []
    for _ in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


Variants = Callable[[bytes, int, str], list[bytes]]
INPUT_KINDS: tuple[tuple[str, tuple[str, ...], Variants], ...] = (
    ("png", (".png",), png_variants),
    ("jpeg", (".jpg", ".jpeg"), jpeg_variants),
    ("dicom", (".dcm",), dicom_variants),
)


def sample_inputs(entry: ModelEntry) -> list[tuple[str, Path, Variants]]:
    """One shipped sample of each kind the model has (an ultrasound model may ship JPEG only)."""
    found = []
    for kind, suffixes, make in INPUT_KINDS:
        path = next((p for p, _label in entry.samples if p.suffix.lower() in suffixes), None)
        if path is not None:
            found.append((kind, path, make))
    if not found:
        raise EdgeError(Code.INPUT_NOT_FOUND, f"{entry.name} ships no PNG, JPEG or DICOM sample to benchmark")
    return found


def _opencv_dnn(path: Path, batch: np.ndarray, output: str, runs: int) -> dict[str, Any]:
    import cv2

    try:
        net = cv2.dnn.readNetFromONNX(str(path))
        net.setInput(batch)
        reference = net.forward(output)
    except cv2.error as exc:
        return {"error": str(exc).strip().splitlines()[-1][:200]}

    def run() -> None:
        net.setInput(batch)
        net.forward(output)

    return {**timed(run, runs), "first_logits": [round(float(v), 5) for v in np.ravel(reference)[:4]]}


def run_bench(settings: Settings, model_name: str, runs: int) -> dict[str, Any]:
    registry = Registry(settings.models.dir)
    entry = registry.get(model_name)
    spec = entry.manifest.input.preprocess_spec()
    names = tensor_names(entry)
    inputs = sample_inputs(entry)
    batch = preprocess(decode_bytes(inputs[0][1].read_bytes()).pixels, spec)[np.newaxis]
    variants = [n for n, v in entry.manifest.variants.items() if v.servable and "onnxruntime" in v.backends]
    report: dict[str, Any] = {
        "model": entry.name,
        "version": entry.manifest.version,
        "machine": f"{platform.machine()}, Python {platform.python_version()}, "
        f"threads={settings.runtime.threads or 'all'}",
        "runs": runs,
        "raw": {},
        "opencv_dnn": {},
        "full_path": {},
    }
    for variant in variants:
        runner = OnnxRuntimeRunner(entry.variant_file(variant), names, settings.runtime)
        try:
            report["raw"][variant] = timed(
                partial(runner.session.run, [names.outputs[0]], {names.input: batch}), runs
            )
        finally:
            runner.close()
    fp32 = next(n for n in variants if entry.manifest.variants[n].precision == "fp32")
    report["applicability"] = _applicability_cost(entry, fp32, batch, settings, runs)
    report["opencv_dnn"]["fp32"] = _opencv_dnn(entry.variant_file(fp32), batch, names.outputs[0], runs)
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        bench_settings = settings.model_copy(update={"data_dir": Path(tmp) / "data"})
        with Device(bench_settings, actor="bench", registry=registry) as device:
            for variant in variants:
                device.pool.pin(device.pool.load_variant(entry.name, variant))
                for kind, source, make in inputs:
                    folder = Path(tmp) / "inputs" / variant / kind
                    blobs = make(source.read_bytes(), runs + WARMUP, variant)
                    queue = iter(_write_all(folder, blobs, source.suffix))
                    step = partial(_analyse_next, device, queue, entry.name)
                    report["full_path"].setdefault(kind, {})[variant] = timed(step, runs)
    report["auto_choice"] = _auto_choice(registry, settings, entry.name)
    report["ratios"] = ratios(report, fp32)
    return report


def _applicability_cost(
    entry: ModelEntry, variant: str, batch: np.ndarray, settings: Settings, runs: int
) -> dict[str, Any]:
    """What the applicability check adds: the `features` output (the same session run asked for
    one more output) and the distances in numpy (edge/inference/scope.py)."""
    check = entry.scope_check()
    spec = entry.manifest.applicability
    if check is None or spec is None:
        return {}
    names = tensor_names(entry)
    feed = {names.input: batch}
    others = [name for name in names.outputs if name != spec.features]
    runner = OnnxRuntimeRunner(entry.variant_file(variant), names, settings.runtime)
    try:
        without = timed(partial(runner.session.run, others, feed), runs)
        with_features = timed(partial(runner.session.run, list(names.outputs), feed), runs)
        features = runner.session.run([spec.features], feed)[0]
    finally:
        runner.close()
    judge = timed(partial(check.judge, features), runs)
    added = max(0.0, with_features["median_ms"] - without["median_ms"]) + judge["median_ms"]
    return {
        "variant": variant,
        "session_without_features": without,
        "session_with_features": with_features,
        "judge": judge,
        "added_ms": round(added, 4),
    }


def _write_all(folder: Path, blobs: list[bytes], suffix: str) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for index, blob in enumerate(blobs):
        path = folder / f"{index}{suffix}"
        path.write_bytes(blob)
        paths.append(path)
    return paths


def _analyse_next(device: Device, queue: Iterator[Path], model: str) -> None:
    analyses = device.analyse_file(next(queue), model, source="bench")
    if analyses[0].duplicate:
        raise RuntimeError("bench input was a duplicate: the full path was not measured")
    if not analyses[0].ok:
        raise EdgeError(Code(analyses[0].code), analyses[0].message or "bench input refused")


def _auto_choice(registry: Registry, settings: Settings, name: str) -> str:
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        auto = settings.model_copy(
            update={"runtime": settings.runtime.model_copy(update={"precision": "auto"})}
        )
        pool = ModelPool(registry, auto, Path(tmp))
        try:
            return pool.get(name).variant_name
        finally:
            pool.close()


def ratios(report: dict[str, Any], fp32: str) -> dict[str, float]:
    raw = {k: v["median_ms"] for k, v in report["raw"].items()}
    out: dict[str, float] = {}
    for variant, ms in raw.items():
        if variant != fp32:
            out[f"{variant}/fp32 (raw)"] = round(ms / raw[fp32], 3)
        for kind, per_variant in report["full_path"].items():
            if variant in per_variant:
                out[f"pipeline {kind}/raw ({variant})"] = round(per_variant[variant]["median_ms"] / ms, 3)
    applicability = report.get("applicability") or {}
    for kind, per_variant in report["full_path"].items():
        if applicability.get("variant") in per_variant:
            full = per_variant[applicability["variant"]]["median_ms"]
            out[f"applicability check/full path ({kind}, {applicability['variant']})"] = round(
                applicability["added_ms"] / full, 3
            )
    dnn = report["opencv_dnn"].get("fp32", {})
    if "median_ms" in dnn:
        out["onnxruntime/opencv-dnn (fp32 raw)"] = round(raw[fp32] / dnn["median_ms"], 3)
    return out


def print_report(console: Console, report: dict[str, Any]) -> None:
    console.print(
        f"[bold]edge bench[/]: {report['model']} {report['version']} on {report['machine']}; "
        f"median of {report['runs']} runs, batch 1"
    )
    table = Table("measurement", "variant", "median ms", "p95 ms")
    for variant, t in report["raw"].items():
        table.add_row("raw session.run", variant, f"{t['median_ms']:.3f}", f"{t['p95_ms']:.3f}")
    for variant, t in report["opencv_dnn"].items():
        if "median_ms" in t:
            table.add_row("OpenCV DNN", variant, f"{t['median_ms']:.3f}", f"{t['p95_ms']:.3f}")
        else:
            table.add_row("OpenCV DNN", variant, "[red]cannot run[/]", t["error"])
    for kind, per_variant in report["full_path"].items():
        for variant, t in per_variant.items():
            table.add_row(f"full path ({kind})", variant, f"{t['median_ms']:.3f}", f"{t['p95_ms']:.3f}")
    applicability = report.get("applicability") or {}
    if applicability:
        variant = applicability["variant"]
        for label, key in (
            ("session.run without features", "session_without_features"),
            ("session.run with features", "session_with_features"),
            ("applicability distances (numpy)", "judge"),
        ):
            t = applicability[key]
            table.add_row(label, variant, f"{t['median_ms']:.3f}", f"{t['p95_ms']:.3f}")
    console.print(table)
    ratios_table = Table("ratio", "value")
    for name, value in report["ratios"].items():
        ratios_table.add_row(name, f"{value:.3f}")
    console.print(ratios_table)
    slower = [k for k, v in report["ratios"].items() if k.endswith("/fp32 (raw)") and v > 1]
    for name in slower:
        console.print(f"[yellow]{name.split('/')[0]} is slower than FP32 on this CPU[/]")
    console.print(
        f"precision=auto serves: [bold]{report['auto_choice']}[/] (fastest variant that passed "
        f"its accuracy gate, FP32 unless another is >10% faster)"
    )
