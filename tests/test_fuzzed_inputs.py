"""Inputs a fuzzing of `edge infer` found unanswered: each now gets its code, in this process.

The agent's guarded decoder answered all of them already; `edge infer` (and the TUI's re-run)
decoded in their own process, where these hung or ended in a traceback. The decoding functions
are tested here in this process (the guard's worker runs the same ones); `edge infer` now decodes
in the guard too (the last test).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames

from edge.errors import EdgeError
from edge.imaging.decode import decode_bytes
from edge.pipeline import _looks_like_video
from edge.video.source import FrameSource
from tests.conftest import MODELS

DEMO_RLE = MODELS / "cxr-pneumonia" / "samples" / "demo" / "demo-06.dcm"


def test_a_named_pipe_or_a_webp_is_not_taken_for_a_video(tmp_path: Path) -> None:
    """Opening a FIFO with no writer blocked for ever; a WebP (RIFF too) was refused as a video."""
    fifo = tmp_path / "study.dcm"
    os.mkfifo(fifo)
    assert not _looks_like_video(fifo)  # returns at once: nothing opened
    webp = tmp_path / "photo.jpg"
    webp.write_bytes(b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(32))
    assert not _looks_like_video(webp)
    avi = tmp_path / "clip.avi"
    avi.write_bytes(b"RIFF\x24\x00\x00\x00AVI LIST" + bytes(32))
    assert _looks_like_video(avi)


@pytest.mark.skipif(not DEMO_RLE.exists(), reason="the bundled RLE demo film")
def test_a_decoder_that_panics_is_a_coded_refusal() -> None:
    """pylibjpeg-rle's Rust panics on an overflowing run (pyo3's PanicException, a
    BaseException): it went past `except Exception` as an uncoded traceback."""
    ds = pydicom.dcmread(DEMO_RLE)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    fragment = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    fragment[25428] = 0x81  # one control byte: a replicate run past the end of the frame
    ds.PixelData = encapsulate([bytes(fragment)])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(EdgeError) as refused:
        decode_bytes(buffer.getvalue(), "damaged.dcm")
    assert refused.value.code.value.startswith("DICOM_")


def test_a_cine_frame_that_does_not_decode_ends_the_clip_cut_short() -> None:
    """The frame reader died with the exception and never said it had ended: the analysis
    waited for ever with its job running. Now the source ends, and the clip reads as cut short
    (VIDEO_SOURCE_LOST: nothing of it stored)."""

    def frames() -> Iterator[tuple[float, np.ndarray]]:
        for index in range(3):
            yield index / 10, np.zeros((64, 64), np.uint8)
        raise RuntimeError("Unable to decode as exceptions were raised by all available plugins")

    source = FrameSource("cine.dcm", frames=frames()).start()  # not lossless: nobody reads here
    deadline = time.monotonic() + 10
    while not source.stats.ended and time.monotonic() < deadline:
        time.sleep(0.01)
    source.stop()
    assert source.stats.ended
    assert source.stats.end_reason == "frame 4 could not be decoded: RuntimeError"


def test_a_picture_too_deep_for_the_memory_left_is_a_coded_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 10000 x 10000 RGBA 16-bit PNG (760 KB) under an address-space limit: numpy's
    MemoryError was a traceback. Here the allocation's failure is simulated (a double); the
    fuzzing that found it ran the real file under RLIMIT_AS (/work/scratch/fuzz, in the note)."""
    import cv2

    from edge.errors import Code
    from edge.imaging import decode

    def no_memory(decoded: np.ndarray, significant_bits: int | None = None) -> np.ndarray:
        raise MemoryError("Unable to allocate 381. MiB")

    monkeypatch.setattr(decode, "to_display_uint8", no_memory)
    _, png = cv2.imencode(".png", np.zeros((8, 8, 4), np.uint16))
    with pytest.raises(EdgeError) as refused:
        decode_bytes(png.tobytes(), "bomb.png")
    assert refused.value.code is Code.IMAGE_DECODE_FAILED
    assert "not enough memory" in refused.value.message


def png_bomb(side: int) -> bytes:
    """A PNG of zeros, 16-bit RGBA, `side` x `side`: about 780 KB that unpack to 800 MB at 10000
    (within the pixel limit, 100 million), written a row at a time."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer, row = zlib.compressobj(9), bytes(1 + side * 8)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_edge_infer_decodes_in_the_agents_bounded_worker(tmp_path: Path) -> None:
    """`edge infer` decoded in its own process, unbounded: the bomb above was analysed at 2.1 GB
    peak resident memory. It is now decoded as the agent decodes, in a worker under
    `[ingest] decode_memory_mb`, and refused with a code; nothing is stored for it."""
    import json

    from click.testing import CliRunner

    from edge.cli import cli
    from edge.store import Store

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(10_000))
    config = tmp_path / "edge.toml"
    config.write_text("[ingest]\ndecode_memory_mb = 1024\n")
    data = tmp_path / "data"
    args = ["--config", str(config), "--data-dir", str(data), "infer", "--json", str(bomb)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 1
    refusal = json.loads(result.stdout)
    assert refusal["code"] in ("IMAGE_DECODE_FAILED", "DECODE_CRASHED")
    if refusal["code"] == "IMAGE_DECODE_FAILED":  # (a worker killed outright says less)
        assert "10000x10000 pixels, 800 MB decoded" in refusal["reason"]
    with Store(data) as store:
        assert store.counts()["images"] == 0
