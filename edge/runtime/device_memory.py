"""Device memory for TensorRT behind one tiny interface, with two implementations.

- `cuda-python` (NVIDIA's own bindings, used by the TensorRT 10 samples; aarch64 wheels exist,
  so it installs on a Jetson with pip);
- `pycuda` (what older deployments and the product brief name; on a Jetson it must be compiled).

Both give: allocate/free device memory, page-locked host buffers, a stream, asynchronous copies
in and out, synchronise, and the GPU's identity (name, compute capability, memory; CUDA runtime
and driver versions) for the engine cache key. `open_device_memory("auto")` takes whichever
imports, cuda-python first; `gpu_count()` asks whether a GPU answers at all, without opening a
context. Every failure of the bindings (cuda-python raises `RuntimeError` when the driver library
is missing, pycuda its own error types) comes out as a coded `EdgeError`.

On a Jetson every Orin module names its GPU "Orin", so the engine cache key also holds the L4T
release and the module's name from the device tree (`l4t_release`, `jetson_module`; their paths
are module constants a test can point elsewhere).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edge.errors import Code, EdgeError


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7" for an Orin
    total_memory: int  # bytes


@dataclass(frozen=True)
class CudaVersions:
    runtime: str  # "12.6": the CUDA runtime the bindings use
    driver: str  # "12.6": the newest CUDA the installed driver supports


def _cuda_version(number: int) -> str:
    """CUDA's integer versions (12060) as "12.6"."""
    return f"{number // 1000}.{number % 1000 // 10}"


