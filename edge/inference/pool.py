"""A model ready to serve: the chosen variant on the chosen backend, wrapped with its
preprocessing and postprocessing.

`precision = "auto"` picks, among the variants that passed their accuracy gate, the one that is
fastest *on this machine*, measured once and remembered: on some CPUs an INT8 QDQ graph is
slower than FP32, and assuming otherwise would make the device slower for no gain. Before that,
a reduced-precision variant must compute on this machine what FP32 computes (`local_parity`):
on some CPUs it does not, and assuming it does would make the device wrong.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge import runtime
from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.imaging.preprocess import PreprocessSpec, preprocess_batch
from edge.inference.local_parity import reference_variant, verify_here
from edge.inference.postprocess import Finding, decide
from edge.inference.registry import ModelEntry, OperatingPoint, Registry, Variant
from edge.inference.scope import Scope, ScopeCheck, localised
from edge.inference.scope import refusal as scope_refusal
from edge.inference.site_profile import ActiveProfiles, SiteProfile
from edge.runtime.base import Runner, TensorNames
from edge.runtime.onnxruntime import OnnxRuntimeRunner
from edge.store.files import write_atomically

# A lower precision must beat fp32 by this margin to be chosen: timing noise on a shared
# machine must not flip the choice back and forth between runs.
SPEEDUP_MARGIN = 0.9
log = logging.getLogger(__name__)
_TIMING_RUNS = 25
CACHE_FILE = "variant-choice.json"


@dataclass
class Prediction:
    finding: Finding
    latency_ms: float
    """Time inside the backend's infer call, shared equally by the images of the batch."""
    outputs: dict[str, np.ndarray]
    scope: Scope | None = None
    """The applicability check's verdict; None for a model released without one."""


