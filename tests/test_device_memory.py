"""The device-memory layer on a real GPU; skips where no CUDA binding or GPU is present."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import EdgeError
from edge.runtime.device_memory import IMPLEMENTATIONS, DeviceMemory


def implementations() -> list[DeviceMemory]:
    opened = []
    for cls in IMPLEMENTATIONS.values():
        if cls.is_available():
            try:
                opened.append(cls())
            except EdgeError:
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
