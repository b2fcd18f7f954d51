"""The TensorRT backend against a fake `tensorrt` module per API flavour (tests/fake_tensorrt.py):
the version gate, what the builder is asked for on 8.6, 10 and 11, every output bound, and
availability without a GPU. Runs everywhere; the real bindings are the conformance test's."""

from __future__ import annotations

import ast
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge import runtime
from edge.config import load_settings
from edge.errors import Code, EdgeError
from edge.runtime import device_memory
from edge.runtime import tensorrt as backend
from edge.runtime.base import TensorNames
from edge.runtime.onnxruntime import OnnxRuntimeRunner
from edge.runtime.tensorrt import TRT_API, TensorRTRunner, api_names, build_engine, version_support
from tests.fake_tensorrt import FakeDeviceMemory, built_with, fake_tensorrt

NAMES = TensorNames("image", ("logits", "cam"))


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Any]]:
    """Puts a fake TensorRT of a given version where `import tensorrt` finds it; the process-wide
    logger bridge and the availability answer are forgotten before and after."""

    def put(version: str) -> Any:
        fake = fake_tensorrt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        monkeypatch.setattr(backend, "_shared_logger", None)
        backend.availability_problem.cache_clear()
        return fake

    backend.availability_problem.cache_clear()
    yield put
    backend.availability_problem.cache_clear()


# ------------------------------------------------------------------ the version gate


@pytest.mark.parametrize(
    ("version", "flavour"),
    [
        ("8.6.1", "8.6"),
        ("8.6.2.3", "8.6"),  # JetPack 6.0
        ("10.3.0", "10"),
        ("10.3.0.30", "10"),  # JetPack 6.1 / 6.2
        ("10.13.3.9", "10"),  # JetPack 7
        ("10.16.1.11", "10"),
        ("11.0.0.114", "11"),
        ("11.4.0.106", "11"),
    ],
)
def test_supported_versions_name_their_flavour(version: str, flavour: str) -> None:
    support = version_support(version)
    assert (support.supported, support.flavour) == (True, flavour)
    assert f"TensorRT {version} is supported" in support.message


@pytest.mark.parametrize(
    ("version", "upgrade"),
    [
        ("8.5.2.2", "JetPack 6.1 or newer"),  # JetPack 5.1
        ("8.4.1", "JetPack 6.1 or newer"),
        ("7.1.3", "JetPack 6.1 or newer"),
        ("9.3.0", "TensorRT 10.3 or newer"),
        ("10.0.1", "TensorRT 10.3 or newer"),
        ("10.2.0.post1", "JetPack 6.1 or newer"),
        ("12.0.0", "10.x or 11.x"),
    ],
)
def test_unsupported_versions_are_refused_by_name_with_the_upgrade(version: str, upgrade: str) -> None:
    support = version_support(version)
    assert (support.supported, support.flavour) == (False, None)
    assert f"TensorRT {version}" in support.message
    assert upgrade in support.message


def test_an_unreadable_version_is_refused() -> None:
    support = version_support("unknown")
    assert not support.supported
    assert "'unknown'" in support.message


@pytest.mark.parametrize("version", ["8.5.2.2", "10.1.0"])
def test_the_gate_refuses_before_any_build_or_load(install: Any, tmp_path: Path, version: str) -> None:
    install(version)
    with pytest.raises(EdgeError) as built:
        build_engine(
            tmp_path / "never-read.onnx",
            "int8",
            input_name="image",
            input_shape=(1, 8, 8),
            max_batch=4,
            workspace_mb=64,
            timing_cache=tmp_path / "timing.cache",
        )
    assert built.value.code is Code.BACKEND_UNAVAILABLE
    assert f"TensorRT {version}" in built.value.message
    memory = FakeDeviceMemory()
    with pytest.raises(EdgeError) as opened:
        TensorRTRunner(tmp_path / "never-read.engine", NAMES, load_settings().runtime, memory=memory)
    assert opened.value.code is Code.BACKEND_UNAVAILABLE
    assert memory.allocated == {}
    assert not TensorRTRunner.is_available()
    assert TensorRTRunner.unavailable_reason() == version_support(version).message