class ServedModel:
    def __init__(
        self,
        entry: ModelEntry,
        variant_name: str,
        runner: Runner,
        file_sha256: str,
        precision: str | None = None,
        *,
        verify: bool = True,
    ) -> None:
        self.entry = entry
        self.variant_name = variant_name
        self.variant: Variant = entry.manifest.variants[variant_name]
        self.runner = runner
        self.sha256 = file_sha256
        # A TensorRT engine may run at another precision than its source file (FP16 from FP32).
        self._precision = precision or self.variant.precision
        self.spec: PreprocessSpec = entry.manifest.input.preprocess_spec()
        self.scope_check: ScopeCheck | None = entry.scope_check(variant_name, verify=verify)
        self.profiles: ActiveProfiles | None = None
        """The site's profiles (set by the pool); None: the manifest's calibration only."""

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> str:
        return self.entry.manifest.version

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def profile(self) -> SiteProfile | None:
        """The site profile in force for this model version now (re-read when it changes)."""
        return self.profiles.get(self.entry) if self.profiles is not None else None

    def calibration(
        self, operating_point: str | None = None
    ) -> tuple[float, str, OperatingPoint, str | None]:
        """What decides now: temperature, operating point (name and threshold) and profile id.
        A site profile replaces the temperature and the thresholds of the points it names."""
        op_name, op = self.entry.operating_point(operating_point)
        profile = self.profile
        if profile is None:
            return self.entry.manifest.output.temperature, op_name, op, None
        return profile.temperature, op_name, profile.point(op_name, op), profile.id

    def predict(self, images: list[np.ndarray], operating_point: str | None = None) -> list[Prediction]:
        """Display images (uint8) -> one calibrated finding each."""
        batch = preprocess_batch(images, self.spec)
        started = time.perf_counter()
        outputs = self.runner.infer(batch)
        latency_ms = (time.perf_counter() - started) * 1000 / len(images)
        out = self.entry.manifest.output
        logits = outputs[out.logits]
        if logits.shape != (len(images), len(out.labels)):
            raise EdgeError(
                Code.MODEL_OUTPUT_INVALID,
                f"{self.name}: logits shape {logits.shape}, expected ({len(images)}, {len(out.labels)})",
            )
        temperature, op_name, op, profile_id = self.calibration(operating_point)
        scopes = self._scopes(outputs, len(images))
        predictions = []
        for index in range(len(images)):
            try:
                finding = decide(
                    logits[index], out.labels, out.positive, temperature, op.threshold, op_name, profile_id
                )
            except ValueError as exc:
                raise EdgeError(Code.MODEL_OUTPUT_INVALID, f"{self.name}: {exc}") from exc
            per_image = {name: value[index] for name, value in outputs.items()}
            predictions.append(Prediction(finding, latency_ms, per_image, scopes[index]))
        return predictions

    def out_of_scope(self, scope: Scope | None, enforce: bool) -> EdgeError | None:
        """The OUT_OF_SCOPE refusal for an input the check refuses (None: may be answered).
        `enforce` is the site's `[gate]` (enabled and applicability)."""
        spec = self.entry.manifest.applicability
        if not enforce or scope is None or spec is None or not scope.refused:
            return None
        return scope_refusal(self.name, spec.looks_like, scope)

    def _scopes(self, outputs: dict[str, np.ndarray], count: int) -> list[Scope | None]:
        if self.scope_check is None:
            return [None] * count
        spec = self.entry.manifest.applicability
        assert spec is not None
        if spec.features not in outputs:
            raise EdgeError(
                Code.MODEL_OUTPUT_INVALID,
                f"{self.name}: no {spec.features!r} output for its applicability check",
            )
        return list(self.scope_check.judge(outputs[spec.features]))

    def localise_scope(self, ratio: float | None, *, verify: bool = True) -> None:
        """Judge a reduced-precision variant's applicability as FP32's check scaled by what this
        machine's variant computes (`scope.localised`), where that is stricter than its manifest."""
        if self.scope_check is None or self.precision == "fp32" or ratio is None:
            return
        fp32_check = self.entry.scope_check("fp32", verify=verify)
        if fp32_check is None:
            return
        manifest_threshold = self.scope_check.threshold
        self.scope_check = localised(self.scope_check, fp32_check, ratio)
        if self.scope_check.threshold < manifest_threshold:
            log.info(
                "%s %s: applicability limit %.3f here (FP32's %.3f x this machine's distance ratio"
                " %.3f), not the manifest's %.3f",
                self.name,
                self.variant_name,
                self.scope_check.threshold,
                fp32_check.threshold,
                ratio,
                manifest_threshold,
            )

    def close(self) -> None:
        self.runner.close()


def tensor_names(entry: ModelEntry) -> TensorNames:
    out = entry.manifest.output
    outputs = (out.logits,) + ((out.cam,) if out.cam else ())
    if entry.manifest.applicability is not None:
        outputs += (entry.manifest.applicability.features,)
    return TensorNames(entry.manifest.input.name, outputs)


def candidate_variants(entry: ModelEntry, backend: str, precision: str) -> list[str]:
    """Variants this backend can run at the requested precision that may be served."""
    names = [
        name
        for name, variant in entry.manifest.variants.items()
        if backend in variant.backends and variant.servable and (precision in ("auto", variant.precision))
    ]
    if not names:
        raise EdgeError(
            Code.MODEL_VARIANT_UNAVAILABLE,
            f"{entry.name} has no servable {precision} variant for {backend}",
        )
    return names


# CPU features that change which integer kernels ONNX Runtime runs (and so INT8 results).
_KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")


