"""A device's upload cannot take the hub's memory (issue 17, item 4): an image whose header claims
too many pixels is not decoded, a decode runs in a memory-bounded child process, and a source is
decoded once (its renditions come from the cached result)."""

from __future__ import annotations

import hashlib
import struct
import tracemalloc
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from edge.hub import render
from edge.hub.render import Renditions


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(width: int, height: int, channels: int = 1) -> bytes:
    """A real, complete PNG of zeros, compressed row by row (the test never holds the pixels)."""
    colour_type = {1: 0, 3: 2}[channels]
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + width * channels)  # filter byte "none", then the row
    parts = [compressor.compress(row) for _ in range(height)]
    idat = b"".join(parts) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def upload(folder: Path, name: str, data: bytes) -> Any:
    path = folder / name
    path.write_bytes(data)
    return SimpleNamespace(path=str(path), sha256=hashlib.sha256(data).hexdigest())


def thumbnail(folder: Path) -> Any:
    ok, encoded = cv2.imencode(".png", np.full((256, 256), 128, np.uint8))
    assert ok
    return upload(folder, "thumb.png", encoded.tobytes())


def peak_mb(action: Any) -> float:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


@pytest.mark.security
def test_an_image_claiming_too_many_pixels_is_not_decoded_by_the_hub(tmp_path: Path) -> None:
    """The attack: a 585 KB PNG of 10000 x 10000 took the hub from 123 MB to 1.5 GB."""
    huge = upload(tmp_path, "huge.png", blank_png(10_000, 10_000))
    assert len(Path(huge.path).read_bytes()) < 1_000_000
    renditions = Renditions(tmp_path / "cache")
    uploads = {"image": huge, "thumbnail": thumbnail(tmp_path)}
    pictures: list[Any] = []
    peak = peak_mb(lambda: pictures.append(renditions.describe(uploads)))
    assert pictures[0].source == "thumbnail"  # the next best source is shown
    assert renditions.image(uploads, 1024) is not None
    assert peak < 30, f"the hub's own process allocated {peak:.0f} MB"


@pytest.mark.security
def test_a_decode_past_the_memory_bound_fails_in_the_child_not_the_hub(tmp_path: Path) -> None:
    """Under every pixel limit but over the memory bound: 100 M colour pixels need 300 MB to
    decode and as much again to reorder; a child bounded at 700 MB of address space (about
    480 MB of it is Python, NumPy and OpenCV themselves) cannot, and the hub is untouched."""
    huge = upload(tmp_path, "colour.png", blank_png(10_000, 10_000, channels=3))
    renditions = Renditions(tmp_path / "cache", memory_mb=700, max_pixels=10**9)
    uploads = {"image": huge, "thumbnail": thumbnail(tmp_path)}
    pictures: list[Any] = []
    peak = peak_mb(lambda: pictures.append(renditions.describe(uploads)))
    assert pictures[0].source == "thumbnail"
    assert peak < 30, f"the hub's own process allocated {peak:.0f} MB"
    refused = list((tmp_path / "cache").rglob(f"{huge.sha256}-image-master"))
    assert len(refused) == 1
    assert b"refused" in refused[0].read_bytes()  # remembered: not decoded again at every view


@pytest.mark.security
def test_a_source_is_decoded_once_for_all_its_renditions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, encoded = cv2.imencode(".png", np.tile(np.arange(256, dtype=np.uint8), (900, 5)))
    assert ok
    image = upload(tmp_path, "image.png", encoded.tobytes())
    runs: list[dict[str, Any]] = []
    real = render.run_bounded

    def counted(module: str, job: dict[str, Any], memory_mb: int, timeout_s: float) -> None:
        runs.append(job)
        real(module, job, memory_mb, timeout_s)

    monkeypatch.setattr(render, "run_bounded", counted)
    renditions = Renditions(tmp_path / "cache")
    picture = renditions.describe({"image": image})
    assert (picture.source, picture.width, picture.height) == ("image", 1280, 900)
    widths = {}
    for width in (256, 512, 1024, 2048):
        jpeg = renditions.image({"image": image}, width)
        assert jpeg is not None
        widths[width] = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED).shape[1]
    assert widths == {256: 256, 512: 512, 1024: 1024, 2048: 1280}
    assert len(runs) == 1
    assert Renditions(tmp_path / "cache").describe({"image": image}).source == "image"  # a restart
    assert len(runs) == 1