class DeviceMemory(ABC):
    """Everything TensorRT inference needs from CUDA, and nothing more."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """True when the bindings import (a GPU is checked by `gpu_info`)."""

    @classmethod
    @abstractmethod
    def device_count(cls) -> int:
        """CUDA GPUs the driver sees, without creating a context; BACKEND_UNAVAILABLE when the
        bindings or the driver cannot answer."""

    @abstractmethod
    def gpu_info(self) -> GpuInfo: ...

    @abstractmethod
    def cuda_versions(self) -> CudaVersions: ...

    @abstractmethod
    def malloc(self, nbytes: int) -> int:
        """Device allocation; returns the device pointer as an int."""

    @abstractmethod
    def free(self, pointer: int) -> None: ...

    @abstractmethod
    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """A page-locked host array (asynchronous copies need one)."""

    @abstractmethod
    def pinned_free(self, array: np.ndarray) -> None: ...

    @abstractmethod
    def stream_create(self) -> Any: ...

    @abstractmethod
    def stream_handle(self, stream: Any) -> int:
        """The raw `cudaStream_t` as an int, for `execute_async_v3`."""

    @abstractmethod
    def stream_destroy(self, stream: Any) -> None: ...

    @abstractmethod
    def synchronize(self, stream: Any) -> None: ...

    @abstractmethod
    def copy_to_device(self, pointer: int, host: np.ndarray, stream: Any) -> None: ...

    @abstractmethod
    def copy_to_host(self, host: np.ndarray, pointer: int, stream: Any) -> None: ...

    def close(self) -> None:
        """Release what this object holds of the driver (a context, for pycuda). Idempotent."""
        return None


class CudaPythonMemory(DeviceMemory):
    name = "cuda-python"

    def __init__(self) -> None:
        self._pinned: dict[int, int] = {}  # host array address -> cudaMallocHost pointer
        with _coded("cuda-python"):
            self._rt = _cudart()
            # Initialises the primary context (shared by every thread, as TensorRT expects);
            # fails fast with no GPU.
            self._check(self._rt.cudaFree(0), Code.BACKEND_UNAVAILABLE)

    @classmethod
    def is_available(cls) -> bool:
        return _installed("cuda.bindings") or _installed("cuda.cudart")

    @classmethod
    def device_count(cls) -> int:
        with _coded("cuda-python"):
            runtime = _cudart()
            error, count = runtime.cudaGetDeviceCount()
            if int(error) != 0:
                _, text = runtime.cudaGetErrorString(error)
                raise EdgeError(Code.BACKEND_UNAVAILABLE, f"CUDA error {int(error)}: {text.decode()}")
            return int(count)

    def _check(self, result: Any, code: Code = Code.INFERENCE_FAILED) -> Any:
        error, *values = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            _, text = self._rt.cudaGetErrorString(error)
            raise EdgeError(code, f"CUDA error {int(error)}: {text.decode()}")
        return values[0] if len(values) == 1 else tuple(values)

    def gpu_info(self) -> GpuInfo:
        device = self._check(self._rt.cudaGetDevice(), Code.BACKEND_UNAVAILABLE)
        props = self._check(self._rt.cudaGetDeviceProperties(device), Code.BACKEND_UNAVAILABLE)
        name = (
            props.name.decode(errors="replace").rstrip("\x00")
            if isinstance(props.name, bytes)
            else str(props.name)
        )
        return GpuInfo(name, f"{props.major}.{props.minor}", int(props.totalGlobalMem))

    def cuda_versions(self) -> CudaVersions:
        runtime = self._check(self._rt.cudaRuntimeGetVersion(), Code.BACKEND_UNAVAILABLE)
        driver = self._check(self._rt.cudaDriverGetVersion(), Code.BACKEND_UNAVAILABLE)
        return CudaVersions(_cuda_version(int(runtime)), _cuda_version(int(driver)))

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(1, nbytes))))

    def free(self, pointer: int) -> None:
        self._check(self._rt.cudaFree(pointer))

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        pointer = int(self._check(self._rt.cudaMallocHost(nbytes)))
        buffer = (ctypes.c_byte * nbytes).from_address(pointer)
        array = np.frombuffer(memoryview(buffer), dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        self._pinned[array.__array_interface__["data"][0]] = pointer
        return array

    def pinned_free(self, array: np.ndarray) -> None:
        pointer = self._pinned.pop(array.__array_interface__["data"][0], None)
        if pointer is not None:
            self._check(self._rt.cudaFreeHost(pointer))

    def stream_create(self) -> Any:
        return self._check(self._rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_destroy(self, stream: Any) -> None:
        self._check(self._rt.cudaStreamDestroy(stream))

    def synchronize(self, stream: Any) -> None:
        self._check(self._rt.cudaStreamSynchronize(stream))

    def copy_to_device(self, pointer: int, host: np.ndarray, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes, kind, stream))

    def copy_to_host(self, host: np.ndarray, pointer: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, kind, stream))


class PycudaMemory(DeviceMemory):
    """pycuda on the device's *primary* context (the one the CUDA runtime and TensorRT use),
    pushed around every call so any thread may use it, and detached on close. A context made
    with make_context() and never popped would abort the process at exit."""

    name = "pycuda"

    def __init__(self) -> None:
        self._allocations: dict[int, Any] = {}
        with _coded("pycuda"):
            self._driver = importlib.import_module("pycuda.driver")
            self._driver.init()
            self._device = self._driver.Device(0)
            self._context: Any = self._device.retain_primary_context()

    @classmethod
    def is_available(cls) -> bool:
        return _installed("pycuda")

    @classmethod
    def device_count(cls) -> int:
        with _coded("pycuda"):
            driver = importlib.import_module("pycuda.driver")
            driver.init()
            return int(driver.Device.count())

    @contextlib.contextmanager
    def _current(self) -> Iterator[None]:
        if self._context is None:
            raise EdgeError(Code.INFERENCE_FAILED, "pycuda device memory is closed")
        self._context.push()
        try:
            yield
        except EdgeError:
            raise
        except Exception as exc:  # pycuda raises its own LogicError/RuntimeError
            raise EdgeError(Code.INFERENCE_FAILED, f"CUDA (pycuda): {exc}") from exc
        finally:
            self._driver.Context.pop()

    def gpu_info(self) -> GpuInfo:
        major, minor = self._device.compute_capability()
        return GpuInfo(self._device.name(), f"{major}.{minor}", int(self._device.total_memory()))

    def cuda_versions(self) -> CudaVersions:
        # pycuda has no runtime API: the CUDA it was compiled against stands in for the runtime.
        with _coded("pycuda"):
            compiled = self._driver.get_version()
            return CudaVersions(
                f"{compiled[0]}.{compiled[1]}", _cuda_version(self._driver.get_driver_version())
            )

    def malloc(self, nbytes: int) -> int:
        with self._current():
            allocation = self._driver.mem_alloc(max(1, nbytes))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer: int) -> None:
        allocation = self._allocations.pop(pointer, None)
        if allocation is not None:
            with self._current():
                allocation.free()

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        with self._current():
            return np.asarray(self._driver.pagelocked_empty(shape, dtype))

    def pinned_free(self, array: np.ndarray) -> None:
        base = getattr(array, "base", None)
        if base is not None and hasattr(base, "free"):
            with self._current():
                base.free()

    def stream_create(self) -> Any:
        with self._current():
            return self._driver.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_destroy(self, stream: Any) -> None:
        return None  # released with its Python object

    def synchronize(self, stream: Any) -> None:
        with self._current():
            stream.synchronize()

    def copy_to_device(self, pointer: int, host: np.ndarray, stream: Any) -> None:
        with self._current():
            self._driver.memcpy_htod_async(pointer, host, stream)

    def copy_to_host(self, host: np.ndarray, pointer: int, stream: Any) -> None:
        with self._current():
            self._driver.memcpy_dtoh_async(host, pointer, stream)

    def close(self) -> None:
        if self._context is not None:
            for pointer in list(self._allocations):
                self.free(pointer)
            self._context.detach()
            self._context = None


IMPLEMENTATIONS: dict[str, type[DeviceMemory]] = {"cuda-python": CudaPythonMemory, "pycuda": PycudaMemory}


def _installed(module: str) -> bool:
    """Whether `module` can be found, without importing it (a broken install may raise here)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def _coded(binding: str) -> Iterator[None]:
    """Any failure of the bindings or the driver as BACKEND_UNAVAILABLE: cuda-python raises
    RuntimeError when libcuda cannot be loaded, pycuda its own LogicError/RuntimeError."""
    try:
        yield
    except EdgeError:
        raise
    except Exception as exc:  # driver errors come in every type; re-raised with a code
        raise EdgeError(Code.BACKEND_UNAVAILABLE, f"{binding}: {type(exc).__name__}: {exc}"[:300]) from exc