def machine_key() -> str:
    """This machine as its INT8 verdicts are keyed: architecture, CPU model, the integer-kernel
    features ONNX Runtime's choice of kernels turns on, cores."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as handle:
            lines = handle.readlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
        line = next((ln for ln in lines if ln.startswith(("flags", "Features"))), "")
        flags = set(line.split(":", 1)[-1].split())
    except OSError:
        pass
    features = ",".join(flag for flag in _KERNEL_FLAGS if flag in flags)
    return f"{platform.machine()}|{cpu}|{features}|{os.cpu_count()}"


# Local parity verdicts in the cache: "parity+scope" since they carry the applicability distance
# ratio (scope.localised); older "parity" verdicts are measured again once.
PARITY_KEY = "parity+scope"


def parity_refusals(cache_dir: Path) -> list[dict[str, Any]]:
    """The variants found on this machine not to compute what FP32 computes (for `edge doctor`)."""
    try:
        cache = json.loads((cache_dir / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return []
    machine = machine_key()
    return [
        verdict
        for key, verdict in cache.items()
        if key.startswith(PARITY_KEY + "|") and key.endswith(machine) and not verdict.get("passed")
    ]


def _time_runner(runner: Runner, spec: PreprocessSpec) -> float:
    sample = np.random.default_rng(0).standard_normal((1, spec.channels, spec.height, spec.width))
    batch = sample.astype(np.float32)
    for _ in range(3):
        runner.infer(batch)
    times = []
    for _ in range(_TIMING_RUNS):
        started = time.perf_counter()
        runner.infer(batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


class ModelPool:
    """Loads each model once per process and keeps it; chooses variants as configured."""

    def __init__(self, registry: Registry, settings: Settings, cache_dir: Path) -> None:
        self.registry = registry
        self.settings = settings
        self.cache_file = cache_dir / CACHE_FILE
        self._served: dict[str, ServedModel] = {}
        # (model, variant) -> its applicability distances over FP32's, measured here (local parity)
        self._scope_ratios: dict[tuple[str, str], float | None] = {}
        self.engine_manager: Any = None  # set to share one EngineManager (tests inject doubles)
        self.profiles = ActiveProfiles(settings.data_dir)

    def get(self, name: str) -> ServedModel:
        if name not in self._served:
            served = self._load(name)
            served.profiles = self.profiles
            self._served[name] = served
        return self._served[name]

    def close(self) -> None:
        for served in self._served.values():
            served.close()
        self._served.clear()

    def pin(self, served: ServedModel) -> None:
        """Serve this exact model for its name from now on (benchmarks, parity checks)."""
        old = self._served.pop(served.name, None)
        if old is not None and old is not served:
            old.close()
        if served.profiles is None:
            served.profiles = self.profiles
        self._served[served.name] = served

    def load_variant(self, name: str, variant: str) -> ServedModel:
        """One named variant on the configured backend, verified, regardless of speed."""
        entry = self.registry.get(name)
        runner_cls = runtime.resolve_backend(self.settings.runtime.backend)
        spec = entry.manifest.variants.get(variant)
        if spec is None or runner_cls.backend not in spec.backends or not spec.servable:
            raise EdgeError(
                Code.MODEL_VARIANT_UNAVAILABLE,
                f"{name}: variant {variant!r} cannot be served on {runner_cls.backend}",
            )
        path = entry.variant_file(variant, verify=self.settings.models.verify_checksums)
        runner = runner_cls(path, tensor_names(entry), self.settings.runtime)
        served = ServedModel(
            entry, variant, runner, spec.sha256, verify=self.settings.models.verify_checksums
        )
        served.profiles = self.profiles
        return served

    def _load(self, name: str) -> ServedModel:
        entry = self.registry.get(name)
        runner_cls = runtime.resolve_backend(self.settings.runtime.backend)
        if runner_cls.backend == "tensorrt":
            try:
                return self._load_tensorrt(entry)
            except EdgeError as error:
                # Loudly: the device keeps working, slower, and the log and doctor say why.
                log.error("%s: falling back to ONNX Runtime: %s", entry.name, error.one_line())
                runner_cls = OnnxRuntimeRunner
        names = candidate_variants(entry, runner_cls.backend, self.settings.runtime.precision)
        verify = self.settings.models.verify_checksums
        intact = _intact_files(entry, names, verify)
        names = self._right_here(entry, runner_cls, [n for n in names if n in intact])
        files = {n: intact[n] if n in intact else entry.variant_file(n, verify=verify) for n in names}
        # On the backend chosen here (ONNX Runtime after a TensorRT fallback), not the configured one.
        chosen = names[0] if len(names) == 1 else self._fastest(entry, runner_cls, files)
        runner = runner_cls(files[chosen], tensor_names(entry), self.settings.runtime)
        served = ServedModel(entry, chosen, runner, entry.manifest.variants[chosen].sha256, verify=verify)
        served.localise_scope(self._scope_ratios.get((entry.name, chosen)), verify=verify)
        return served

    def _load_tensorrt(self, entry: ModelEntry) -> ServedModel:
        from edge.inference.engine_manager import EngineManager

        manager = self.engine_manager or EngineManager(self.settings)
        runner, attempt = manager.serve(entry, tensor_names(entry))
        variant = entry.manifest.variants[attempt.variant]
        verify = self.settings.models.verify_checksums
        served = ServedModel(
            entry, attempt.variant, runner, variant.sha256, precision=attempt.precision, verify=verify
        )
        verdict = (manager.cache.record(manager.key(entry, attempt)) or {}).get("parity") or {}
        ratio = verdict.get("scope_ratio")
        served.localise_scope(float(ratio) if isinstance(ratio, (int, float)) else None, verify=verify)
        return served

    def _right_here(self, entry: ModelEntry, runner_cls: type[Runner], names: list[str]) -> list[str]:
        """The candidates that compute on this machine what FP32 computes (`local_parity`),
        each verified once per (files, runtime version, machine); FP32 when none does."""
        variants = entry.manifest.variants
        reference = reference_variant(entry, runner_cls.backend)
        if reference is None:
            return names
        verify = self.settings.models.verify_checksums
        cache = self._read_cache()
        kept: list[str] = []
        refusals: list[tuple[str, bool, str]] = []  # (variant, found now, what differs)
        for name in names:
            if variants[name].precision == "fp32":
                kept.append(name)
                continue
            key = "|".join(
                [
                    PARITY_KEY,
                    entry.name,
                    name,
                    variants[name].sha256[:16],
                    variants[reference].sha256[:16],
                    runner_cls.backend,
                    _backend_version(runner_cls.backend),
                    machine_key(),
                ]
            )
            verdict = cache.get(key)
            measured_now = verdict is None
            if verdict is None:
                try:
                    report = verify_here(
                        entry,
                        runner_cls,
                        tensor_names(entry),
                        entry.variant_file(reference, verify=verify),
                        entry.variant_file(name, verify=verify),
                        self.settings,
                    )
                    verdict = {"model": entry.name, "variant": name, **report.as_dict()}
                except EdgeError as error:
                    verdict = {"model": entry.name, "variant": name, "passed": False, "error": error.message}
                    if error.code in (*_BROKEN_FILE, Code.MODEL_MANIFEST_INVALID):
                        # A damaged file (checksums off: one that cannot be loaded) says
                        # nothing of this machine: not remembered, or the variant stayed
                        # unserved after the file was reinstalled.
                        verdict["file"] = True
                if not verdict.get("file"):
                    cache[key] = verdict
                    self._write_cache(cache)
            if verdict.get("passed"):
                kept.append(name)
                ratio = verdict.get("scope_ratio")
                self._scope_ratios[(entry.name, name)] = (
                    float(ratio) if isinstance(ratio, (int, float)) else None
                )
                continue
            measured = f"top-1 agreement {verdict.get('agreement')}"
            detail = (
                verdict.get("error") or f"{measured}, max |logit diff| {verdict.get('max_abs_logit_diff')}"
            )
            refusals.append((name, measured_now, str(detail)))
        served = kept or [reference]
        instead = served[0] if len(served) == 1 else f"the fastest of {', '.join(served)}"
        wanted = self.settings.runtime.precision
        denied = wanted != "auto" and all(variants[n].precision != wanted for n in served)
        for name, measured_now, detail in refusals:
            refusal = EdgeError(
                Code.VARIANT_PARITY_FAILED,
                f"{entry.name} {name} differs from {reference} on this machine ({detail}): "
                f"not served here; served instead: {instead}",
            )
            log.log(self._refusal_level(measured_now, denied), "%s", refusal.one_line())
        return served

    @staticmethod
    def _refusal_level(measured_now: bool, denied: bool) -> int:
        # A known verdict read back at every start is only a note. Found now, it is a warning:
        # the answers stay right (another variant serves), perhaps slower; an error where the
        # configuration asked for a precision by name and no variant of it is served.
        if not measured_now:
            return logging.INFO
        return logging.ERROR if denied else logging.WARNING

    def _fastest(self, entry: ModelEntry, runner_cls: type[Runner], files: dict[str, Path]) -> str:
        key = "|".join(
            [
                entry.name,
                *(entry.manifest.variants[n].sha256[:16] for n in sorted(files)),
                runner_cls.backend,
                _backend_version(runner_cls.backend),
                machine_key(),
                str(self.settings.runtime.threads),
            ]
        )
        cache = self._read_cache()
        if key in cache and cache[key].get("variant") in files:
            return str(cache[key]["variant"])
        spec = entry.manifest.input.preprocess_spec()
        timings = {}
        for variant_name, path in files.items():
            with runner_cls(path, tensor_names(entry), self.settings.runtime) as runner:
                timings[variant_name] = _time_runner(runner, spec)
        chosen = choose_by_speed(entry, timings)
        cache[key] = {"variant": chosen, "median_ms": timings}
        self._write_cache(cache)
        return chosen

    def _read_cache(self) -> dict[str, dict[str, object]]:
        try:
            loaded = json.loads(self.cache_file.read_text())
            return loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_cache(self, cache: dict[str, dict[str, object]]) -> None:
        try:  # durable: a power cut must not make every boot measure again
            write_atomically(self.cache_file, json.dumps(cache, indent=2, sort_keys=True).encode())
        except EdgeError:
            return  # only a cache: measuring again next time is the cost


def choose_by_speed(entry: ModelEntry, timings_ms: dict[str, float]) -> str:
    """The fastest variant, but fp32 unless another is clearly (SPEEDUP_MARGIN) faster."""
    fastest = min(timings_ms, key=timings_ms.__getitem__)
    reference = next((n for n in timings_ms if entry.manifest.variants[n].precision == "fp32"), None)
    if reference is None or fastest == reference:
        return fastest
    return fastest if timings_ms[fastest] <= SPEEDUP_MARGIN * timings_ms[reference] else reference


def _backend_version(backend: str) -> str:
    try:
        import importlib

        return str(importlib.import_module(backend).__version__)
    except Exception:  # noqa: BLE001 - a missing version only weakens the cache key
        return "unknown"


_BROKEN_FILE = (Code.MODEL_CHECKSUM_MISMATCH, Code.MODEL_FILE_MISSING)


def _intact_files(entry: ModelEntry, names: list[str], verify: bool) -> dict[str, Path]:
    """The candidate variants' files that are there and whole, by variant. A variant whose file
    is missing or changed is left out, loudly, and the others served: one truncated INT8 file
    made the whole model refuse every input, each dropped picture quarantined (an outside-style
    check). Where none is whole, the first one's refusal is raised."""
    intact: dict[str, Path] = {}
    first: EdgeError | None = None
    for name in names:
        try:
            intact[name] = entry.variant_file(name, verify=verify)
        except EdgeError as error:
            if error.code not in _BROKEN_FILE:
                raise
            log.error(
                "%s: variant %s not served: %s; serving the others (`edge doctor`; reinstall the model)",
                entry.name,
                name,
                error.one_line(),
            )
            first = first or error
    if not intact and first is not None:
        raise first
    return intact


def model_problem(registry: Registry, name: str, settings: Settings) -> EdgeError | None:
    """Why `name` cannot be opened here (its manifest, or no candidate file whole), or None:
    what the pool would refuse, without loading it (the agent's maintenance asks, to give
    back what waited for a damaged model once it is put right)."""
    try:
        entry = registry.get(name)
        backend = runtime.resolve_backend(settings.runtime.backend).backend
        names = candidate_variants(entry, backend, settings.runtime.precision) or ["fp32"]
        _intact_files(entry, names, settings.models.verify_checksums)
    except EdgeError as error:
        return error
    return None
