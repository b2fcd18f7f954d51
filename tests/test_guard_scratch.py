"""A decoder's scratch folder (its temporary files are the patient's pictures) goes with it, and
a sweep at start removes only the folders nobody holds; the pool survives a worker that cannot
start again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.errors import Code, EdgeError
from edge.ingest import guard, scratch
from edge.ingest.guard import GuardedDecoder
from tests.conftest import gradient, png_bytes


def _old(path: Path) -> Path:
    os.utime(path, (1, 1), follow_symlinks=False)
    return path


@pytest.mark.security
def test_the_sweep_removes_what_nobody_holds_and_nothing_else(private_tmp: Path) -> None:
    """A dangling symlink, a loop or a folder gone meanwhile under the prefix stopped the agent
    from starting (stat raised); a symlink must never be followed, and a folder a living
    process holds, or one too young to be held yet, stays."""
    dead = private_tmp / f"{scratch.PREFIX}dead"
    (dead / "edge-video-1").mkdir(parents=True)
    (dead / "edge-video-1" / "stream.h264").write_bytes(b"\x00\x00\x00\x01pictures")
    (dead / scratch.OWNER).touch()
    _old(dead)
    elsewhere = private_tmp / "elsewhere"
    elsewhere.mkdir()
    (private_tmp / f"{scratch.PREFIX}link").symlink_to(elsewhere)
    (private_tmp / f"{scratch.PREFIX}dangling").symlink_to(private_tmp / "nothing")
    (private_tmp / f"{scratch.PREFIX}loop").symlink_to(private_tmp / f"{scratch.PREFIX}loop")
    (private_tmp / f"{scratch.PREFIX}file").write_text("not a folder")
    unowned = private_tmp / f"{scratch.PREFIX}without-owner"
    unowned.mkdir()
    _old(unowned)
    young = private_tmp / f"{scratch.PREFIX}young"
    young.mkdir()
    (young / scratch.OWNER).touch()
    held = scratch.Scratch()
    _old(held.path)
    try:
        assert scratch.sweep() == 1
        assert not dead.exists()
        assert all(path.is_dir() for path in (elsewhere, held.path, young, unowned))
        assert (private_tmp / f"{scratch.PREFIX}file").is_file()
        with GuardedDecoder(timeout_s=20) as guarded:  # starts despite them all
            assert guarded.decode(png_bytes(gradient()), "a.png").pixels.shape == gradient().shape
    finally:
        held.remove()
    assert not held.path.exists()


@pytest.mark.security
def test_a_worker_that_cannot_start_again_leaves_a_pool_that_recovers(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replacement that failed (/tmp full, no memory) left the pool empty, and the next
    decode waited for ever. It says DECODE_TIMEOUT for the file, DECODER_UNAVAILABLE while no
    worker can start (the job is tried again later), and works once one can."""
    big = png_bytes(gradient(3000, 3000))
    with GuardedDecoder(timeout_s=0.001) as hurried:
        real = guard._Worker

        def cannot_start(*args: object, **kwargs: object) -> guard._Worker:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(guard, "_Worker", cannot_start)
        with pytest.raises(EdgeError) as caught:
            hurried.decode(big, "big.png")
        assert caught.value.code is Code.DECODE_TIMEOUT  # not the OSError of its replacement
        hurried.timeout_s = 20
        with pytest.raises(EdgeError) as caught:
            hurried.decode(png_bytes(gradient()), "small.png")
        assert caught.value.code is Code.DECODER_UNAVAILABLE
        monkeypatch.setattr(guard, "_Worker", real)
        assert hurried.decode(png_bytes(gradient()), "small.png").pixels.shape == gradient().shape
