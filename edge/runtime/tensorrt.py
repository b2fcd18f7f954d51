"""TensorRT on NVIDIA GPUs (Jetson first): the version gate, engine building and the runner.

Every TensorRT call of the backend is in this module, always through a local name `trt`, and
`TRT_API` lists each TensorRT name it uses (classes, enum members, functions, and methods or
properties as `Class.member`), per API flavour; the conformance test holds the table to this
file's source and to the real bindings of every supported version. Which versions are supported,
and why, is `tensorrt_versions.py`; the bookkeeping that needs no GPU is in
`edge/inference/engine_cache.py`, device memory in `device_memory.py`, orchestration (cache,
fallback, parity) in `edge/inference/engine_manager.py`.

- Build: from ONNX with the TensorRT builder, the way each flavour wants it: INT8 from the
  explicitly quantised (QDQ) graph, FP16 and FP32 from the FP32 graph (on 11, where weak typing
  is gone, FP16 only from an FP16 graph). The "fp32" engine is FP32: TF32, on by default on Ampere
  and later (every Orin), is switched off for it. One optimisation profile, batch 1..max_batch; a
  workspace limit (an 8 GB Orin Nano has no room for greed); a persisted timing cache; a progress
  monitor where the API has one (10 and 11), because a build takes minutes on an Orin and
  silence looks like a crash.
- Run: deserialize, one execution context, tensors bound by the manifest's names; every other
  engine output gets a scratch device buffer, because `execute_async_v3` needs an address for
  each. `set_tensor_address` + `execute_async_v3` on our own CUDA stream, page-locked host
  buffers. A lock makes one runner safe to share between threads.
- Available only where TensorRT imports, its version is supported and a CUDA GPU answers; asked
  once per process, so a machine without a GPU serves with ONNX Runtime without an error per model.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import RuntimeSettings
from edge.errors import Code, EdgeError
from edge.runtime import device_memory
from edge.runtime.base import Runner, TensorNames, TensorSpec, bind, concrete_shape
from edge.runtime.tensorrt_versions import VersionSupport, version_support
from edge.store.files import write_atomically

__all__ = [
    "TRT_API",
    "TensorRTRunner",
    "VersionSupport",
    "api_names",
    "build_engine",
    "tensorrt_version",
    "version_support",
]

log = logging.getLogger(__name__)

# (phase, fraction done 0..1) -> None; called from TensorRT's builder thread.
ProgressCallback = Callable[[str, float], None]


def _members(owner: str, members: str) -> tuple[str, ...]:
    return tuple(f"{owner}.{member}" for member in members.split())


_PROGRESS_API = (
    "IProgressMonitor",
    *_members("IProgressMonitor", "phase_start step_complete phase_finish"),
    "IBuilderConfig.progress_monitor",
)

# Every TensorRT name this module uses, relative to the `tensorrt` module: "common" on every
# supported version, the others only on that flavour's path (see `tensorrt_versions`).
TRT_API: dict[str, tuple[str, ...]] = {
    "common": (
        *("__version__", "nptype", "ILogger", "Builder", "OnnxParser", "Runtime"),
        *_members("ILogger", "log Severity.ERROR Severity.WARNING"),
        *_members("Builder", "create_network create_builder_config create_optimization_profile"),
        "Builder.build_serialized_network",
        *_members("OnnxParser", "parse num_errors get_error"),
        *_members("IBuilderConfig", "set_memory_pool_limit clear_flag add_optimization_profile"),
        *_members("IBuilderConfig", "create_timing_cache set_timing_cache get_timing_cache"),
        *("BuilderFlag", "MemoryPoolType", "TensorIOMode", "ILogger.Severity"),
        *("MemoryPoolType.WORKSPACE", "BuilderFlag.TF32", "TensorIOMode.INPUT"),
        *("ITimingCache.serialize", "IOptimizationProfile.set_shape", "Runtime.deserialize_cuda_engine"),
        *_members("ICudaEngine", "num_io_tensors get_tensor_name get_tensor_mode get_tensor_dtype"),
        *_members("ICudaEngine", "get_tensor_shape get_tensor_profile_shape create_execution_context"),
        *_members("IExecutionContext", "set_tensor_address set_input_shape execute_async_v3"),
        "IExecutionContext.get_tensor_shape",
    ),
    "8.6": (
        *("NetworkDefinitionCreationFlag", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH"),
        "IBuilderConfig.set_flag",
        *("BuilderFlag.INT8", "BuilderFlag.FP16"),
    ),
    "10": (
        *("NetworkDefinitionCreationFlag", "NetworkDefinitionCreationFlag.STRONGLY_TYPED"),
        *("IBuilderConfig.set_flag", "BuilderFlag.FP16"),
        *_PROGRESS_API,
    ),
    "11": _PROGRESS_API,
}


def api_names(flavour: str) -> tuple[str, ...]:
    """Every TensorRT name the backend uses on `flavour` ("8.6", "10", "11")."""
    return (*TRT_API["common"], *TRT_API[flavour])


NOT_INSTALLED = (
    "TensorRT is not installed: on a Jetson it comes with JetPack (use a venv with "
    "--system-site-packages); see docs/jetson.md"
)


def _import_tensorrt() -> Any:
    """The tensorrt module whatever its version (to read and report it), or BACKEND_UNAVAILABLE."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError as exc:
        if exc.name == "tensorrt":
            raise EdgeError(Code.BACKEND_UNAVAILABLE, NOT_INSTALLED) from exc
        raise EdgeError(Code.BACKEND_UNAVAILABLE, f"TensorRT does not import: {exc}") from exc
    except Exception as exc:  # e.g. OSError: libnvinfer.so.10 cannot be loaded
        raise EdgeError(
            Code.BACKEND_UNAVAILABLE, f"TensorRT does not import: {type(exc).__name__}: {exc}"[:300]
        ) from exc
    return trt


