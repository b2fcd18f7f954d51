"""A stand-in for the `tensorrt` module, per API flavour, and for the CUDA device memory.

Only the surface `edge/runtime/tensorrt.py` uses, shaped like each flavour's real bindings (the
conformance test checks the real ones): 8.6 has no STRONGLY_TYPED and no IProgressMonitor, and
its `create_network(0)` is an implicit-batch network the ONNX parser refuses; 11 has no FP16 or
INT8 builder flag and no EXPLICIT_BATCH; on 10 a strongly typed network refuses precision flags.
A name the backend uses that a flavour lacks raises AttributeError here too.

The "serialized engine" is JSON saying how it was built (flags, workspace, profile, progress),
so tests read back what the backend asked the builder for. The engine has one input and three
outputs: `logits` and `cam`, which manifests name, and `features`, which none does.
"""

from __future__ import annotations

import enum
import importlib.machinery
import json
import types
from typing import Any, ClassVar

import numpy as np

from edge.runtime.device_memory import CudaVersions, DeviceMemory, GpuInfo
from edge.runtime.tensorrt_versions import version_support

MAGIC = b"FAKE-TENSORRT-ENGINE\n"
TENSORS = {  # name -> (is input, shape with -1 for the batch)
    "image": (True, (-1, 1, 8, 8)),
    "logits": (False, (-1, 2)),
    "cam": (False, (-1, 2, 8, 8)),
    "features": (False, (-1, 16)),
}


def fake_tensorrt(version: str) -> types.ModuleType:
    flavour = version_support(version).flavour or ("8.6" if version.startswith("8.") else "10")
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version

    builder_flags = {"TF32": 7} if flavour == "11" else {"FP16": 0, "INT8": 1, "TF32": 7}
    network_flags = {"8.6": {"EXPLICIT_BATCH": 0}, "10": {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}}.get(
        flavour, {"STRONGLY_TYPED": 1}
    )
    BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)  # type: ignore[misc]
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", network_flags)  # type: ignore[misc]
    MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})  # type: ignore[misc]
    TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})  # type: ignore[misc]
    DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2})  # type: ignore[misc]

    class ILogger:
        Severity = enum.IntEnum(  # type: ignore[misc]
            "Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}
        )

        def log(self, severity: Any, message: str) -> None:
            raise NotImplementedError

    class IProgressMonitor:
        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None: ...
        def step_complete(self, phase_name: str, step: int) -> bool: ...
        def phase_finish(self, phase_name: str) -> None: ...

    strongly_typed_bit = 1 << network_flags["STRONGLY_TYPED"] if "STRONGLY_TYPED" in network_flags else 0
    explicit_bit = 1 << network_flags["EXPLICIT_BATCH"] if "EXPLICIT_BATCH" in network_flags else 0

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            # 8.6: explicit batch only when asked; 10 ignores the flag; 11 has no other kind.
            self.explicit_batch = flavour != "8.6" or bool(flags & explicit_bit)
            self.strongly_typed = flavour == "11" or bool(flags & strongly_typed_bit)

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
            self.network = network
            self.errors: list[str] = []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> str:
            return self.errors[index]

        def parse(self, model: bytes, path: str | None = None) -> bool:
            if not self.network.explicit_batch:
                self.errors.append("the ONNX parser only supports networks with an explicit batch dimension")
            elif model.startswith(b"not onnx"):
                self.errors.append("failed to parse the ONNX model")
            return not self.errors

    class ITimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return b"timing cache"

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, list[list[int]]] = {}

        def set_shape(self, name: str, minimum: Any, optimum: Any, maximum: Any) -> None:
            self.shapes[name] = [list(minimum), list(optimum), list(maximum)]

    progress_slots = ("progress_monitor",) if flavour != "8.6" else ()

    class IBuilderConfig:
        __slots__ = ("cache", "cleared", "flags", "pools", "profiles", *progress_slots)

        def __init__(self) -> None:
            self.flags = {BuilderFlag.TF32}  # TensorRT's default: TF32 on
            self.cleared: set[Any] = set()
            self.pools: dict[str, int] = {}
            self.profiles: list[IOptimizationProfile] = []
            self.cache: ITimingCache | None = None

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            self.pools[pool.name] = pool_size

        def set_flag(self, flag: Any) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag: Any) -> None:
            self.flags.discard(flag)
            self.cleared.add(flag)

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache | None:
            if serialized_timing_cache.startswith(b"damaged"):
                return None  # as TensorRT answers a blob it cannot read (trtexec checks for it)
            return ITimingCache(serialized_timing_cache)

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self.cache

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> Any:
            precision_flags = {f.name for f in config.flags} - {"TF32"}
            if network.strongly_typed and precision_flags:
                self.logger.log(
                    ILogger.Severity.ERROR, "precision flags are not allowed on a strongly typed network"
                )
                return None
            monitor = getattr(config, "progress_monitor", None)
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                monitor.step_complete("Building engine", 0)
                monitor.step_complete("Building engine", 1)
                monitor.phase_finish("Building engine")
            built = {
                "network_flags": network.flags,
                "strongly_typed": network.strongly_typed,
                "flags": sorted(f.name for f in config.flags),
                "cleared": sorted(f.name for f in config.cleared),
                "workspace": config.pools.get("WORKSPACE"),
                "profile": config.profiles[0].shapes if config.profiles else {},
                "progress_monitor": monitor is not None,
            }
            return MAGIC + json.dumps(built).encode()

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine = engine
            self.addresses: dict[str, int] = {}
            self.input_shape: tuple[int, ...] = ()

        def set_tensor_address(self, name: str, memory: int) -> bool:
            if name not in TENSORS:
                return False
            self.addresses[name] = memory
            return True

        def set_input_shape(self, name: str, shape: Any) -> bool:
            self.input_shape = tuple(shape)
            return 1 <= self.input_shape[0] <= self.engine.max_batch

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (self.input_shape[0], *TENSORS[name][1][1:])

        def execute_async_v3(self, stream_handle: int) -> bool:
            # Like TensorRT: every input and output needs an address, wanted or not.
            missing = [name for name in TENSORS if name not in self.addresses]
            if missing:
                self.engine.logger.log(ILogger.Severity.ERROR, f"no address set for {missing}")
                return False
            return True

    class ICudaEngine:
        def __init__(self, built: dict[str, Any], logger: ILogger) -> None:
            self.built = built
            self.logger = logger
            self.max_batch = built["profile"]["image"][2][0] if built["profile"] else 1
            self.contexts: list[IExecutionContext] = []

        @property
        def num_io_tensors(self) -> int:
            return len(TENSORS)

        def get_tensor_name(self, index: int) -> str:
            return list(TENSORS)[index]

        def get_tensor_mode(self, name: str) -> Any:
            return TensorIOMode.INPUT if TENSORS[name][0] else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            return DataType.FLOAT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return TENSORS[name][1]

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[list[int]]:
            return self.built["profile"][name]

        def create_execution_context(self) -> IExecutionContext:
            context = IExecutionContext(self)
            self.contexts.append(context)
            return context

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
            if not serialized_engine.startswith(MAGIC):
                self.logger.log(
                    ILogger.Severity.ERROR, "the serialized engine is corrupt (magic tag mismatch)"
                )
                return None
            return ICudaEngine(json.loads(serialized_engine[len(MAGIC) :]), self.logger)

    def nptype(trt_type: Any) -> type:
        return {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8}[trt_type]

    for name, value in {
        "BuilderFlag": BuilderFlag,
        "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag,
        "MemoryPoolType": MemoryPoolType,
        "TensorIOMode": TensorIOMode,
        "DataType": DataType,
        "ILogger": ILogger,
        "INetworkDefinition": INetworkDefinition,
        "OnnxParser": OnnxParser,
        "ITimingCache": ITimingCache,
        "IOptimizationProfile": IOptimizationProfile,
        "IBuilderConfig": IBuilderConfig,
        "Builder": Builder,
        "IExecutionContext": IExecutionContext,
        "ICudaEngine": ICudaEngine,
        "Runtime": Runtime,
        "nptype": nptype,
    }.items():
        setattr(trt, name, value)
    if flavour != "8.6":
        trt.IProgressMonitor = IProgressMonitor
    return trt