# ------------------------------------------------------------------ the API table


def test_the_table_has_a_key_per_flavour_and_the_fake_has_every_name() -> None:
    assert set(TRT_API) == {"common", "8.6", "10", "11"}
    for flavour, version in (("8.6", "8.6.2"), ("10", "10.3.0"), ("11", "11.4.0")):
        fake = fake_tensorrt(version)
        for name in api_names(flavour):
            target = fake
            for part in name.split("."):
                target = getattr(target, part)


def test_every_tensorrt_attribute_the_module_reads_is_in_the_table() -> None:
    """A light local check (the conformance test does this against the real bindings)."""
    tree = ast.parse(Path(backend.__file__).read_text())
    listed = {name for names in TRT_API.values() for name in names}
    chains = set()
    for node in ast.walk(tree):
        parts, inner = [], node
        while isinstance(inner, ast.Attribute):
            parts.append(inner.attr)
            inner = inner.value
        if parts and isinstance(inner, ast.Name) and inner.id == "trt":
            chains.add(".".join(reversed(parts)))
    assert chains, "the module reaches TensorRT through a local name `trt`"
    assert sorted(chains - listed) == []


# ------------------------------------------------------------------ what each flavour builds


def build(tmp_path: Path, precision: str, progress: Any = None) -> dict[str, Any]:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"an onnx model")
    engine = build_engine(
        onnx,
        precision,
        input_name="image",
        input_shape=(1, 8, 8),
        max_batch=4,
        workspace_mb=64,
        timing_cache=tmp_path / "timing.cache",
        progress=progress,
    )
    assert (tmp_path / "timing.cache").read_bytes() == b"timing cache"
    return built_with(engine)


@pytest.mark.parametrize(
    ("version", "precision", "typed", "flags", "cleared", "monitor"),
    [
        # 8.6: explicit batch always (the parser refuses implicit batch), INT8 by flag, no monitor.
        ("8.6.2", "int8", False, ["INT8", "TF32"], [], False),
        ("8.6.2", "fp16", False, ["FP16", "TF32"], [], False),
        ("8.6.2", "fp32", False, [], ["TF32"], False),
        # 10: INT8 strongly typed, FP16 by flag, progress reported.
        ("10.3.0.30", "int8", True, ["TF32"], [], True),
        ("10.16.1", "fp16", False, ["FP16", "TF32"], [], True),
        ("10.3.0", "fp32", False, [], ["TF32"], True),
        # 11: always strongly typed, no precision flags (FP16 comes from an FP16 ONNX).
        ("11.4.0", "int8", True, ["TF32"], [], True),
        ("11.4.0", "fp16", True, ["TF32"], [], True),
        ("11.4.0", "fp32", True, [], ["TF32"], True),
    ],
)
def test_each_flavour_builds_the_way_its_api_wants(
    install: Any,
    tmp_path: Path,
    version: str,
    precision: str,
    typed: bool,
    flags: list[str],
    cleared: list[str],
    monitor: bool,
) -> None:
    install(version)
    phases: list[tuple[str, float]] = []
    built = build(tmp_path, precision, progress=lambda phase, done: phases.append((phase, done)))
    assert built["strongly_typed"] is typed
    assert built["flags"] == flags
    assert built["cleared"] == cleared  # the "fp32" engine is not silently TF32
    assert built["progress_monitor"] is monitor
    assert bool(phases) is monitor
    assert built["workspace"] == 64 * 2**20
    assert built["profile"]["image"] == [[1, 1, 8, 8], [1, 1, 8, 8], [4, 1, 8, 8]]


