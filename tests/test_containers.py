"""Whether a video file is a finished recording (edge.video.containers), on files OpenCV writes
and on the states a writer leaves them in."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.video.containers import unfinished
from tests.conftest import REPO


def written(tmp_path: Path, suffix: str, fourcc: str) -> bytes:
    path = tmp_path / f"clip{suffix}"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (64, 48))
    if not writer.isOpened():
        pytest.skip(f"this OpenCV cannot write {suffix} ({fourcc})")
    for index in range(20):
        writer.write(np.full((48, 64, 3), index * 10, np.uint8))
    writer.release()
    return path.read_bytes()


@pytest.mark.parametrize(("suffix", "fourcc"), [(".avi", "MJPG"), (".mkv", "MJPG"), (".mp4", "mp4v")])
def test_a_finished_recording_is_finished_and_a_cut_one_is_not(
    tmp_path: Path, suffix: str, fourcc: str
) -> None:
    data = written(tmp_path, suffix, fourcc)
    assert unfinished(data) is None
    for share in (0.3, 0.6, 0.95):
        assert unfinished(data[: int(len(data) * share)]) is not None


def test_the_sample_recording_is_finished() -> None:
    data = (REPO / "samples" / "video" / "lung-regular-alines.mp4").read_bytes()
    assert unfinished(data) is None


def test_what_a_writer_leaves_before_it_closes_the_file(tmp_path: Path) -> None:
    avi = bytearray(written(tmp_path, ".avi", "MJPG"))
    avi[48:52] = struct.pack("<I", 0)  # no frame count yet
    assert unfinished(bytes(avi)) == "its AVI header states no frames yet"
    mkv = bytearray(written(tmp_path, ".mkv", "MJPG"))
    header_size = mkv[4] & 0x7F if mkv[4] & 0x80 else None
    assert header_size is not None  # a one-byte size, as OpenCV's FFmpeg writes it
    segment = 5 + header_size
    assert mkv[segment : segment + 4] == b"\x18\x53\x80\x67"
    mkv[segment + 4 : segment + 12] = b"\x01\xff\xff\xff\xff\xff\xff\xff"  # size unknown
    assert "no size yet" in str(unfinished(bytes(mkv)))
    mp4 = written(tmp_path, ".mp4", "mp4v")
    index = mp4.find(b"moov") - 4
    without_index = mp4[:index] + b"\x00\x00\x00\x08free" + mp4[index + 8 :]
    assert unfinished(without_index) is not None
    assert unfinished(b"not a video at all") is None  # not a container it judges


def box(kind: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def test_a_fragmented_mp4_is_finished_only_with_its_closing_index() -> None:
    """A recorder flushing fragments leaves a file whose boxes tile it after each fragment (an
    outside-style check: 21 of 90 frames stored as the clip; its bare header quarantined)."""
    header = box(b"ftyp", b"isom\x00\x00\x02\x00") + box(b"moov", box(b"mvhd", bytes(20)) + box(b"mvex"))
    fragment = box(b"moof", box(b"mfhd", bytes(8))) + box(b"mdat", bytes(100))
    assert unfinished(header) is not None  # the index says fragments follow
    assert unfinished(header + fragment) is not None
    assert unfinished(header + fragment * 3 + box(b"mfra", bytes(16))) is None
    plain = (
        box(b"ftyp", b"isom\x00\x00\x02\x00")
        + box(b"moov", box(b"mvhd", bytes(20)))
        + box(b"mdat", bytes(50))
    )
    assert unfinished(plain) is None
