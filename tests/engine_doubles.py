"""Doubles for the TensorRT engine manager on machines without TensorRT or a GPU.

The builder double writes the source ONNX itself, tagged with the precision, as the "engine";
the runner double opens it with ONNX Runtime (and refuses, as ENGINE_UNREADABLE, a file without
the tag, as TensorRT refuses a corrupt engine). The cache, fallback, records, retries and parity
logic of `EngineManager` run for real around them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import Settings, load_settings
from edge.errors import Code, EdgeError
from edge.inference.engine_cache import BuildHost
from edge.inference.engine_manager import EngineManager
from edge.runtime.base import Runner, TensorNames
from edge.runtime.device_memory import GpuInfo
from edge.runtime.onnxruntime import OnnxRuntimeRunner

ORIN = GpuInfo("Orin (nvgpu)", "8.7", 8 * 2**30)
ORIN_NANO = BuildHost(
    "10.3.0", ORIN, "12.6", "12.6", "R36.4.3", "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit"
)
PRECISIONS = (b"int8", b"fp16", b"fp32")


class Doubles:
    def __init__(
        self,
        fail: set[str] = frozenset(),  # type: ignore[assignment]
        noisy: set[str] = frozenset(),  # type: ignore[assignment]
        failure: str = "DequantizeLinear: unsupported INT32 input",
        corrupt: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        """`fail`: precisions whose build fails with `failure`; `noisy`: engines that compute
        something else (parity fails); `corrupt`: builds that write an engine that never loads."""
        self.fail, self.noisy, self.failure, self.corrupt = fail, noisy, failure, corrupt
        self.builds: list[str] = []
        self.workspaces: list[int] = []

    def builder(self, source: Path, precision: str, **kwargs: Any) -> bytes:
        self.builds.append(precision)
        self.workspaces.append(kwargs["workspace_mb"])
        assert kwargs["timing_cache"].name.startswith("timing-trt")
        assert kwargs["timing_cache"].name.endswith("-sm87.cache")
        assert kwargs["input_name"] == "image"
        assert kwargs["max_batch"] >= 1
        if precision in self.fail:
            raise EdgeError(Code.ENGINE_BUILD_FAILED, f"{precision}: {self.failure} (simulated)")
        if precision in self.corrupt:
            return b"\x00garbage"
        return precision.encode() + b"\n" + source.read_bytes()

    def runner(self, engine: Path, names: TensorNames) -> Runner:
        precision, _, onnx_bytes = engine.read_bytes().partition(b"\n")
        if precision not in PRECISIONS:
            raise EdgeError(Code.ENGINE_UNREADABLE, f"{engine.name} does not deserialize (simulated)")
        plain = engine.with_suffix(".onnx-as-engine")
        plain.write_bytes(onnx_bytes)
        inner = OnnxRuntimeRunner(plain, names, load_settings().runtime)
        if precision.decode() in self.noisy:
            original = inner.infer

            def noisy(batch: np.ndarray) -> dict[str, np.ndarray]:
                out = original(batch)
                return {
                    k: v + np.random.default_rng(0).normal(0, 5, v.shape).astype(v.dtype)
                    for k, v in out.items()
                }

            inner.infer = noisy  # type: ignore[method-assign]
        return inner


def manager(
    settings: Settings,
    doubles: Doubles,
    host: BuildHost = ORIN_NANO,
    clock: Callable[[], float] = time.time,
) -> EngineManager:
    return EngineManager(
        settings, builder=doubles.builder, runner_factory=doubles.runner, identity=lambda: host, clock=clock
    )