def _cudart() -> Any:
    for module in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-python >= 12.6, then older
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    raise EdgeError(Code.BACKEND_UNAVAILABLE, "cuda-python is not installed")


def available() -> list[str]:
    return [name for name, cls in IMPLEMENTATIONS.items() if cls.is_available()]


def gpu_count(choice: str = "auto") -> int:
    """How many CUDA GPUs the first installed binding sees (never zero: no GPU is
    BACKEND_UNAVAILABLE, with each binding's reason). Creates no context."""
    names = list(IMPLEMENTATIONS) if choice == "auto" else [choice]
    problems = []
    for name in names:
        cls = IMPLEMENTATIONS.get(name)
        if cls is None:
            raise EdgeError(Code.CONFIG_INVALID, f"unknown device memory implementation {name!r}")
        if not cls.is_available():
            problems.append(f"{name} is not installed")
            continue
        try:
            count = cls.device_count()
        except EdgeError as error:
            problems.append(error.message)
            continue
        if count > 0:
            return count
        problems.append(f"{name}: the driver sees no CUDA GPU")
    raise EdgeError(Code.BACKEND_UNAVAILABLE, "no CUDA GPU: " + "; ".join(problems))


def open_device_memory(choice: str = "auto") -> DeviceMemory:
    """The configured implementation, or the first that imports and finds a GPU."""
    names = list(IMPLEMENTATIONS) if choice == "auto" else [choice]
    errors = []
    for name in names:
        cls = IMPLEMENTATIONS.get(name)
        if cls is None:
            raise EdgeError(Code.CONFIG_INVALID, f"unknown device memory implementation {name!r}")
        if not cls.is_available():
            errors.append(f"{name} is not installed")
            continue
        try:
            return cls()
        except EdgeError as error:
            errors.append(f"{name}: {error.message}")
        except Exception as exc:  # noqa: BLE001 - driver errors come in every type
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    raise EdgeError(Code.BACKEND_UNAVAILABLE, "no CUDA device memory: " + "; ".join(errors))


# Jetson facts for the engine cache key: module constants, so a test can point them elsewhere.
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


def l4t_release(path: Path | None = None) -> str:
    """The Jetson Linux (L4T) release, "R36.4.3"; "" off a Jetson. Its first line reads
    "# R36 (release), REVISION: 4.3, GCID: ..."."""
    try:
        text = (path or NV_TEGRA_RELEASE).read_text(errors="replace")
    except OSError:
        return ""
    found = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if found:
        return f"R{found.group(1)}.{found.group(2).rstrip('.')}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:80]


def jetson_module(path: Path | None = None) -> str:
    """The board's name from the device tree ("NVIDIA Jetson Orin Nano Developer Kit"); ""
    where there is none. Every Orin's GPU is just "Orin", so this tells the modules apart."""
    try:
        return (path or DEVICE_TREE_MODEL).read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return ""