def built_with(engine: bytes) -> dict[str, Any]:
    """How a fake engine was built (its JSON)."""
    assert engine.startswith(MAGIC)
    built: dict[str, Any] = json.loads(engine[len(MAGIC) :])
    return built


class FakeDeviceMemory(DeviceMemory):
    """Device memory that is host memory: pointers are counters, copies copy nothing."""

    name = "fake"
    gpus: ClassVar[int] = 1

    def __init__(self) -> None:
        self.allocated: dict[int, int] = {}  # pointer -> bytes
        self.freed: list[int] = []
        self._next = 0x1000

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def device_count(cls) -> int:
        return cls.gpus

    def gpu_info(self) -> GpuInfo:
        return GpuInfo("Orin (nvgpu)", "8.7", 8 * 2**30)

    def cuda_versions(self) -> CudaVersions:
        return CudaVersions("12.6", "12.6")

    def malloc(self, nbytes: int) -> int:
        self._next += 0x1000 + nbytes
        self.allocated[self._next] = nbytes
        return self._next

    def free(self, pointer: int) -> None:
        self.freed.append(pointer)
        self.allocated.pop(pointer)

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        return np.zeros(shape, dtype)

    def pinned_free(self, array: np.ndarray) -> None:
        return None

    def stream_create(self) -> Any:
        return object()

    def stream_handle(self, stream: Any) -> int:
        return id(stream)

    def stream_destroy(self, stream: Any) -> None:
        return None

    def synchronize(self, stream: Any) -> None:
        return None

    def copy_to_device(self, pointer: int, host: np.ndarray, stream: Any) -> None:
        assert pointer in self.allocated

    def copy_to_host(self, host: np.ndarray, pointer: int, stream: Any) -> None:
        assert pointer in self.allocated
        host[...] = 0.5
