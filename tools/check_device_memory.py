"""Check the TensorRT device-memory layer on a real NVIDIA GPU (no TensorRT needed).

    python -m tools.check_device_memory [--json out.json]

For every implementation that imports here (cuda-python, pycuda): GPU identity; round trips of
random arrays (bytes to 64 MiB, several dtypes) host -> device -> host through page-locked
buffers on a stream; two streams in flight at once; allocation and release in a loop (no
growth); and copy bandwidth. Exits non-zero on any mismatch. Meant to run in well under five
minutes on the machine a session is lent, or on a Jetson before its first engine build.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EdgeError
from edge.runtime.device_memory import IMPLEMENTATIONS, DeviceMemory

SIZES = [1, 3, 4096, 1 << 20, 16 << 20, 64 << 20]
DTYPES = [np.uint8, np.int8, np.float16, np.float32, np.int64]


def round_trip(memory: DeviceMemory, data: np.ndarray, stream: Any) -> bool:
    host_in = memory.pinned_empty(data.shape, data.dtype)
    host_out = memory.pinned_empty(data.shape, data.dtype)
    host_in[...] = data
    host_out[...] = 0
    pointer = memory.malloc(data.nbytes)
    try:
        memory.copy_to_device(pointer, host_in, stream)
        memory.copy_to_host(host_out, pointer, stream)
        memory.synchronize(stream)
        return bool(np.array_equal(host_out, data))
    finally:
        memory.free(pointer)
        memory.pinned_free(host_in)
        memory.pinned_free(host_out)


def check(memory: DeviceMemory) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"implementation": memory.name, "gpu": memory.gpu_info().__dict__}
    stream = memory.stream_create()
    failures = []
    for nbytes in SIZES:
        for dtype in DTYPES:
            count = max(1, nbytes // np.dtype(dtype).itemsize)
            data = rng.integers(0, 127, count).astype(dtype)
            if not round_trip(memory, data, stream):
                failures.append(f"{dtype.__name__} x {count}")
    out["round_trips"] = len(SIZES) * len(DTYPES)
    # Two streams in flight: distinct data must not cross.
    streams = [memory.stream_create(), memory.stream_create()]
    arrays = [rng.standard_normal(1 << 22).astype(np.float32) for _ in streams]
    pinned_in = [memory.pinned_empty(a.shape, a.dtype) for a in arrays]
    pinned_out = [memory.pinned_empty(a.shape, a.dtype) for a in arrays]
    pointers = [memory.malloc(a.nbytes) for a in arrays]
    for source, host_in, host_out, pointer, s in zip(
        arrays, pinned_in, pinned_out, pointers, streams, strict=True
    ):
        host_in[...] = source
        memory.copy_to_device(pointer, host_in, s)
        memory.copy_to_host(host_out, pointer, s)
    for s in streams:
        memory.synchronize(s)
    out["two_streams_ok"] = all(np.array_equal(a, b) for a, b in zip(arrays, pinned_out, strict=True))
    if not out["two_streams_ok"]:
        failures.append("two streams")
    for pointer in pointers:
        memory.free(pointer)
    for array in (*pinned_in, *pinned_out):
        memory.pinned_free(array)
    for s in streams:
        memory.stream_destroy(s)
    # Allocation churn: 500 alloc/free pairs of 8 MiB each (4 GiB in all) must all succeed.
    for _ in range(500):
        memory.free(memory.malloc(8 << 20))
    out["alloc_churn"] = 500
    # Bandwidth through pinned memory, 256 MiB each way.
    big = memory.pinned_empty((256 << 20,), np.dtype(np.uint8))
    pointer = memory.malloc(big.nbytes)
    started = time.perf_counter()
    memory.copy_to_device(pointer, big, stream)
    memory.synchronize(stream)
    h2d = big.nbytes / (time.perf_counter() - started) / 1e9
    started = time.perf_counter()
    memory.copy_to_host(big, pointer, stream)
    memory.synchronize(stream)
    d2h = big.nbytes / (time.perf_counter() - started) / 1e9
    memory.free(pointer)
    memory.pinned_free(big)
    memory.stream_destroy(stream)
    out["bandwidth_gb_s"] = {"host_to_device": round(h2d, 2), "device_to_host": round(d2h, 2)}
    out["failures"] = failures
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    reports = []
    for name, cls in IMPLEMENTATIONS.items():
        if not cls.is_available():
            reports.append({"implementation": name, "skipped": "not installed"})
            continue
        try:
            memory = cls()
            try:
                reports.append(check(memory))
            finally:
                memory.close()
        except EdgeError as error:
            reports.append({"implementation": name, "error": error.one_line()})
    text = json.dumps(reports, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    bad = [r for r in reports if r.get("failures") or r.get("error")]
    tested = [r for r in reports if "failures" in r]
    sys.exit(1 if bad or not tested else 0)


if __name__ == "__main__":
    main()
