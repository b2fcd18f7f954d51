"""Which TensorRT engine serves a model: build (cached), verify against ONNX Runtime, fall back.

For each model the manager first checks the TensorRT version against the supported matrix
(`BACKEND_UNAVAILABLE` naming the upgrade, before anything is built), then walks the model's
build plan (INT8 from QDQ, then FP16, then FP32): it reuses a cached engine whose key matches
this machine (`engine_cache.EngineKey`) or builds one, then requires a passed parity verdict
(engine vs the ONNX Runtime reference on the model's shipped sample images, thresholds from the
manifest) before the engine may serve. A failed build or a failed verdict moves on to the next
precision; when none is left the caller falls back to ONNX Runtime, loudly. Verdicts and build
outcomes are recorded beside the engines, so a device does not rebuild or re-verify on every
start, and `edge doctor` can show them. A recorded failure is retried when what it was built
from changes, with `--force`, or (out of memory) later; a cached engine that does not
deserialize is moved aside as `*.engine.bad` and rebuilt once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge import __version__
from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.inference.engine_cache import (
    Attempt,
    BuildHost,
    EngineCache,
    EngineKey,
    build_inputs,
    build_plan,
    failure_record,
    retry_verdict,
)
from edge.inference.local_parity import judge, reference_variant, sample_batch, with_scope_ratio
from edge.inference.parity import ParityReport
from edge.inference.registry import ModelEntry
from edge.runtime import device_memory
from edge.runtime.base import Runner, TensorNames
from edge.runtime.onnxruntime import OnnxRuntimeRunner
from edge.runtime.tensorrt_versions import version_support
from edge.store.files import write_atomically

log = logging.getLogger(__name__)

Builder = Callable[..., bytes]
RunnerFactory = Callable[[Path, TensorNames], Runner]
Identity = Callable[[], BuildHost]


def read_build_host(memory: device_memory.DeviceMemory, tensorrt: str) -> BuildHost:
    """This machine's facts for the engine cache key; the module name only on a Jetson."""
    versions = memory.cuda_versions()
    l4t = device_memory.l4t_release()
    module = device_memory.jetson_module() if l4t else ""
    return BuildHost(tensorrt, memory.gpu_info(), versions.runtime, versions.driver, l4t, module)


