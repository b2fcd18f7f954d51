"""Which TensorRT engine serves a model: build (cached), verify against ONNX Runtime, fall back.

For each model the manager walks its build plan (INT8 from QDQ, then FP16, then FP32): it
reuses a cached engine whose key matches this GPU and TensorRT version or builds one, then
requires a passed parity verdict (engine vs the ONNX Runtime reference on the model's shipped
sample images, thresholds from the manifest) before the engine may serve. A failed build or a
failed verdict moves on to the next precision; when none is left the caller falls back to ONNX
Runtime, loudly. Verdicts and build outcomes are recorded beside the engines, so a device does
not rebuild or re-verify on every start, and `edge doctor` can show them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.inference.engine_cache import Attempt, EngineCache, EngineKey, build_plan
from edge.inference.local_parity import judge, sample_batch
from edge.inference.parity import ParityReport
from edge.inference.registry import ModelEntry
from edge.runtime.base import Runner, TensorNames
from edge.runtime.device_memory import GpuInfo
from edge.runtime.onnxruntime import OnnxRuntimeRunner
from edge.store.files import write_atomically

log = logging.getLogger(__name__)

Builder = Callable[..., bytes]
RunnerFactory = Callable[[Path, TensorNames], Runner]
Identity = Callable[[], tuple[str, GpuInfo]]


def _identity_from(settings: Settings) -> Identity:
    def identity() -> tuple[str, GpuInfo]:
        from edge.runtime import device_memory
        from edge.runtime.tensorrt import tensorrt_version

        memory = device_memory.open_device_memory(settings.runtime.device_memory)
        try:
            return tensorrt_version(), memory.gpu_info()
        finally:
            memory.close()

    return identity


class EngineManager:
    def __init__(
        self,
        settings: Settings,
        *,
        builder: Builder | None = None,
        runner_factory: RunnerFactory | None = None,
        identity: Identity | None = None,
    ) -> None:
        """The three callables default to real TensorRT; tests on machines without a GPU pass
        doubles for them (and the real ones are exercised where `tensorrt` imports)."""
        self.settings = settings
        self.cache = EngineCache(settings.data_dir / "engines")
        self._builder = builder
        self._runner_factory = runner_factory
        self._identity_source = identity or _identity_from(settings)
        self._identity: tuple[str, GpuInfo] | None = None

    # ------------------------------------------------------------------ identity and keys

    def identity(self) -> tuple[str, GpuInfo]:
        if self._identity is None:
            self._identity = self._identity_source()
        return self._identity

    def key(self, entry: ModelEntry, attempt: Attempt) -> EngineKey:
        tensorrt, gpu = self.identity()
        return EngineKey(
            model=entry.name,
            version=entry.manifest.version,
            onnx_sha256=entry.manifest.variants[attempt.variant].sha256,
            precision=attempt.precision,
            tensorrt=tensorrt,
            gpu=gpu.name,
            compute_capability=gpu.compute_capability,
            max_batch=self.settings.runtime.max_batch,
        )

    # ------------------------------------------------------------------ build

    def ensure(
        self,
        entry: ModelEntry,
        attempt: Attempt,
        *,
        force: bool = False,
        progress: Callable[[str, float], None] | None = None,
    ) -> Path:
        """The engine file for this attempt, built now if it is not cached."""
        key = self.key(entry, attempt)
        engine = self.cache.engine_path(key)
        record = self.cache.record(key) or {}
        if engine.is_file() and record.get("build") == "ok" and not force:
            return engine
        if record.get("build") == "failed" and not force:
            raise EdgeError(
                Code.ENGINE_BUILD_FAILED,
                f"{record.get('error', 'failed before')} (recorded; --force retries)",
            )
        source = entry.variant_file(attempt.variant, verify=self.settings.models.verify_checksums)
        tensorrt, gpu = self.identity()
        log.warning(
            "building a %s TensorRT engine for %s on %s: this takes minutes",
            attempt.precision,
            entry.name,
            gpu.name,
        )
        started = time.monotonic()
        try:
            data = self._build(
                source,
                attempt.precision,
                input_name=entry.manifest.input.name,
                input_shape=entry.manifest.input.shape,
                max_batch=self.settings.runtime.max_batch,
                workspace_mb=self.settings.runtime.workspace_mb,
                timing_cache=self.cache.timing_cache_path(tensorrt, gpu.compute_capability),
                progress=progress,
            )
        except EdgeError as error:
            self.cache.write_record(key, {"build": "failed", "error": error.message, "at": _now()})
            raise
        write_atomically(engine, data)
        self.cache.write_record(
            key,
            {
                "build": "ok",
                "seconds": round(time.monotonic() - started, 1),
                "bytes": len(data),
                "at": _now(),
            },
        )
        return engine

    def _build(self, source: Path, precision: str, **kwargs: Any) -> bytes:
        if self._builder is not None:
            return self._builder(source, precision, **kwargs)
        from edge.runtime.tensorrt import build_engine

        return build_engine(source, precision, **kwargs)

    def _runner(self, engine: Path, names: TensorNames) -> Runner:
        if self._runner_factory is not None:
            return self._runner_factory(engine, names)
        from edge.runtime.tensorrt import TensorRTRunner

        return TensorRTRunner(engine, names, self.settings.runtime)

    # ------------------------------------------------------------------ parity

    def verify(self, entry: ModelEntry, attempt: Attempt, engine: Path, names: TensorNames) -> ParityReport:
        """Engine vs ONNX Runtime on the same source ONNX, over the model's sample images."""
        batch, truth = sample_batch(entry, Code.ENGINE_PARITY_FAILED)
        logits_name = entry.manifest.output.logits
        source = entry.variant_file(attempt.variant, verify=self.settings.models.verify_checksums)
        with OnnxRuntimeRunner(source, names, self.settings.runtime) as reference:
            expected = reference.infer(batch)[logits_name]
        with self._runner(engine, names) as candidate:
            actual = candidate.infer(batch)[logits_name]
        report = judge(entry, expected, actual, truth)
        key = self.key(entry, attempt)
        record = self.cache.record(key) or {}
        self.cache.write_record(
            key,
            {**{k: v for k, v in record.items() if k != "key"}, "parity": {**report.as_dict(), "at": _now()}},
        )
        return report

    # ------------------------------------------------------------------ serve

    def serve(self, entry: ModelEntry, names: TensorNames) -> tuple[Runner, Attempt]:
        """The best engine that builds and passes parity, opened; else ENGINE_* refusal."""
        failures = []
        for attempt in build_plan(entry, self.settings.runtime.precision):
            try:
                engine = self.ensure(entry, attempt)
                verdict = (self.cache.record(self.key(entry, attempt)) or {}).get("parity")
                if verdict is None:
                    verdict = self.verify(entry, attempt, engine, names).as_dict()
                if not verdict.get("passed"):
                    raise EdgeError(
                        Code.ENGINE_PARITY_FAILED,
                        f"parity failed: {verdict.get('rule')}: "
                        f"agreement {verdict.get('agreement')}, max |logit diff| "
                        f"{verdict.get('max_abs_logit_diff')}",
                    )
                return self._runner(engine, names), attempt
            except EdgeError as error:
                log.error("%s: %s engine unusable: %s", entry.name, attempt.precision, error.one_line())
                failures.append(f"{attempt.precision}: {error.message}")
        raise EdgeError(
            Code.ENGINE_BUILD_FAILED, f"{entry.name}: no usable TensorRT engine ({'; '.join(failures)})"[:600]
        )

    def describe(self) -> list[dict[str, Any]]:
        return self.cache.records()


def _now() -> str:
    from edge.clock import utc_now

    return utc_now()
