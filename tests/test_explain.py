"""Heatmaps from the CAM output: pure functions, and the files the pipeline stores."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.imaging.explain import evidence_map, heatmap_png, overlay, to_image_frame
from edge.imaging.preprocess import PreprocessSpec
from tests.conftest import gradient


def test_evidence_is_the_margin_for_the_target() -> None:
    cam = np.zeros((2, 4, 4), np.float32)
    cam[1, 0, 0] = 3.0  # evidence for class 1 at the top-left
    cam[0, 3, 3] = 2.0  # evidence against it at the bottom-right
    heat = evidence_map(cam, 1)
    assert heat[0, 0] == 1.0
    assert heat[3, 3] == 0.0
    assert heat.min() >= 0
    assert heat.max() <= 1
    assert evidence_map(cam, 0)[3, 3] == 1.0
    assert not evidence_map(np.zeros((2, 4, 4)), 1).any()
    with pytest.raises(ValueError, match="class"):
        evidence_map(cam, 5)


@pytest.mark.parametrize("policy", ["stretch", "letterbox", "center_crop"])
def test_heat_lands_where_the_model_looked(policy: str) -> None:
    spec = PreprocessSpec(32, 32, resize=policy)  # type: ignore[arg-type]
    heat = np.zeros((32, 32), np.float32)
    heat[14:18, 14:18] = 1.0  # the centre of the model input
    frame = to_image_frame(heat, 60, 120, spec)
    assert frame.shape == (60, 120)
    rows, cols = np.mgrid[0:60, 0:120]
    y, x = (rows * frame).sum() / frame.sum(), (cols * frame).sum() / frame.sum()  # heat centroid
    assert abs(y - 30) <= 2
    assert abs(x - 60) <= 3


def test_overlay_caps_size_and_leaves_cold_pixels_alone() -> None:
    image = np.full((1000, 800), 100, np.uint8)
    heat = np.zeros((1000, 800), np.float32)
    heat[:100, :100] = 1.0
    out = overlay(image, heat, max_side=500)
    assert out.shape == (500, 400, 3)
    assert (out[-50:, -50:] == 100).all()  # no heat, no colour
    assert not (out[:20, :20] == 100).all()


def test_heatmap_png_decodes() -> None:
    cam = np.random.default_rng(0).standard_normal((2, 7, 7)).astype(np.float32)
    data = heatmap_png(gradient(64, 48), cam, 1, PreprocessSpec(32, 32))
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (64, 48, 3)