def _identity_from(settings: Settings) -> Identity:
    def identity() -> BuildHost:
        from edge.runtime.tensorrt import tensorrt_version

        memory = device_memory.open_device_memory(settings.runtime.device_memory)
        try:
            return read_build_host(memory, tensorrt_version())
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        """The three callables default to real TensorRT; tests on machines without a GPU pass
        doubles for them (and the real ones are exercised where `tensorrt` imports). `clock`
        (epoch seconds) decides when an out-of-memory failure is tried again."""
        self.settings = settings
        self.cache = EngineCache(settings.data_dir / "engines")
        self._builder = builder
        self._runner_factory = runner_factory
        self._identity_source = identity or _identity_from(settings)
        self._host: BuildHost | None = None
        self._clock = clock

    # ------------------------------------------------------------------ this machine and keys

    def host(self) -> BuildHost:
        if self._host is None:
            self._host = self._identity_source()
        return self._host

    def flavour(self) -> str:
        """The TensorRT API flavour here ("8.6", "10", "11"); BACKEND_UNAVAILABLE, naming the
        upgrade, for a version the matrix refuses (docs/jetson.md)."""
        support = version_support(self.host().tensorrt)
        if not support.supported or support.flavour is None:
            raise EdgeError(Code.BACKEND_UNAVAILABLE, support.message)
        return support.flavour

    def plan(self, entry: ModelEntry, requested: str) -> list[Attempt]:
        return build_plan(entry, requested, flavour=self.flavour())

    def key(self, entry: ModelEntry, attempt: Attempt) -> EngineKey:
        host = self.host()
        return EngineKey(
            model=entry.name,
            version=entry.manifest.version,
            onnx_sha256=entry.manifest.variants[attempt.variant].sha256,
            precision=attempt.precision,
            tensorrt=host.tensorrt,
            gpu=host.gpu.name,
            compute_capability=host.gpu.compute_capability,
            max_batch=self.settings.runtime.max_batch,
            workspace_mb=self.settings.runtime.workspace_mb,
            cuda_runtime=host.cuda_runtime,
            cuda_driver=host.cuda_driver,
            l4t=host.l4t,
            module=host.module,
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
        """The engine file for this attempt, built now if it is not cached. A recorded failure is
        refused again (ENGINE_BUILD_FAILED) unless `retry_verdict` allows it or `force`."""
        self.flavour()  # the version gate: nothing is built on a TensorRT the matrix refuses
        key = self.key(entry, attempt)
        engine = self.cache.engine_path(key)
        record = self.cache.record(key) or {}
        if engine.is_file() and record.get("build") == "ok" and not force:
            return engine
        inputs = build_inputs(key, __version__)
        if record.get("build") == "failed" and not force:
            retry, why = retry_verdict(record, inputs, self._clock())
            if not retry:
                raise EdgeError(Code.ENGINE_BUILD_FAILED, why)
            log.warning(
                "%s: the %s engine failed before; building it again: %s", entry.name, attempt.precision, why
            )
        source = entry.variant_file(attempt.variant, verify=self.settings.models.verify_checksums)
        host = self.host()
        log.warning(
            "building a %s TensorRT engine for %s on %s: this takes minutes",
            attempt.precision,
            entry.name,
            host.module or host.gpu.name,
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
                timing_cache=self.cache.timing_cache_path(host.tensorrt, host.gpu.compute_capability),
                progress=progress,
            )
        except EdgeError as error:
            if error.code is not Code.BACKEND_UNAVAILABLE:  # that says nothing about this engine
                self.cache.write_record(key, failure_record(error.message, record, inputs, self._clock()))
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

    def _open(self, entry: ModelEntry, attempt: Attempt, engine: Path, names: TensorNames) -> Runner:
        """The engine opened. One that does not deserialize (a truncated file, a bit flip on an
        SD card) is moved aside as `*.engine.bad` and rebuilt, once: if the new one does not load
        either, that is recorded as a failed build, so it is not rebuilt at every start."""
        try:
            return self._runner(engine, names)
        except EdgeError as error:
            if error.code is not Code.ENGINE_UNREADABLE:
                raise
            unreadable = error
        key = self.key(entry, attempt)
        bad = self.cache.move_aside(key)
        log.error(
            "%s: the cached %s engine does not load (%s): moved aside as %s, rebuilding it once",
            entry.name,
            attempt.precision,
            unreadable.message,
            bad.name,
        )
        rebuilt = self.ensure(entry, attempt, force=True)
        try:
            return self._runner(rebuilt, names)
        except EdgeError as error:
            if error.code is Code.ENGINE_UNREADABLE:
                self.cache.move_aside(key)
                message = f"the rebuilt {attempt.precision} engine does not load either: {error.message}"
                inputs = build_inputs(key, __version__)
                self.cache.write_record(key, failure_record(message, {}, inputs, self._clock()))
            raise

    # ------------------------------------------------------------------ parity

    def verify(self, entry: ModelEntry, attempt: Attempt, engine: Path, names: TensorNames) -> ParityReport:
        """Engine vs ONNX Runtime on the same source ONNX, over the model's sample images."""
        with self._open(entry, attempt, engine, names) as candidate:
            return self._judge(entry, attempt, candidate)

    def _judge(self, entry: ModelEntry, attempt: Attempt, candidate: Runner) -> ParityReport:
        batch, truth = sample_batch(entry, Code.ENGINE_PARITY_FAILED)
        logits_name = entry.manifest.output.logits
        verify = self.settings.models.verify_checksums
        source = entry.variant_file(attempt.variant, verify=verify)
        with OnnxRuntimeRunner(source, candidate.names, self.settings.runtime) as reference:
            expected = reference.infer(batch)
        actual = candidate.infer(batch)
        report = judge(entry, expected[logits_name], actual[logits_name], truth)
        # The applicability check is judged against FP32 (scope.localised): an INT8 engine's
        # features are compared with FP32's on ONNX Runtime, not with its QDQ source's.
        fp32 = reference_variant(entry, "onnxruntime")
        if fp32 is not None and fp32 != attempt.variant and entry.manifest.applicability is not None:
            with OnnxRuntimeRunner(
                entry.variant_file(fp32, verify=verify), candidate.names, self.settings.runtime
            ) as ref:
                expected = ref.infer(batch)
        report = with_scope_ratio(entry, report, expected, actual, self.settings)
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
        for attempt in self.plan(entry, self.settings.runtime.precision):
            try:
                engine = self.ensure(entry, attempt)
                runner = self._open(entry, attempt, engine, names)
                try:
                    # Read after opening: a rebuilt engine has no verdict yet and is judged now.
                    verdict = (self.cache.record(self.key(entry, attempt)) or {}).get("parity")
                    if verdict is None or "scope_ratio" not in verdict:  # older verdicts lack it
                        verdict = self._judge(entry, attempt, runner).as_dict()
                    if not verdict.get("passed"):
                        raise EdgeError(
                            Code.ENGINE_PARITY_FAILED,
                            f"parity failed: {verdict.get('rule')}: "
                            f"agreement {verdict.get('agreement')}, max |logit diff| "
                            f"{verdict.get('max_abs_logit_diff')}",
                        )
                except Exception:
                    runner.close()
                    raise
                return runner, attempt
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
