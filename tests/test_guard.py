"""The guarded decoder: hostile or broken input can neither crash nor hang the agent."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.imaging.decoded import DecodedImage
from edge.ingest.guard import GuardedDecoder
from edge.store import Store
from tests.conftest import gradient, png_bytes


@pytest.fixture(scope="module")
def decoder() -> GuardedDecoder:
    with GuardedDecoder(timeout_s=20, memory_mb=1024) as guarded:
        yield guarded  # type: ignore[misc]


def test_decodes_like_the_plain_decoder(decoder: GuardedDecoder) -> None:
    decoded = decoder.decode(png_bytes(gradient()), "a.png")
    assert np.array_equal(decoded.pixels, gradient())


def test_refusals_cross_the_process_boundary_with_their_code(decoder: GuardedDecoder) -> None:
    with pytest.raises(EdgeError) as caught:
        decoder.decode(b"not an image", "x.bin")
    assert caught.value.code is Code.INPUT_NOT_IMAGE


@pytest.mark.security
def test_a_decode_past_its_deadline_is_killed_and_the_next_one_works() -> None:
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (3000, 3000), dtype=np.uint8))
    with GuardedDecoder(timeout_s=0.001) as hurried:
        with pytest.raises(EdgeError) as caught:
            hurried.decode(big, "big.png")
        assert caught.value.code is Code.DECODE_TIMEOUT
        hurried.timeout_s = 20
        assert hurried.decode(png_bytes(gradient()), "small.png").pixels.shape == gradient().shape


def test_a_dead_decoder_is_replaced(decoder: GuardedDecoder) -> None:
    worker = decoder._all[0]
    worker.process.kill()  # what a segfault in a C decoder looks like from here
    worker.process.wait()
    with pytest.raises(EdgeError) as caught:
        decoder.decode(png_bytes(gradient()), "a.png")
    assert caught.value.code is Code.DECODE_CRASHED
    assert decoder.decode(png_bytes(gradient()), "a.png").pixels.shape == gradient().shape


@pytest.mark.security
def test_the_memory_bound_holds() -> None:
    # A PNG that claims a big image (within the pixel cap) must not take the host's memory.
    huge = png_bytes(np.zeros((9000, 9000), np.uint8))
    with GuardedDecoder(timeout_s=60, memory_mb=400) as tight:
        with pytest.raises(EdgeError) as caught:
            tight.decode(huge, "huge.png")
        assert caught.value.code in (Code.DECODE_CRASHED, Code.IMAGE_DECODE_FAILED)


@pytest.mark.security
def test_a_worker_left_large_after_a_job_is_replaced() -> None:
    """Issue 17: after one large input the worker kept ~900 MB, which counted against its bound,
    so studies it had accepted before were refused. A worker holding more than `recycle_mb`
    after a job is now replaced (a bound below any Python's size stands for the large one)."""
    with GuardedDecoder(timeout_s=20, recycle_mb=1) as recycling:
        first = recycling.pids()
        assert np.array_equal(recycling.decode(png_bytes(gradient()), "a.png").pixels, gradient())
        assert recycling.recycled == 1
        assert recycling.pids() != first  # the next input meets a fresh process
        assert np.array_equal(recycling.decode(png_bytes(gradient()), "b.png").pixels, gradient())
        assert recycling.recycled == 2
    with GuardedDecoder(timeout_s=20, recycle_mb=4096) as keeping:
        first = keeping.pids()
        keeping.decode(png_bytes(gradient()), "a.png")
        assert (keeping.pids(), keeping.recycled) == (first, 0)


@pytest.mark.security
def test_the_worker_decodes_stored_images_with_the_guarded_decoder(
    settings: Settings, store: Store, sample_png: Path
) -> None:
    """Issue 17: the agent's worker read a queued image back and decoded it again in its own
    process, outside the guard's time and memory bounds. It now uses `Pipeline.decoder`, which
    the agent sets to its guarded decoder."""
    from edge.imaging.decode import decode_bytes
    from edge.pipeline import Pipeline

    calls: list[str] = []

    def guarded(data: bytes, name: str) -> DecodedImage:
        calls.append(name)
        return decode_bytes(data, name)

    pipeline = Pipeline(settings, store, actor="agent")
    try:
        pipeline.decoder = guarded
        pipeline.ingest(sample_png.read_bytes(), "a.png", "watch", decoder=guarded)
        assert pipeline.run_once()
    finally:
        pipeline.close()
    assert len(calls) == 2  # at ingest, and again for the job: both through the guard


def _cine(frames: int) -> bytes:
    from tools import dicomgen

    stack = np.stack([np.roll(gradient(64, 48), 5 * i, axis=1) for i in range(frames)])
    ds = dicomgen.base_dataset(dicomgen.US_STORAGE, modality="US", body_part=None, patient_age=None)
    ds.set_pixel_data(stack, "MONOCHROME2", 8, generate_instance_uid=False)
    ds.FrameTime = 100.0
    return dicomgen.to_bytes(ds)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.security
def test_cine_frames_are_decoded_in_the_worker_like_in_process() -> None:
    """Issue 17: the video path decoded a cine's frames in the agent's own process; the guard
    now answers them too, the same frames, under the same bounds."""
    from edge.imaging.dicom import display_frames

    data = _cine(4)
    with GuardedDecoder(timeout_s=20) as guarded:
        answered = list(guarded.frames(data, "cine.dcm"))
        with pytest.raises(EdgeError) as caught:
            list(guarded.frames(b"not dicom", "x.dcm"))
        assert caught.value.code in (Code.DICOM_INVALID, Code.IMAGE_DECODE_FAILED)
    expected = list(display_frames(data))
    assert [t for t, _ in answered] == [t for t, _ in expected]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(answered, expected, strict=True))


