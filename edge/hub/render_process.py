"""Decoding a device's upload for the review pages without trusting it: the size its header
claims is checked first, and the decode itself runs in a child process bounded in memory and
time, so a crafted file costs the hub one refused picture, never its own memory.

A 585 KB PNG can claim 10000 x 10000 pixels and take 300 MB to decode, more to resize and split;
the hub's own process once grew from 123 MB to 1.5 GB on one study view. The child is a plain
`python -m <module> <job.json>` (the same idea as the device's `edge.ingest.guard`, without its
long-lived workers: a rendition is made once and cached on disk, so a process per source is cheap
enough and leaves nothing behind). It writes its results to files the job names; the parent reads
back only those bounded renditions.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edge.imaging.decode import JPEG_MAGIC, PNG_MAGIC, jpeg_size
from edge.imaging.evidence import MAGIC as EVIDENCE_MAGIC

log = logging.getLogger(__name__)
HEADER_BYTES = 256 * 1024  # a JPEG's frame header may follow large EXIF/ICC segments


class RenderRefused(Exception):
    """This source will not be decoded (too large, or its decode failed or ran out of bounds)."""


def claimed_pixels(path: Path) -> int | None:
    """Pixels the file's header claims (all frames), without decoding it; None when the header
    says nothing readable (the bounded child then finds out). OSError when the file is gone."""
    with path.open("rb") as handle:
        head = handle.read(HEADER_BYTES)
    if head.startswith(PNG_MAGIC) and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return int(width) * int(height)
    if head.startswith(EVIDENCE_MAGIC) and len(head) >= 10:  # a CAM grid: its cells
        height, width = struct.unpack("<HH", head[6:10])
        return int(height) * int(width)
    if head.startswith(JPEG_MAGIC):
        size = jpeg_size(head)
        return None if size is None else size[0] * size[1]
    return _dicom_pixels(path)


def _dicom_pixels(path: Path) -> int | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(
            path, stop_before_pixels=True, force=True, specific_tags=["Rows", "Columns", "NumberOfFrames"]
        )
        rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
        return None
    return rows * columns * max(1, frames) if rows and columns else None


def run_bounded(module: str, job: dict[str, Any], memory_mb: int, timeout_s: float) -> None:
    """Run `python -m module job.json` with an address-space limit; RenderRefused if it fails,
    is killed, or outlives `timeout_s`."""
    handle, job_file = tempfile.mkstemp(prefix="edge-render-", suffix=".json")
    with os.fdopen(handle, "w") as out:
        json.dump({**job, "memory_mb": memory_mb}, out)
    try:
        done = subprocess.run(
            [sys.executable, "-m", module, job_file],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # run() has killed it
        raise RenderRefused(f"decoding took longer than {timeout_s:g} s") from exc
    finally:
        os.unlink(job_file)
    if done.returncode != 0:
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise RenderRefused(f"the decode process failed ({done.returncode}): {last[0][:200]}")


def limit_memory(memory_mb: int) -> None:
    """In the child, before it decodes: allocations past the bound fail (MemoryError, or a
    decoder's own error), and the child exits non-zero instead of the hub swapping."""
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def read_job(argv: list[str]) -> dict[str, Any]:
    job: dict[str, Any] = json.loads(Path(argv[1]).read_text())
    limit_memory(int(job["memory_mb"]))
    return job