def _trt() -> Any:
    """TensorRT, once its version passed the gate: nothing is built or loaded on a refused one."""
    trt = _import_tensorrt()
    support = version_support(str(trt.__version__))
    if not support.supported:
        raise EdgeError(Code.BACKEND_UNAVAILABLE, support.message)
    return trt


def _flavour(trt: Any) -> str:
    return version_support(str(trt.__version__)).flavour or ""


def tensorrt_version() -> str:
    """The installed TensorRT's version, supported or not (for keys, reports and refusals)."""
    trt = _import_tensorrt()
    return str(trt.__version__)


@functools.lru_cache(maxsize=1)
def availability_problem() -> str | None:
    """Why TensorRT cannot serve on this machine (one sentence), or None when it can. Asked once
    per process: neither the installed TensorRT nor the GPU changes while it runs."""
    try:
        trt = _import_tensorrt()
    except EdgeError as error:
        return error.message
    support = version_support(str(trt.__version__))
    if not support.supported:
        return support.message
    if not device_memory.available():
        return (
            "TensorRT is installed but neither cuda-python nor pycuda is: "
            'pip install -e ".[jetson]" on a Jetson; see docs/jetson.md'
        )
    try:
        device_memory.gpu_count()
    except EdgeError as error:
        return f"TensorRT {trt.__version__} is installed but there is {error.message}"
    return None


class _Logger:
    """Bridges TensorRT's log to ours. TensorRT keeps one logger per process (NVIDIA/TensorRT#1475),
    so there is exactly one of these, shared by every builder, parser and runtime; each call
    takes the errors logged during it from `errors_since(mark)`. Only the newest
    `KEPT_ERRORS` are held: a service that fails the same way for months keeps a bounded list."""

    KEPT_ERRORS = 64

    def __init__(self, trt: Any) -> None:
        lock = threading.Lock()
        errors: deque[str] = deque(maxlen=self.KEPT_ERRORS)
        counted = [0]  # every error logged, kept or not: marks stay valid as old ones go

        class Bridge(trt.ILogger):
            def __init__(inner) -> None:
                super().__init__()

            def log(inner, severity: Any, message: str) -> None:
                if severity <= trt.ILogger.Severity.ERROR:
                    with lock:
                        errors.append(message)
                        counted[0] += 1
                    log.error("tensorrt: %s", message)
                elif severity <= trt.ILogger.Severity.WARNING:
                    log.warning("tensorrt: %s", message)
                else:
                    log.debug("tensorrt: %s", message)

        self.bridge = Bridge()
        self._errors = errors
        self._counted = counted
        self._lock = lock

    def mark(self) -> int:
        with self._lock:
            return self._counted[0]

    def errors_since(self, mark: int) -> list[str]:
        with self._lock:
            newer = self._counted[0] - mark
            return list(self._errors)[-newer:] if newer > 0 else []


_shared_logger: _Logger | None = None
_shared_logger_lock = threading.Lock()


