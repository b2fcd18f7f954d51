"""TensorRT 10 on NVIDIA GPUs (Jetson first): engine building and the runner.

Everything TensorRT-specific lives here, its import guarded; the bookkeeping that needs no GPU
is in `engines.py`, device memory in `device_memory.py`, orchestration (cache, fallback, parity)
in `engine_manager.py`.

- Build: from ONNX with the TensorRT builder. INT8 comes from the explicitly quantised (QDQ)
  graph as a *strongly typed* network (TensorRT's implicit INT8 calibration is deprecated since
  10.1); FP16 and FP32 come from the FP32 graph. One optimisation profile, batch 1..max_batch;
  a workspace limit (an 8 GB Orin Nano has no room for greed); a persisted timing cache; a
  progress monitor, because a build takes minutes on an Orin and silence looks like a crash.
- Run: deserialize, one execution context, tensors bound by the manifest's names,
  `set_tensor_address` + `execute_async_v3` on our own CUDA stream, page-locked host buffers.
  A lock makes one runner safe to share between threads.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import RuntimeSettings
from edge.errors import Code, EdgeError
from edge.runtime import device_memory
from edge.runtime.base import Runner, TensorNames, TensorSpec, bind, concrete_shape
from edge.store.files import write_atomically

log = logging.getLogger(__name__)

# (phase, fraction done 0..1) -> None; called from TensorRT's builder thread.
ProgressCallback = Callable[[str, float], None]


def _trt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise EdgeError(Code.BACKEND_UNAVAILABLE, TensorRTRunner.unavailable_reason()) from exc
    return tensorrt


def tensorrt_version() -> str:
    return str(_trt().__version__)


class _Logger:
    """Bridges TensorRT's log to ours. TensorRT keeps one logger per process (NVIDIA/TensorRT#1475),
    so there is exactly one of these, shared by every builder, parser and runtime; each call
    takes the errors logged during it from `errors_since(mark)`."""

    def __init__(self, trt: Any) -> None:
        lock = threading.Lock()
        errors: list[str] = []

        class Bridge(trt.ILogger):
            def __init__(inner) -> None:
                trt.ILogger.__init__(inner)

            def log(inner, severity: Any, message: str) -> None:
                if severity <= trt.ILogger.Severity.ERROR:
                    with lock:
                        errors.append(message)
                    log.error("tensorrt: %s", message)
                elif severity <= trt.ILogger.Severity.WARNING:
                    log.warning("tensorrt: %s", message)
                else:
                    log.debug("tensorrt: %s", message)

        self.bridge = Bridge()
        self._errors = errors
        self._lock = lock

    def mark(self) -> int:
        with self._lock:
            return len(self._errors)

    def errors_since(self, mark: int) -> list[str]:
        with self._lock:
            return list(self._errors[mark:])


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
            trt.IProgressMonitor.__init__(self)
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
    """A serialized engine, or ENGINE_BUILD_FAILED with TensorRT's own words."""
    try:
        return _build(
            onnx_file, precision, input_name, input_shape, max_batch, workspace_mb, timing_cache, progress
        )
    except EdgeError:
        raise
    except Exception as exc:  # e.g. RuntimeError from an inconsistent profile, MemoryError
        raise EdgeError(
            Code.ENGINE_BUILD_FAILED, f"{precision} engine from {onnx_file.name}: {exc}"[:500]
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
    logger = _logger()
    mark = logger.mark()
    builder = trt.Builder(logger.bridge)
    flags = 0
    if precision == "int8":
        # Q/DQ nodes carry the scales; a strongly typed network follows the graph's types exactly.
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger.bridge)
    if not parser.parse(onnx_file.read_bytes(), str(onnx_file)):
        problems = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EdgeError(
            Code.ENGINE_BUILD_FAILED, f"{onnx_file.name} does not parse: {'; '.join(problems)[:400]}"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb * 1024 * 1024)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    channels, height, width = input_shape
    one = (1, channels, height, width)
    profile.set_shape(input_name, one, one, (max_batch, channels, height, width))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning(
            "the timing cache %s does not fit this TensorRT/GPU: starting a new one", timing_cache.name
        )
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    if progress is not None and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt, progress)
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        reason = "; ".join(logger.errors_since(mark)[-3:]) or "the builder returned nothing"
        raise EdgeError(Code.ENGINE_BUILD_FAILED, f"{precision} engine from {onnx_file.name}: {reason}"[:500])
    write_atomically(timing_cache, bytes(config.get_timing_cache().serialize()))
    log.info("built %s engine from %s in %.0f s", precision, onnx_file.name, time.monotonic() - started)
    return bytes(serialized)


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


class TensorRTRunner(Runner):
    backend = "tensorrt"

    @classmethod
    def is_available(cls) -> bool:
        return importlib.util.find_spec("tensorrt") is not None and bool(device_memory.available())

    @classmethod
    def unavailable_reason(cls) -> str:
        if importlib.util.find_spec("tensorrt") is None:
            return (
                "TensorRT is not installed: on a Jetson it comes with JetPack (use a venv with "
                "--system-site-packages); see docs/jetson.md"
            )
        return (
            "TensorRT is installed but neither cuda-python nor pycuda is: "
            'pip install "cuda-python>=12.6,<13" (JetPack 6 ships CUDA 12)'
        )

    def __init__(
        self,
        model_file: Path,
        names: TensorNames,
        settings: RuntimeSettings,
        memory: device_memory.DeviceMemory | None = None,
    ) -> None:
        """`model_file` is a serialized engine (the engine manager builds it from the ONNX)."""
        super().__init__(model_file, names, settings)
        self._lock = threading.Lock()
        self._owns_memory = memory is None
        self._memory = memory or device_memory.open_device_memory(settings.device_memory)
        self._device: dict[str, int] = {}
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
        self._engine = self._runtime.deserialize_cuda_engine(model_file.read_bytes())
        if self._engine is None:
            reason = "; ".join(logger.errors_since(mark)[-2:]) or "incompatible or corrupt engine"
            raise EdgeError(Code.ENGINE_BUILD_FAILED, f"{model_file.name} does not deserialize: {reason}")
        self._context = self._engine.create_execution_context()
        if self._context is None:  # e.g. out of device memory on an 8 GB Orin
            reason = "; ".join(logger.errors_since(mark)[-2:]) or "no execution context (out of memory?)"
            raise EdgeError(Code.ENGINE_BUILD_FAILED, f"{model_file.name}: {reason}")
        self._input, self._outputs = bind(engine_tensors(self._engine), names)
        profile_max = self._engine.get_tensor_profile_shape(names.input, 0)[2]
        self.max_batch = int(profile_max[0])
        self._stream = self._memory.stream_create()
        for spec in (self._input, *self._outputs):
            shape = concrete_shape(spec, self.max_batch)
            self._host[spec.name] = self._memory.pinned_empty(shape, spec.dtype)
            self._device[spec.name] = self._memory.malloc(self._host[spec.name].nbytes)
            self._context.set_tensor_address(spec.name, self._device[spec.name])

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
        if self._stream is not None:
            self._memory.synchronize(self._stream)
        for pointer in self._device.values():
            self._memory.free(pointer)
        for array in self._host.values():
            self._memory.pinned_free(array)
        if self._stream is not None:
            self._memory.stream_destroy(self._stream)
        self._device.clear()
        self._host.clear()
        self._stream = None
        # Context before engine before runtime: TensorRT's own teardown order.
        self._context = None
        self._engine = None
        self._runtime = None
        if self._owns_memory:
            self._memory.close()
