"""The device-memory layer: on a real GPU (skips where no CUDA binding or GPU is present), and
everywhere its coded refusals and the Jetson facts for the engine cache key."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.errors import Code, EdgeError
from edge.inference.engine_manager import read_build_host
from edge.runtime import device_memory
from edge.runtime.device_memory import IMPLEMENTATIONS, CudaPythonMemory, DeviceMemory, PycudaMemory
from tests.fake_tensorrt import FakeDeviceMemory


def implementations() -> list[DeviceMemory]:
    opened = []
    for cls in IMPLEMENTATIONS.values():
        if cls.is_available():
            try:
                opened.append(cls())
            except EdgeError:  # every failure of the bindings or the driver comes out coded
                continue
    return opened


@pytest.mark.tensorrt
def test_round_trips_on_every_available_implementation() -> None:
    opened = implementations()
    if not opened:
        pytest.skip("no CUDA binding with a GPU here")
    from tools.check_device_memory import check

    for memory in opened:
        try:
            report = check(memory)
        finally:
            memory.close()
        assert report["failures"] == [], report
        assert report["two_streams_ok"]
        assert np.isfinite(report["bandwidth_gb_s"]["host_to_device"])


# ------------------------------------------------------------------ without a GPU: coded refusals
# cuda-python raises RuntimeError when libcuda cannot be loaded (a machine without the driver),
# pycuda its own error types: the layer turns each into BACKEND_UNAVAILABLE, so callers (and the
# test above) skip or fall back instead of crashing.


class BrokenCudart:
    """cuda-python's runtime module on a machine without a driver."""

    def cudaFree(self, pointer: int) -> Any:
        raise RuntimeError("Failed to dlopen libcuda.so.1")

    def cudaGetDeviceCount(self) -> Any:
        raise RuntimeError("Failed to dlopen libcuda.so.1")


class NoDeviceCudart:
    """cuda-python's runtime module with a driver and no GPU."""

    def cudaGetDeviceCount(self) -> tuple[int, int]:
        return 100, 0

    def cudaGetErrorString(self, error: int) -> tuple[int, bytes]:
        return 0, b"no CUDA-capable device is detected"


def test_cuda_python_failures_are_coded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_memory, "_cudart", BrokenCudart)
    monkeypatch.setattr(CudaPythonMemory, "is_available", classmethod(lambda cls: True))
    with pytest.raises(EdgeError) as opened:
        CudaPythonMemory()
    assert opened.value.code is Code.BACKEND_UNAVAILABLE
    assert "RuntimeError: Failed to dlopen libcuda.so.1" in opened.value.message
    with pytest.raises(EdgeError) as counted:
        device_memory.gpu_count("cuda-python")
    assert counted.value.code is Code.BACKEND_UNAVAILABLE
    # What the real-GPU test above does with it: skip, not fail.
    assert [m.name for m in implementations() if m.name == "cuda-python"] == []


def test_no_gpu_is_coded_with_the_drivers_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_memory, "_cudart", NoDeviceCudart)
    monkeypatch.setattr(CudaPythonMemory, "is_available", classmethod(lambda cls: True))
    monkeypatch.setattr(PycudaMemory, "is_available", classmethod(lambda cls: False))
    with pytest.raises(EdgeError) as caught:
        device_memory.gpu_count()
    assert caught.value.code is Code.BACKEND_UNAVAILABLE
    assert "no CUDA-capable device is detected" in caught.value.message
    assert "pycuda is not installed" in caught.value.message


def test_pycuda_failures_are_coded(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def no_driver(name: str, package: str | None = None) -> Any:
        if name == "pycuda.driver":
            raise ImportError("libcuda.so.1: cannot open shared object file")
        return real_import(name, package)

    monkeypatch.setattr(device_memory.importlib, "import_module", no_driver)
    for attempt in (PycudaMemory, PycudaMemory.device_count):
        with pytest.raises(EdgeError) as caught:
            attempt()
        assert caught.value.code is Code.BACKEND_UNAVAILABLE
        assert "pycuda: ImportError" in caught.value.message


def test_an_unknown_implementation_is_a_config_error() -> None:
    with pytest.raises(EdgeError) as caught:
        device_memory.gpu_count("cupy-magic")
    assert caught.value.code is Code.CONFIG_INVALID


# ------------------------------------------------------------------ Jetson facts for the cache key


def test_l4t_release_and_module_from_a_jetson(tmp_path: Path) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
        "DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\n"
    )
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit\x00")
    assert device_memory.l4t_release(release) == "R36.4.3"
    assert device_memory.jetson_module(model) == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit"
    release.write_text("something else entirely\n")
    assert device_memory.l4t_release(release) == "something else entirely"


def test_off_a_jetson_both_are_empty(tmp_path: Path) -> None:
    assert device_memory.l4t_release(tmp_path / "absent") == ""
    assert device_memory.jetson_module(tmp_path / "absent") == ""


def test_the_build_host_reads_cuda_and_jetson_facts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    monkeypatch.setattr(device_memory, "DEVICE_TREE_MODEL", model)
    monkeypatch.setattr(device_memory, "NV_TEGRA_RELEASE", tmp_path / "absent")
    off_jetson = read_build_host(FakeDeviceMemory(), "10.3.0")
    assert (off_jetson.cuda_runtime, off_jetson.cuda_driver) == ("12.6", "12.6")
    assert (off_jetson.l4t, off_jetson.module) == ("", "")  # a device tree alone is no Jetson
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.4, GCID: 1\n")
    monkeypatch.setattr(device_memory, "NV_TEGRA_RELEASE", release)
    jetson = read_build_host(FakeDeviceMemory(), "10.3.0")
    assert (jetson.tensorrt, jetson.gpu.name) == ("10.3.0", "Orin (nvgpu)")
    assert (jetson.l4t, jetson.module) == ("R36.4.4", "NVIDIA Jetson AGX Orin Developer Kit")