def _logger() -> _Logger:
    global _shared_logger  # noqa: PLW0603 - one logger per process, as TensorRT requires
    with _shared_logger_lock:
        if _shared_logger is None:
            _shared_logger = _Logger(_trt())
        return _shared_logger


def _progress_monitor(trt: Any, callback: ProgressCallback) -> Any:
    """Top-level phases' progress as a fraction, for a progress bar and the status line."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            super().__init__()
            self.phases: dict[str, tuple[str | None, int, int]] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.phases[phase_name] = (parent_phase, max(num_steps, 1), 0)

        def step_complete(self, phase_name: str, step: int) -> bool:
            parent, total, _ = self.phases.get(phase_name, (None, 1, 0))
            self.phases[phase_name] = (parent, total, step + 1)
            if parent is None:
                try:
                    callback(phase_name, min(1.0, (step + 1) / total))
                except Exception:
                    log.exception("progress callback failed")
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            parent, _, _ = self.phases.pop(phase_name, (None, 1, 0))
            if parent is None:
                try:
                    callback(phase_name, 1.0)
                except Exception:
                    log.exception("progress callback failed")

    return Monitor()


def build_engine(
    onnx_file: Path,
    precision: str,
    *,
    input_name: str,
    input_shape: tuple[int, int, int],
    max_batch: int,
    workspace_mb: int,
    timing_cache: Path,
    progress: ProgressCallback | None = None,
) -> bytes:
    """A serialized engine, or ENGINE_BUILD_FAILED with TensorRT's own words (BACKEND_UNAVAILABLE
    for a TensorRT version the gate refuses, before anything is parsed)."""
    try:
        return _build(
            onnx_file, precision, input_name, input_shape, max_batch, workspace_mb, timing_cache, progress
        )
    except EdgeError:
        raise
    except Exception as exc:  # e.g. RuntimeError from an inconsistent profile, MemoryError
        # The type stays in the message: the engine manager retries out-of-memory failures later.
        raise EdgeError(
            Code.ENGINE_BUILD_FAILED,
            f"{precision} engine from {onnx_file.name}: {type(exc).__name__}: {exc}"[:500],
        ) from exc


def _build(
    onnx_file: Path,
    precision: str,
    input_name: str,
    input_shape: tuple[int, int, int],
    max_batch: int,
    workspace_mb: int,
    timing_cache: Path,
    progress: ProgressCallback | None,
) -> bytes:
    trt = _trt()
    flavour = _flavour(trt)
    logger = _logger()
    mark = logger.mark()
    builder = trt.Builder(logger.bridge)
    network = builder.create_network(_network_flags(trt, flavour, precision))
    parser = trt.OnnxParser(network, logger.bridge)
    if not parser.parse(onnx_file.read_bytes(), str(onnx_file)):
        problems = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EdgeError(
            Code.ENGINE_BUILD_FAILED, f"{onnx_file.name} does not parse: {'; '.join(problems)[:400]}"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb * 1024 * 1024)
    _set_precision(trt, flavour, config, precision)
    profile = builder.create_optimization_profile()
    channels, height, width = input_shape
    one = (1, channels, height, width)
    profile.set_shape(input_name, one, one, (max_batch, channels, height, width))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    # A blob TensorRT cannot read gives no cache at all (None; trtexec checks for it too), and
    # the file is shared by every model's builds: a damaged one must not stop them all.
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning(
            "the timing cache %s is unreadable or does not fit this TensorRT/GPU: starting a new one",
            timing_cache.name,
        )
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    if progress is not None and flavour != "8.6":  # 8.6 has no IProgressMonitor
        config.progress_monitor = _progress_monitor(trt, progress)
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        reason = "; ".join(logger.errors_since(mark)[-3:]) or "the builder returned nothing"
        raise EdgeError(Code.ENGINE_BUILD_FAILED, f"{precision} engine from {onnx_file.name}: {reason}"[:500])
    try:
        write_atomically(timing_cache, bytes(config.get_timing_cache().serialize()))
    except EdgeError as error:
        # A speed-up only (a full disk, a root-owned file): the engine just built is good.
        log.warning("the timing cache was not saved: %s", error.one_line())
    log.info("built %s engine from %s in %.0f s", precision, onnx_file.name, time.monotonic() - started)
    return bytes(serialized)


def _network_flags(trt: Any, flavour: str, precision: str) -> int:
    if flavour == "8.6":
        # 8.6's default network is implicit-batch, which the ONNX parser refuses.
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if flavour == "10" and precision == "int8":
        # Q/DQ nodes carry the scales; a strongly typed network follows the graph's types exactly.
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    # 10 at FP16/FP32: weakly typed, the precision set by a flag. 11: every network is strongly
    # typed (its STRONGLY_TYPED flag is deprecated), the precision is the ONNX file's.
    return 0


def _set_precision(trt: Any, flavour: str, config: Any, precision: str) -> None:
    if precision == "fp32":
        # TF32 is on by default on Ampere and later (every Orin): without this, an "fp32" engine
        # rounds convolution and matmul inputs to 10 mantissa bits without saying so.
        config.clear_flag(trt.BuilderFlag.TF32)
    elif flavour == "8.6":
        # No strong typing before 9: explicit quantisation (QDQ) builds with the INT8 flag set.
        config.set_flag(trt.BuilderFlag.INT8 if precision == "int8" else trt.BuilderFlag.FP16)
    elif flavour == "10" and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    # 10 at INT8 (strongly typed) and everything on 11: no precision flag, the graph's types rule.


def engine_tensors(engine: Any) -> list[TensorSpec]:
    trt = _trt()
    specs = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        specs.append(
            TensorSpec(
                name=name,
                is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
            )
        )
    return specs


def _each(steps: list[Callable[[], object]]) -> Exception | None:
    """Every step run, whatever fails; the first failure, if any."""
    first: Exception | None = None
    for step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the rest must still run
            first = first or exc
    return first


# How TensorRT says a load ran out of device memory ("Error Code 2: OutOfMemory", "Cuda Runtime
# (out of memory)", "Requested amount of GPU memory ... could not be allocated").
_OUT_OF_MEMORY = re.compile(r"out ?of ?memory|could not be allocated", re.IGNORECASE)


class TensorRTRunner(Runner):
    backend = "tensorrt"

    @classmethod
    def is_available(cls) -> bool:
        """TensorRT imports, its version is supported and a CUDA GPU answers."""
        return availability_problem() is None

    @classmethod
    def unavailable_reason(cls) -> str:
        return availability_problem() or "TensorRT is available"

    def __init__(
        self,
        model_file: Path,
        names: TensorNames,
        settings: RuntimeSettings,
        memory: device_memory.DeviceMemory | None = None,
    ) -> None:
        """`model_file` is a serialized engine (the engine manager builds it from the ONNX)."""
        super().__init__(model_file, names, settings)
        _trt()  # the version gate, before any GPU memory is touched
        self._lock = threading.Lock()
        self._owns_memory = memory is None
        self._memory = memory or device_memory.open_device_memory(settings.device_memory)
        self._device: dict[str, int] = {}  # every bound tensor's device buffer, scratch ones too
        self._host: dict[str, np.ndarray] = {}
        self._stream: Any = None
        self._engine: Any = None
        self._context: Any = None
        try:
            self._open(model_file, names)
        except Exception as exc:
            self._release()
            if isinstance(exc, EdgeError):
                raise
            raise EdgeError(
                Code.ENGINE_BUILD_FAILED, f"{model_file.name} cannot be opened: {exc}"[:400]
            ) from exc

    def _open(self, model_file: Path, names: TensorNames) -> None:
        trt = _trt()
        logger = _logger()
        mark = logger.mark()
        self._runtime = trt.Runtime(logger.bridge)
        try:
            serialized = model_file.read_bytes()
        except OSError as exc:
            raise EdgeError(Code.ENGINE_UNREADABLE, f"{model_file.name} cannot be read: {exc}") from exc
        self._engine = self._runtime.deserialize_cuda_engine(serialized)
        if self._engine is None:
            reason = "; ".join(logger.errors_since(mark)[-2:]) or "incompatible or corrupt engine"
            if _OUT_OF_MEMORY.search(reason):
                # Not the file's fault (several models on an 8 GB Orin): it is not moved aside
                # and rebuilt for minutes, as an unreadable one is; the model serves on the CPU.
                raise EdgeError(
                    Code.ENGINE_BUILD_FAILED, f"{model_file.name}: not enough GPU memory to load it: {reason}"
                )
            raise EdgeError(Code.ENGINE_UNREADABLE, f"{model_file.name} does not deserialize: {reason}")
        self._context = self._engine.create_execution_context()
        if self._context is None:  # e.g. out of device memory on an 8 GB Orin
            reason = "; ".join(logger.errors_since(mark)[-2:]) or "no execution context (out of memory?)"
            raise EdgeError(Code.ENGINE_BUILD_FAILED, f"{model_file.name}: {reason}")
        specs = engine_tensors(self._engine)
        self._input, self._outputs = bind(specs, names)
        profile_max = self._engine.get_tensor_profile_shape(names.input, 0)[2]
        self.max_batch = int(profile_max[0])
        self._stream = self._memory.stream_create()
        for spec in (self._input, *self._outputs):
            shape = concrete_shape(spec, self.max_batch)
            self._host[spec.name] = self._memory.pinned_empty(shape, spec.dtype)
            self._set_address(spec.name, self._memory.malloc(self._host[spec.name].nbytes))
        # execute_async_v3 needs an address for every output, wanted or not: the outputs the
        # manifest does not name write into device scratch buffers that are never copied back.
        wanted = {spec.name for spec in self._outputs}
        for spec in specs:
            if not spec.is_input and spec.name not in wanted:
                shape = concrete_shape(spec, self.max_batch)
                self._set_address(spec.name, self._memory.malloc(int(np.prod(shape)) * spec.dtype.itemsize))

    def _set_address(self, name: str, pointer: int) -> None:
        self._device[name] = pointer  # recorded first, so _release frees it whatever happens
        if not self._context.set_tensor_address(name, pointer):
            raise EdgeError(Code.INFERENCE_FAILED, f"TensorRT refused the device address of {name!r}")

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if len(batch) == 0:
            raise EdgeError(Code.INFERENCE_FAILED, "an empty batch")
        outputs: dict[str, list[np.ndarray]] = {spec.name: [] for spec in self._outputs}
        for start in range(0, len(batch), self.max_batch):
            chunk = np.ascontiguousarray(batch[start : start + self.max_batch], dtype=self._input.dtype)
            for name, value in self._infer_chunk(chunk).items():
                outputs[name].append(value)
        return {name: np.concatenate(parts) for name, parts in outputs.items()}

    def _infer_chunk(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        count = len(chunk)
        with self._lock:
            if self._engine is None:
                raise EdgeError(Code.INFERENCE_FAILED, "the TensorRT runner is closed")
            try:
                host_in = self._host[self._input.name]
                host_in[:count] = chunk
                if not self._context.set_input_shape(self._input.name, chunk.shape):
                    raise EdgeError(
                        Code.INFERENCE_FAILED, f"input shape {chunk.shape} is outside the engine's profile"
                    )
                view = host_in[:count]
                self._memory.copy_to_device(self._device[self._input.name], view, self._stream)
                if not self._context.execute_async_v3(self._memory.stream_handle(self._stream)):
                    raise EdgeError(Code.INFERENCE_FAILED, "execute_async_v3 failed")
                results = {}
                for spec in self._outputs:
                    shape = tuple(int(d) for d in self._context.get_tensor_shape(spec.name))
                    target = self._host[spec.name][: shape[0]]
                    self._memory.copy_to_host(target, self._device[spec.name], self._stream)
                    results[spec.name] = target
                self._memory.synchronize(self._stream)
                return {name: value.copy() for name, value in results.items()}
            except EdgeError:
                raise
            except Exception as exc:
                raise EdgeError(Code.INFERENCE_FAILED, f"TensorRT failed: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._release()

    def _release(self) -> None:
        """Everything is let go whatever fails on the way: after a sticky CUDA error (an illegal
        address) every call raises again, and a release that stopped at the first would leave
        the rest held and make every later `close` raise too. The first error is raised at the
        end."""
        steps: list[Callable[[], object]] = []
        if self._stream is not None:
            steps.append(functools.partial(self._memory.synchronize, self._stream))
        steps += [functools.partial(self._memory.free, pointer) for pointer in self._device.values()]
        steps += [functools.partial(self._memory.pinned_free, array) for array in self._host.values()]
        if self._stream is not None:
            steps.append(functools.partial(self._memory.stream_destroy, self._stream))
        self._device.clear()
        self._host.clear()
        self._stream = None
        first = _each(steps)
        # Context before engine before runtime: TensorRT's own teardown order.
        self._context = None
        self._engine = None
        self._runtime = None
        if self._owns_memory:
            self._owns_memory = False  # closed once, even if closing fails
            first = first or _each([self._memory.close])
        if first is not None:
            raise first
