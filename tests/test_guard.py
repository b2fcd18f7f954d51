"""The guarded decoder: hostile or broken input can neither crash nor hang the agent."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import Code, EdgeError
from edge.ingest.guard import GuardedDecoder
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


def test_the_memory_bound_holds() -> None:
    # A PNG that claims a big image (within the pixel cap) must not take the host's memory.
    huge = png_bytes(np.zeros((9000, 9000), np.uint8))
    with GuardedDecoder(timeout_s=60, memory_mb=400) as tight:
        with pytest.raises(EdgeError) as caught:
            tight.decode(huge, "huge.png")
        assert caught.value.code in (Code.DECODE_CRASHED, Code.IMAGE_DECODE_FAILED)