def test_a_parse_error_is_a_build_failure_in_tensorrts_words(install: Any, tmp_path: Path) -> None:
    install("8.6.2")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not onnx")
    with pytest.raises(EdgeError) as caught:
        build_engine(
            onnx,
            "int8",
            input_name="image",
            input_shape=(1, 8, 8),
            max_batch=4,
            workspace_mb=64,
            timing_cache=tmp_path / "timing.cache",
        )
    assert caught.value.code is Code.ENGINE_BUILD_FAILED
    assert "failed to parse the ONNX model" in caught.value.message


def test_a_damaged_timing_cache_is_replaced_and_an_unsaved_one_keeps_the_engine(
    install: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The timing cache is one file for every model's builds and only a speed-up: a damaged one
    (a power cut) must not fail them all, nor one that cannot be written (a full disk, a file
    left root-owned by a build under sudo) throw the engine just built away."""
    install("10.3.0")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"an onnx model")
    cache = tmp_path / "timing.cache"
    arguments: dict[str, Any] = {"input_name": "image", "input_shape": (1, 8, 8), "max_batch": 4}
    arguments |= {"workspace_mb": 64, "timing_cache": cache}
    cache.write_bytes(b"damaged by a power cut")
    assert build_engine(onnx, "fp32", **arguments)
    assert cache.read_bytes() == b"timing cache"  # a new one, saved

    def full_disk(path: Path, data: bytes) -> None:
        raise EdgeError(Code.DISK_FULL, f"no space left for {path.name}")

    monkeypatch.setattr(backend, "write_atomically", full_disk)
    with caplog.at_level(logging.WARNING, logger=backend.log.name):
        assert build_engine(onnx, "fp32", **arguments)
    assert "the timing cache was not saved: DISK_FULL: no space left" in caplog.text


# ------------------------------------------------------------------ the runner


def engine_file(tmp_path: Path) -> Path:
    engine = tmp_path / "model.engine"
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"an onnx model")
    engine.write_bytes(
        build_engine(
            onnx,
            "fp32",
            input_name="image",
            input_shape=(1, 8, 8),
            max_batch=4,
            workspace_mb=64,
            timing_cache=tmp_path / "timing.cache",
        )
    )
    return engine


@pytest.mark.parametrize("version", ["8.6.2", "10.3.0", "11.4.0"])
def test_outputs_the_manifest_does_not_name_are_bound_to_scratch(
    install: Any, tmp_path: Path, version: str
) -> None:
    install(version)
    memory = FakeDeviceMemory()
    runner = TensorRTRunner(engine_file(tmp_path), NAMES, load_settings().runtime, memory=memory)
    context = runner._context
    assert set(context.addresses) == {"image", "logits", "cam", "features"}
    assert len(memory.allocated) == 4
    got = runner.infer(np.zeros((6, 1, 8, 8), np.float32))  # two chunks of max_batch 4
    assert set(got) == {"logits", "cam"}  # the scratch output is never copied back
    assert got["logits"].shape == (6, 2)
    assert got["cam"].shape == (6, 2, 8, 8)
    runner.close()
    assert memory.allocated == {}


def test_a_release_that_fails_still_lets_everything_go(install: Any, tmp_path: Path) -> None:
    """After a sticky CUDA error every call fails: the release must still free every buffer and
    drop the engine, say the first error, and not raise again at the next close."""
    install("10.3.0")
    memory = FakeDeviceMemory()
    runner = TensorRTRunner(engine_file(tmp_path), NAMES, load_settings().runtime, memory=memory)

    def sticky(stream: Any) -> None:
        raise RuntimeError("an illegal memory access was encountered")

    memory.synchronize = sticky  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="illegal memory access"):
        runner.close()
    assert memory.allocated == {}
    assert runner._context is None
    runner.close()  # nothing is held any more


def test_an_engine_that_does_not_fit_in_gpu_memory_is_not_called_unreadable(
    install: Any, tmp_path: Path
) -> None:
    """Out of device memory is not the file's fault: an unreadable engine is moved aside and
    rebuilt for minutes (engine_manager), one that does not fit now is not."""
    fake = install("10.3.0")
    engine = engine_file(tmp_path)

    def no_memory(runtime: Any, serialized: bytes) -> None:
        runtime.logger.log(fake.ILogger.Severity.ERROR, "2: [executionContext.cpp] Error Code 2: OutOfMemory")

    fake.Runtime.deserialize_cuda_engine = no_memory
    memory = FakeDeviceMemory()
    with pytest.raises(EdgeError) as caught:
        TensorRTRunner(engine, NAMES, load_settings().runtime, memory=memory)
    assert caught.value.code is Code.ENGINE_BUILD_FAILED
    assert "not enough GPU memory" in caught.value.message
    assert memory.allocated == {}


def test_the_logger_keeps_the_newest_errors_and_every_mark_still_works(install: Any) -> None:
    """One logger per process: a service that fails the same way for months must not grow it."""
    fake = install("10.3.0")
    logger = backend._logger()
    first = logger.mark()
    for number in range(1000):
        logger.bridge.log(fake.ILogger.Severity.ERROR, f"error {number}")
    assert len(logger._errors) == logger.KEPT_ERRORS
    middle = logger.mark()
    logger.bridge.log(fake.ILogger.Severity.WARNING, "a warning is not an error")
    logger.bridge.log(fake.ILogger.Severity.ERROR, "the last one")
    assert logger.errors_since(middle) == ["the last one"]
    assert logger.errors_since(logger.mark()) == []
    since_first = logger.errors_since(first)  # older than what is kept: the newest there are
    assert len(since_first) == logger.KEPT_ERRORS
    assert since_first[-2:] == ["error 999", "the last one"]


def test_an_engine_that_does_not_deserialize_is_unreadable(install: Any, tmp_path: Path) -> None:
    install("10.3.0")
    engine = engine_file(tmp_path)
    engine.write_bytes(engine.read_bytes()[:7])  # truncated on a power cut
    memory = FakeDeviceMemory()
    with pytest.raises(EdgeError) as caught:
        TensorRTRunner(engine, NAMES, load_settings().runtime, memory=memory)
    assert caught.value.code is Code.ENGINE_UNREADABLE
    assert "magic tag" in caught.value.message  # TensorRT's own words, from its log
    assert memory.allocated == {}


# ------------------------------------------------------------------ availability


def test_available_only_with_a_gpu(install: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    install("10.3.0.30")
    monkeypatch.setattr(device_memory, "available", lambda: ["cuda-python"])
    monkeypatch.setattr(device_memory, "gpu_count", lambda choice="auto": 1)
    assert TensorRTRunner.is_available()


def test_without_a_gpu_auto_serves_onnxruntime_quietly(
    install: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    install("10.3.0.30")
    calls = []

    def no_gpu(choice: str = "auto") -> int:
        calls.append(choice)
        raise EdgeError(Code.BACKEND_UNAVAILABLE, "no CUDA GPU: cuda-python: RuntimeError: cuInit failed")

    monkeypatch.setattr(device_memory, "available", lambda: ["cuda-python"])
    monkeypatch.setattr(device_memory, "gpu_count", no_gpu)
    with caplog.at_level(logging.WARNING):
        assert not TensorRTRunner.is_available()
        for _ in range(3):  # one model after another
            assert runtime.resolve_backend("auto") is OnnxRuntimeRunner
    assert "no CUDA GPU" in TensorRTRunner.unavailable_reason()
    assert calls == ["auto"]  # asked once per process
    assert caplog.records == []


def test_without_cuda_bindings_the_reason_says_what_to_install(
    install: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    install("10.3.0")
    monkeypatch.setattr(device_memory, "available", lambda: [])
    assert not TensorRTRunner.is_available()
    assert ".[jetson]" in TensorRTRunner.unavailable_reason()


def test_without_tensorrt_the_reason_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    backend.availability_problem.cache_clear()
    try:
        assert not TensorRTRunner.is_available()
        assert TensorRTRunner.unavailable_reason().startswith("TensorRT is not installed")
    finally:
        backend.availability_problem.cache_clear()
