"""The TensorRT sections of `tools.verify_device`, one model at a time, through the product's
own engine manager and runner (so what is verified is what serves), in a throw-away cache.

Order per model: parse -> build (INT8 from QDQ, FP16, FP32) -> rebuild with the timing cache ->
parity vs ONNX Runtime -> batches -> threads -> warm latency -> open/close -> corrupt engine.
A section that needs an engine skips, naming the section that did not make one. Everything
TensorRT-specific the sections call is in `TensorRTHooks`, so the tests run the same sections
against the suite's doubles (ONNX bytes as "engines", ONNX Runtime as the runner).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.imaging.decode import decode_bytes
from edge.imaging.preprocess import preprocess_batch
from edge.inference.engine_cache import Attempt
from edge.inference.engine_manager import EngineManager
from edge.inference.local_parity import judge, reference_variant, sample_batch
from edge.inference.pool import ServedModel, tensor_names
from edge.inference.registry import ModelEntry
from edge.runtime.base import Runner
from edge.runtime.onnxruntime import OnnxRuntimeRunner
from tools.verify_hooks import TensorRTHooks, dequantize_inputs
from tools.verify_report import (
    ENGINE_NOT_RECOVERED,
    GPU_MEMORY_DRIFT,
    RESULTS_DIFFER,
    CheckFailed,
    Skip,
    timed_ms,
)
from tools.verify_sections import Baseline, Reps, heatmap_differences

# A leak shows as free memory falling with every cycle; one lost input buffer (8 x 224 x 224
# floats, 1.5 MiB) per cycle is 75 MiB after 50. Noise from other processes stays well below.
DRIFT_LIMIT_MIB = 64.0
# One engine, one context, one shape runs the same kernels: results from threads must equal
# the single-threaded ones to float noise; more means threads overwrote each other's buffers.
THREAD_TOLERANCE = 1e-4


class ModelChecks:
    """The TensorRT sections for one model; each method is one section and returns its data."""

    def __init__(
        self,
        entry: ModelEntry,
        settings: Settings,
        hooks: TensorRTHooks,
        reps: Reps,
        console: Console,
        baseline: Baseline | None = None,
    ) -> None:
        self.entry, self.settings, self.hooks, self.reps, self.console = entry, settings, hooks, reps, console
        self.names = tensor_names(entry)
        self.manager = EngineManager(
            settings, builder=hooks.builder, runner_factory=hooks.runner_factory, identity=hooks.identity
        )
        self._baseline = baseline
        self.engines: dict[str, tuple[Attempt, Path]] = {}
        self.build_seconds: dict[str, float] = {}
        self.parity_passed: dict[str, bool] = {}

    # ------------------------------------------------------------------ helpers

    def open_runner(self, engine: Path) -> Runner:
        if self.hooks.runner_factory is not None:
            return self.hooks.runner_factory(engine, self.names)
        from edge.runtime.tensorrt import TensorRTRunner

        return TensorRTRunner(engine, self.names, self.settings.runtime)

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.entry.samples:
            raise Skip(f"{self.entry.name} ships no sample images")
        if self._baseline is None:
            batch, truth = sample_batch(self.entry, Code.ENGINE_PARITY_FAILED)
            return batch, truth
        return self._baseline.batch, self._baseline.truth

    def need_engines(self) -> None:
        if not self.engines:
            raise Skip("no engine was built (see tensorrt.build)")

    def serving(self) -> tuple[str, Attempt, Path]:
        """The engine the device would serve: the first built that passed parity, else the first."""
        self.need_engines()
        passed = [p for p in self.engines if self.parity_passed.get(p)]
        precision = (passed or list(self.engines))[0]
        return (precision, *self.engines[precision])

    def _timing_caches(self) -> dict[str, int]:
        return {p.name: p.stat().st_size for p in sorted(self.manager.cache.folder.glob("timing-*"))}

    @contextlib.contextmanager
    def _progress(self, label: str) -> Iterator[Callable[[str, float], None]]:
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[phase]}"))
        with Progress(*columns, TimeElapsedColumn(), console=self.console, transient=True) as bar:
            task = bar.add_task(label, total=1.0, phase="starting")
            yield lambda phase, fraction: bar.update(task, completed=fraction, phase=phase[:40])

    # ------------------------------------------------------------------ sections

    def parse(self) -> dict[str, Any]:
        """Each QDQ and FP32 file through TensorRT's ONNX parser."""
        results: dict[str, Any] = {}
        problems = []
        for name, variant in self.entry.manifest.variants.items():
            if "tensorrt" not in variant.backends or variant.quantization == "qoperator":
                continue
            path = self.entry.variant_file(name, verify=self.settings.models.verify_checksums)
            facts: dict[str, Any] = {"file": path.name, **dequantize_inputs(path)}
            try:
                facts.update(self.hooks.parse(path, variant.quantization == "qdq"))
            except EdgeError as error:
                facts["error"] = error.message
                problems.append(f"{name}: {error.message}")
            results[name] = facts
        if problems:
            raise CheckFailed(
                Code.ENGINE_BUILD_FAILED.value, "; ".join(problems)[:500], {"variants": results}
            )
        layers = ", ".join(f"{n} {f.get('layers', '?')} layers" for n, f in results.items())
        return {"variants": results, "headline": layers}

    def build(self) -> dict[str, Any]:
        """Every engine of the plan, forced (a cold build is what is timed), with progress."""
        results: dict[str, Any] = {}
        problems = []
        # The manager's plan: the version gate first, then what this TensorRT flavour builds.
        for attempt in self.manager.plan(self.entry, "auto"):
            before = sum(self._timing_caches().values())
            phases: set[str] = set()
            started = time.monotonic()
            with self._progress(f"{self.entry.name} {attempt.precision}") as show:

                def progress(phase: str, fraction: float, show: Any = show, phases: set = phases) -> None:
                    phases.add(phase)
                    show(phase, fraction)

                try:
                    engine = self.manager.ensure(self.entry, attempt, force=True, progress=progress)
                except EdgeError as error:
                    seconds = round(time.monotonic() - started, 2)
                    results[attempt.precision] = {"variant": attempt.variant, "seconds": seconds}
                    results[attempt.precision]["error"] = error.one_line()
                    problems.append(f"{attempt.precision}: {error.message}")
                    continue
            self.build_seconds[attempt.precision] = time.monotonic() - started
            self.engines[attempt.precision] = (attempt, engine)
            results[attempt.precision] = {
                "variant": attempt.variant,
                "seconds": round(self.build_seconds[attempt.precision], 2),
                "bytes": engine.stat().st_size,
                "progress_phases": sorted(phases),
                "timing_cache_bytes_before": before,
            }
        data = {"engines": results}
        if problems:
            raise CheckFailed(Code.ENGINE_BUILD_FAILED.value, "; ".join(problems)[:500], data)
        data["headline"] = ", ".join(f"{p} {r['seconds']:.0f} s" for p, r in results.items())
        return data

    def timing_cache(self) -> dict[str, Any]:
        """The first engine built again: the timing cache its build wrote should save time."""
        self.need_engines()
        precision, (attempt, _) = next(iter(self.engines.items()))
        started = time.monotonic()
        self.manager.ensure(self.entry, attempt, force=True)
        rebuild = time.monotonic() - started
        first = self.build_seconds[precision]
        return {
            "precision": precision,
            "first_build_s": round(first, 2),
            "rebuild_s": round(rebuild, 2),
            "saved_s": round(first - rebuild, 2),
            "saved_fraction": round((first - rebuild) / first, 3) if first > 0 else None,
            "timing_cache_files": self._timing_caches(),
            "headline": f"{precision} {first:.1f} s -> {rebuild:.1f} s",
        }

    def parity(self) -> dict[str, Any]:
        """Each engine against ONNX Runtime on the samples: against its own source file (the
        product's gate) and against FP32 (what the reader's result is held to)."""
        self.need_engines()
        batch, truth = self.samples()
        logits = self.entry.manifest.output.logits
        cam = self.entry.manifest.output.cam
        references: dict[str, dict[str, np.ndarray]] = {}

        def reference(variant: str) -> dict[str, np.ndarray]:
            if variant not in references:
                path = self.entry.variant_file(variant, verify=self.settings.models.verify_checksums)
                with OnnxRuntimeRunner(path, self.names, self.settings.runtime) as runner:
                    references[variant] = runner.infer(batch)
            return references[variant]

        fp32 = reference_variant(self.entry, "onnxruntime") or "fp32"
        results: dict[str, Any] = {}
        problems = []
        for precision, (attempt, engine) in self.engines.items():
            with self.open_runner(engine) as runner:
                got = runner.infer(batch)
            source = reference(attempt.variant)
            verdict = judge(self.entry, source[logits], got[logits], truth)
            self.parity_passed[precision] = verdict.passed
            results[precision] = {
                "variant": attempt.variant,
                "vs_source": verdict.as_dict(),
                "vs_fp32": judge(self.entry, reference(fp32)[logits], got[logits], truth).as_dict(),
                **heatmap_differences(
                    self.entry, source.get(cam) if cam else None, got.get(cam) if cam else None
                ),
            }
            if not verdict.passed:
                worst = verdict.max_abs_logit_diff
                problems.append(f"{precision}: agreement {verdict.agreement}, max |logit diff| {worst}")
        data = {"images": len(batch), "engines": results}
        if problems:
            raise CheckFailed(Code.ENGINE_PARITY_FAILED.value, "; ".join(problems), data)
        data["headline"] = (
            ", ".join(f"{p} {r['vs_source']['max_abs_logit_diff']:.3g}" for p, r in results.items())
            + " max |logit diff|"
        )
        return data

    def batches(self) -> dict[str, Any]:
        """Batches 1, 8, max_batch and one past it (split by the runner): each image's logits
        must match its batch-1 result within the manifest's parity tolerance."""
        self.need_engines()
        batch, _ = self.samples()
        logits = self.entry.manifest.output.logits
        labels = len(self.entry.manifest.output.labels)
        max_batch = self.settings.runtime.max_batch
        sizes = [*sorted({1, 8, max_batch}), max_batch + 3]
        tolerance = self.entry.manifest.parity.max_abs_logit_diff
        results: dict[str, Any] = {}
        problems = []
        for precision, (_, engine) in self.engines.items():
            per_size: dict[str, Any] = {}
            with self.open_runner(engine) as runner:
                singles = np.concatenate([runner.infer(batch[i : i + 1])[logits] for i in range(len(batch))])
                for size in sizes:
                    rows = np.arange(size) % len(batch)
                    tiled = np.ascontiguousarray(batch[rows])
                    got = runner.infer(tiled)[logits]
                    if got.shape != (size, labels):
                        problems.append(f"{precision} batch {size}: logits {got.shape}")
                        continue
                    diff = float(np.abs(got - singles[rows]).max())
                    timing = timed_ms(
                        lambda t=tiled, r=runner: r.infer(t), max(3, self.reps.warm_calls // 20), 1
                    )
                    per_size[str(size)] = {
                        "max_abs_logit_diff_vs_batch1": round(diff, 6),
                        **timing,
                        "ms_per_image": round(float(timing["median_ms"]) / size, 4),
                    }
                    if diff > tolerance:
                        problems.append(f"{precision} batch {size}: max |logit diff| {diff:.3g} vs batch 1")
            results[precision] = per_size
        data = {"sizes": sizes, "tolerance": tolerance, "engines": results}
        if problems:
            raise CheckFailed(RESULTS_DIFFER, "; ".join(problems), data)
        data["headline"] = f"batches {', '.join(map(str, sizes))} agree with batch 1"
        return data

    def threads(self) -> dict[str, Any]:
        """Threads sharing one runner, each call checked against the single-threaded result."""
        precision, _, engine = self.serving()
        batch, _ = self.samples()
        count, calls = self.reps.threads, self.reps.thread_calls
        worst, mismatched, errors = [0.0], [0], []
        lock = threading.Lock()
        with self.open_runner(engine) as runner:
            expected = [runner.infer(batch[i : i + 1]) for i in range(len(batch))]

            def work(offset: int) -> None:
                try:
                    for call in range(calls):
                        index = (offset + call * count) % len(batch)
                        got = runner.infer(batch[index : index + 1])
                        diff = max(float(np.abs(got[n] - expected[index][n]).max()) for n in got)
                        with lock:
                            worst[0] = max(worst[0], diff)
                            mismatched[0] += diff > THREAD_TOLERANCE
                except Exception as exc:  # noqa: BLE001 - reported, not raised in a thread
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")

            started = time.monotonic()
            pool = [threading.Thread(target=work, args=(offset,)) for offset in range(count)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            seconds = time.monotonic() - started
        data = {
            "precision": precision,
            "threads": count,
            "calls_per_thread": calls,
            "max_abs_diff": worst[0],
            "mismatched_calls": mismatched[0],
            "errors": errors[:5],
            "calls_per_s": round(count * calls / seconds, 1) if seconds > 0 else None,
        }
        if errors or mismatched[0]:
            message = f"{mismatched[0]} calls differ (max {worst[0]:.3g}), {len(errors)} raised"
            raise CheckFailed(RESULTS_DIFFER, f"{message}: {errors[:1]}", data)
        data["headline"] = f"{count} x {calls} calls on {precision}, all equal to single-threaded"
        return data

    def latency(self) -> dict[str, Any]:
        """Warm batch-1 calls per engine: TensorRT execution alone, the runner's `infer`
        (copies in and out), and `ServedModel.predict` (preprocess + infer + decide)."""
        self.need_engines()
        path, _ = self.entry.samples[0] if self.entry.samples else (None, None)
        if path is None:
            raise Skip(f"{self.entry.name} ships no sample images")
        image = decode_bytes(path.read_bytes(), path.name).pixels
        one = preprocess_batch([image], self.entry.manifest.input.preprocess_spec())
        runs, warmup = self.reps.warm_calls, self.reps.warmup
        results: dict[str, Any] = {}
        for precision, (attempt, engine) in self.engines.items():
            variant = self.entry.manifest.variants[attempt.variant]
            served = ServedModel(
                self.entry, attempt.variant, self.open_runner(engine), variant.sha256, precision
            )
            try:
                infer = timed_ms(lambda s=served: s.runner.infer(one), runs, warmup)
                predict = timed_ms(lambda s=served: s.predict([image]), runs, warmup)
            finally:
                served.close()
            results[precision] = {"execute_only": self._execute_only(engine, one), "infer": infer}
            results[precision]["predict"] = predict
        first = next(iter(results.items()))
        execute = first[1]["execute_only"].get("median_ms")
        return {
            "calls": runs,
            "engines": results,
            "headline": f"{first[0]} median execute {execute if execute is not None else 'n/a'} ms, "
            f"infer {first[1]['infer']['median_ms']} ms, predict {first[1]['predict']['median_ms']} ms",
        }

    def _execute_only(self, engine: Path, one: np.ndarray) -> dict[str, Any]:
        if self.hooks.execute_only is None:
            return {"unavailable": "no TensorRT execution timer with these runners"}
        with self.hooks.execute_only(engine, self.names, one, self.settings) as execute:
            return timed_ms(execute, self.reps.warm_calls, self.reps.warmup)

    def open_close(self) -> dict[str, Any]:
        """Open, run once and close the engine repeatedly, reading free GPU memory after each."""
        precision, _, engine = self.serving()
        batch, _ = self.samples()
        readings = [self.hooks.free_memory()]
        for _ in range(self.reps.open_close):
            with self.open_runner(engine) as runner:
                runner.infer(batch[:1])
            readings.append(self.hooks.free_memory())
        data: dict[str, Any] = {"precision": precision, "cycles": self.reps.open_close}
        if any(r is None for r in readings):
            data["free_memory"] = "cannot be read here (cuda-python is needed for cudaMemGetInfo)"
            data["headline"] = f"{self.reps.open_close} cycles; free memory not readable"
            return data
        mib = [r / 2**20 for r in readings if r is not None]
        # The first open loads CUDA's libraries and TensorRT's kernels for the process: the
        # drift is counted from after it.
        drift = mib[1] - mib[-1]
        data.update(
            free_mib=[round(m, 1) for m in mib],
            first_open_mib=round(mib[0] - mib[1], 1),
            drift_mib=round(drift, 1),
            limit_mib=DRIFT_LIMIT_MIB,
        )
        if drift > DRIFT_LIMIT_MIB:
            cycles = self.reps.open_close - 1
            raise CheckFailed(
                GPU_MEMORY_DRIFT, f"free GPU memory fell by {drift:.0f} MiB over {cycles} cycles", data
            )
        data["headline"] = f"drift {drift:+.1f} MiB over {self.reps.open_close} cycles"
        return data

    def corrupt_engine(self) -> dict[str, Any]:
        """The serving engine's cached file cut in half, then the model served again through the
        engine manager: the manager must move the cut file aside (`*.engine.bad`), rebuild that
        precision once and serve it again (not fall back to another precision, not fail)."""
        self.need_engines()
        runner, attempt = self.manager.serve(self.entry, self.names)
        runner.close()
        engine = self.manager.cache.engine_path(self.manager.key(self.entry, attempt))
        original = engine.read_bytes()
        cut = len(original) // 2
        engine.write_bytes(original[:cut])
        bad = engine.with_name(engine.name + ".bad")
        bad.unlink(missing_ok=True)  # only the one this section makes counts
        data: dict[str, Any] = {
            "precision": attempt.precision,
            "engine": engine.name,
            "bytes": len(original),
            "truncated_to": cut,
        }
        try:
            runner, after = self.manager.serve(self.entry, self.names)
        except EdgeError as error:
            raise CheckFailed(
                ENGINE_NOT_RECOVERED, f"nothing served after the cut: {error.message}", data
            ) from error
        try:
            batch, _ = self.samples()
            runner.infer(batch[:1])
        finally:
            runner.close()
        rebuilt = engine.is_file() and engine.read_bytes() != original[:cut]
        moved_aside = bad.is_file() and bad.stat().st_size == cut
        parity = (self.manager.cache.record(self.manager.key(self.entry, after)) or {}).get("parity", {})
        data.update(
            served_after=after.precision,
            rebuilt=rebuilt,
            moved_aside=bad.name if moved_aside else None,
            parity_after=parity.get("passed"),
        )
        if after != attempt or not rebuilt:
            raise CheckFailed(
                ENGINE_NOT_RECOVERED,
                f"the truncated {attempt.precision} engine was not rebuilt "
                f"(the manager served {after.precision}, the file is "
                f"{'rebuilt' if rebuilt else 'still cut'})",
                data,
            )
        data["headline"] = f"truncated {attempt.precision} engine moved aside, rebuilt and served again"
        return data
