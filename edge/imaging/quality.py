"""Image quality measures for the applicability gate. Pure numpy/OpenCV, display images in.

Measured on a standard scale (longest side at most 256 px) so that the same threshold means the
same thing for a 224-px export and a 3000-px radiograph. Thresholds live in each model's
manifest (`[quality]`), set from the distribution of real training images (tools/quality_stats.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from edge.imaging.preprocess import to_colour

STANDARD_SIDE = 256
BLACK_LEVEL = 5  # grey levels at or below: clipped black
WHITE_LEVEL = 250  # at or above: clipped white
UNIFORM_BAND = 4  # within this many grey levels of the median: "the same"


@dataclass(frozen=True)
class QualityMetrics:
    min_side: int
    """Shorter side of the original image, in pixels."""
    black_fraction: float
    white_fraction: float
    dynamic_range: float
    """1st to 99th percentile, in grey levels (0-255)."""
    sharpness: float
    """Variance of the Laplacian at the standard scale (low: blurred)."""
    uniform_fraction: float
    """Share of pixels within a few grey levels of the median (high: blank)."""

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


def standard_scale(image: np.ndarray) -> np.ndarray:
    grey = to_colour(image, "gray")
    factor = STANDARD_SIDE / max(grey.shape[:2])
    if factor >= 1.0:
        return grey
    size = (max(1, round(grey.shape[1] * factor)), max(1, round(grey.shape[0] * factor)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def measure(image: np.ndarray) -> QualityMetrics:
    small = standard_scale(image)
    low, high = np.percentile(small, [1, 99])
    median = float(np.median(small))
    return QualityMetrics(
        min_side=int(min(image.shape[:2])),
        black_fraction=float(np.mean(small <= BLACK_LEVEL)),
        white_fraction=float(np.mean(small >= WHITE_LEVEL)),
        dynamic_range=float(high - low),
        sharpness=float(cv2.Laplacian(small, cv2.CV_64F).var()),
        uniform_fraction=float(np.mean(np.abs(small.astype(np.int16) - median) <= UNIFORM_BAND)),
    )
