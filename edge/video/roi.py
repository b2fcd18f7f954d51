"""The imaging sector of an ultrasound screen, without the vendor's UI, text and calipers.

Pure numpy/OpenCV. On a live ultrasound screen the image inside the sector changes from frame to
frame (speckle, motion) while the UI around it (logos, patient name and date, depth scale,
settings) stays still. The sector is therefore the largest connected region whose pixels vary
over a short window of frames, closed over small gaps and bounded by its box. A per-device
profile can fix the box instead. When no such region exists (a frozen or black screen, a still
image), nothing is found and the caller must fail closed: without a sector, no frame is stored
or sent, because the full screen may carry burned-in patient text.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, width, height

MIN_AREA_FRACTION = 0.05
VARIATION_THRESHOLD = 3.0  # grey levels of temporal standard deviation


def to_grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


WORK_SIDE = 320  # detection runs on frames this size: the box is scaled back up


def detect_sector(frames: Sequence[np.ndarray], min_area_fraction: float = MIN_AREA_FRACTION) -> Box | None:
    """The box of the region that changes over `frames` (at least 2), or None."""
    if len(frames) < 2:
        return None
    full_h, full_w = frames[0].shape[:2]
    scale = min(1.0, WORK_SIDE / max(full_h, full_w))
    size = (max(1, round(full_w * scale)), max(1, round(full_h * scale)))
    small = [
        cv2.resize(to_grey(f), size, interpolation=cv2.INTER_AREA) if scale < 1 else to_grey(f)
        for f in frames
    ]
    box = _moving_box(np.stack([f.astype(np.float32) for f in small]), min_area_fraction)
    if box is None or scale == 1.0:
        return box
    x, y, w, h = box
    x0, y0 = int(x / scale), int(y / scale)
    x1, y1 = min(full_w, int(np.ceil((x + w) / scale))), min(full_h, int(np.ceil((y + h) / scale)))
    return x0, y0, x1 - x0, y1 - y0


def _moving_box(stack: np.ndarray, min_area_fraction: float) -> Box | None:
    variation = stack.std(axis=0)
    moving = (variation > VARIATION_THRESHOLD).astype(np.uint8)
    height, width = moving.shape
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, width // 60) | 1, max(3, height // 60) | 1))
    moving = cv2.morphologyEx(moving, cv2.MORPH_CLOSE, kernel)
    moving = cv2.morphologyEx(moving, cv2.MORPH_OPEN, kernel)
    count, _labels, stats, _ = cv2.connectedComponentsWithStats(moving, connectivity=8)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = (int(v) for v in stats[largest])
    if area < min_area_fraction * height * width:
        return None
    return x, y, w, h


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    x, y, w, h = box
    return np.ascontiguousarray(image[y : y + h, x : x + w])


def unstretch(image: np.ndarray, horizontal_stretch: float) -> np.ndarray:
    """`image` in the shape the scanner drew it, the height kept: a capture stretched sideways
    (`horizontal_stretch` > 1) is narrowed back, a squeezed one widened."""
    if abs(horizontal_stretch - 1.0) < 1e-3:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width / horizontal_stretch)), height)
    interpolation = cv2.INTER_AREA if horizontal_stretch > 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def fits(box: Box, shape: tuple[int, ...]) -> bool:
    x, y, w, h = box
    return x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= shape[1] and y + h <= shape[0]


def detect_still_sector(image: np.ndarray, min_area_fraction: float = MIN_AREA_FRACTION) -> Box | None:
    """The sector of a single frame (a still, a stored key image), which has no motion to go by:
    the largest region that is not black, found by the same closing and opening that clean the
    moving region, so thin strokes (text, calipers, scale ticks) fall away. Given the frames
    (black, 2 x picture), the temporal deviation `detect_sector` thresholds is the picture."""
    grey = to_grey(image).astype(np.float32)
    return detect_sector([np.zeros_like(grey), 2 * grey], min_area_fraction)
