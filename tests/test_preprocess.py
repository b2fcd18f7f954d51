"""Preprocessing is pure: arrays in, arrays out, no hidden state."""

from __future__ import annotations

import numpy as np
import pytest

from edge.imaging.preprocess import PreprocessSpec, normalise, preprocess, preprocess_batch, resize, to_colour
from tests.conftest import gradient

SPEC = PreprocessSpec(
    height=32, width=32, colour="gray", resize="stretch", scale=1 / 255, mean=(0.5,), std=(0.25,)
)


def test_output_shape_dtype_and_values() -> None:
    out = preprocess(gradient(64, 48), SPEC)
    assert out.shape == (1, 32, 32)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    # (x/255 - 0.5) / 0.25 spans [-2, 2]
    assert -2.0001 <= out.min() < -1.5
    assert 1.5 < out.max() <= 2.0001


def test_normalise_is_exact_per_channel() -> None:
    image = np.array([[[0, 255, 51]]], np.uint8)  # 1x1 RGB
    spec = PreprocessSpec(1, 1, "rgb", scale=1 / 255, mean=(0.0, 0.5, 0.2), std=(1.0, 0.5, 0.1))
    out = normalise(image, spec)
    assert out.shape == (3, 1, 1)
    np.testing.assert_allclose(out.ravel(), [0.0, 1.0, 0.0], atol=1e-6)


def test_pure_input_untouched_and_repeatable() -> None:
    image = gradient()
    before = image.copy()
    first = preprocess(image, SPEC)
    second = preprocess(image, SPEC)
    assert np.array_equal(image, before)
    assert np.array_equal(first, second)


def test_colour_conversion_both_ways() -> None:
    grey = gradient()
    rgb = to_colour(grey, "rgb")
    assert rgb.shape == (*grey.shape, 3)
    assert np.array_equal(rgb[:, :, 1], grey)
    assert np.array_equal(to_colour(rgb, "gray"), grey)
    assert to_colour(grey, "gray") is grey


def test_resize_policies_keep_or_ignore_aspect() -> None:
    tall = np.full((100, 50), 200, np.uint8)
    stretched = resize(tall, 40, 40, "stretch")
    assert stretched.shape == (40, 40)
    assert (stretched == 200).all()
    boxed = resize(tall, 40, 40, "letterbox")
    assert boxed.shape == (40, 40)
    assert (boxed[:, :10] == 0).all()
    assert (boxed[:, 30:] == 0).all()
    assert (boxed[:, 10:30] == 200).all()
    cropped = resize(tall, 40, 40, "center_crop")
    assert cropped.shape == (40, 40)
    assert (cropped == 200).all()


def test_center_crop_keeps_the_middle() -> None:
    image = np.zeros((10, 30), np.uint8)
    image[:, 10:20] = 255
    assert (resize(image, 10, 10, "center_crop") == 255).all()


def test_same_size_is_not_resampled() -> None:
    image = gradient(32, 32)
    assert resize(image, 32, 32, "stretch") is image


def test_batch_stacks() -> None:
    batch = preprocess_batch([gradient(), gradient(20, 90)], SPEC)
    assert batch.shape == (2, 1, 32, 32)


def test_unknown_policy_is_an_error() -> None:
    with pytest.raises(ValueError, match="resize policy"):
        resize(gradient(), 8, 8, "zoom")  # type: ignore[arg-type]
