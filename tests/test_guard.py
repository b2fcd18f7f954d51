"""The guarded decoder: hostile or broken input can neither crash nor hang the agent."""

from __future__ import annotations

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


@pytest.mark.security
def test_cine_frames_are_decoded_in_the_worker_like_in_process() -> None:
    """Issue 17: the video path decoded a cine's frames in the agent's own process; the guard
    now answers them too, the same frames, under the same bounds."""
    from edge.imaging.dicom import display_frames
    from tools import dicomgen

    frames = np.stack([np.roll(gradient(64, 48), 5 * i, axis=1) for i in range(4)])
    ds = dicomgen.base_dataset(dicomgen.US_STORAGE, modality="US", body_part=None, patient_age=None)
    ds.set_pixel_data(frames, "MONOCHROME2", 8, generate_instance_uid=False)
    ds.FrameTime = 100.0
    data = dicomgen.to_bytes(ds)
    with GuardedDecoder(timeout_s=20) as guarded:
        answered = guarded.frames(data, "cine.dcm")
        with pytest.raises(EdgeError) as caught:
            guarded.frames(b"not dicom", "x.dcm")
        assert caught.value.code in (Code.DICOM_INVALID, Code.IMAGE_DECODE_FAILED)
    expected = list(display_frames(data))
    assert [t for t, _ in answered] == [t for t, _ in expected]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(answered, expected, strict=True))