@pytest.mark.security
def test_a_cines_frames_stream_from_a_worker_of_their_own() -> None:
    """A 30 s 800x600 cine (900 frames, 1.3 GB decoded) was DECODE_CRASHED under the default
    2 GB bound: the worker answered with every frame at once. Frames now come one at a time from
    a worker that lives for the cine, beside the pool's, which stays free for ingest."""
    with GuardedDecoder(timeout_s=20) as guarded:
        pool = set(guarded.pids())
        frames = guarded.frames(_cine(6), "cine.dcm")
        first = next(frames)
        [streaming] = set(guarded.pids()) - pool
        assert _alive(streaming)
        assert guarded.decode(png_bytes(gradient()), "a.png").pixels.shape == gradient().shape  # pool is free
        assert first[0] == 0.0
        assert len(list(frames)) == 5
        assert not _alive(streaming)
        assert set(guarded.pids()) == pool

        early = guarded.frames(_cine(6), "cine.dcm")
        next(early)
        [streaming] = set(guarded.pids()) - pool
        early.close()  # the clip's limit, or the reader stopped: the worker goes at once
        assert not _alive(streaming)
        assert set(guarded.pids()) == pool


@pytest.mark.security
def test_a_worker_that_dies_mid_cine_ends_its_frames_with_a_code() -> None:
    import os
    import signal

    with GuardedDecoder(timeout_s=20) as guarded:
        pool = set(guarded.pids())
        frames = guarded.frames(_cine(200), "cine.dcm")  # more than the pipe holds
        next(frames)
        [streaming] = set(guarded.pids()) - pool
        os.kill(streaming, signal.SIGKILL)  # a C decoder's segfault, seen from here
        with pytest.raises(EdgeError) as caught:
            list(frames)
        assert caught.value.code is Code.DECODE_CRASHED
        assert "crashed at frame" in caught.value.message
        assert set(guarded.pids()) == pool


@pytest.mark.security
def test_a_cine_frame_past_its_deadline_ends_the_frames_with_a_code() -> None:
    with GuardedDecoder(timeout_s=0.001) as hurried:
        pool = set(hurried.pids())
        with pytest.raises(EdgeError) as caught:
            list(hurried.frames(_cine(4), "cine.dcm"))  # the worker's start alone takes longer
        assert caught.value.code is Code.DECODE_TIMEOUT
        assert set(hurried.pids()) == pool


@pytest.mark.security
def test_a_cine_larger_decoded_than_the_bound_streams_through_it() -> None:
    """What the fix is for: 200 frames of 600x800 RGB, a 7 s cine, are 288 MB decoded from a
    few MB of JPEG. Answered all at once they took the worker past an 800 MB bound (its idle
    address space is about 530 MB; the parent held all of them too); one at a time, each side
    holds about one frame."""
    from edge.imaging.dicom import display_frames
    from tools import dicomgen

    ramp = np.broadcast_to(np.linspace(0, 255, 800, dtype=np.uint8)[None, :, None], (600, 800, 3))
    frames = [np.roll(ramp, 4 * i, axis=1) for i in range(200)]
    data = dicomgen.to_bytes(dicomgen.jpeg_cine(frames))
    assert len(data) < 20_000_000
    with GuardedDecoder(timeout_s=30, memory_mb=800) as tight:
        count, last = 0, None
        for _, image in tight.frames(data, "cine.dcm"):
            count, last = count + 1, image
    assert count == 200
    [(_, expected)] = deque(display_frames(data), maxlen=1)
    assert last is not None
    assert np.array_equal(last, expected)


@pytest.mark.security
def test_a_cines_frames_have_a_decode_budget_in_all() -> None:
    """Each frame is bounded by the reader's deadline; a cine of many slow frames (900 frames
    just under 30 s each would hold the job for hours) by its budget, spent decoding only."""
    with GuardedDecoder(timeout_s=20) as guarded:
        assert guarded.cine_budget_s == 200
        guarded.cine_budget_s = 0.0
        with pytest.raises(EdgeError) as caught:
            list(guarded.frames(_cine(4), "cine.dcm"))
    assert caught.value.code is Code.DECODE_TIMEOUT
    assert "its frames took longer than 0 s to decode (at frame 1)" in caught.value.message


def test_closing_the_decoder_mid_cine_interrupts_it_without_blaming_the_file() -> None:
    """The agent stopping closes its decoder, which kills a cine's worker under a reader in
    another thread: JOB_INTERRUPTED (the job goes back to the queue), not DECODE_CRASHED (the
    file refused for good), whichever way the reader finds its pipe gone."""
    for _ in range(3):
        guarded = GuardedDecoder(timeout_s=20)
        reader = _Reader(guarded.frames(_cine(400), "cine.dcm"))
        reader.start()
        assert reader.started.wait(20)
        guarded.close()
        reader.join(20)
        assert isinstance(reader.error, EdgeError), repr(reader.error)
        assert reader.error.code is Code.JOB_INTERRUPTED


class _Reader(threading.Thread):
    """Reads frames as the video path does, keeping what ended them."""

    def __init__(self, frames: Iterator[tuple[float, np.ndarray]]) -> None:
        super().__init__()
        self.frames, self.started = frames, threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in self.frames:
                self.started.set()
                time.sleep(0.002)
        except BaseException as error:  # noqa: BLE001 - what the reader gets is the test
            self.error = error
