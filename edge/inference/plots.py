"""ROC curves and reliability diagrams drawn with OpenCV (the device has no matplotlib).

Pure: arrays in, a BGR uint8 image out; `save_png` writes it. Used by `edge models eval` on the
device and by the release tool for the model cards, so both show the same pictures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SIZE = 560
MARGIN = 70
PALETTE = [(180, 90, 20), (40, 40, 200), (30, 150, 30), (150, 40, 150), (0, 140, 220)]
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Series:
    label: str
    x: np.ndarray
    y: np.ndarray


def _canvas(title: str, x_label: str, y_label: str) -> np.ndarray:
    image = np.full((SIZE, SIZE, 3), 255, np.uint8)
    left, right, top, bottom = MARGIN, SIZE - 20, 40, SIZE - MARGIN
    for tick in np.linspace(0, 1, 6):
        x = int(left + tick * (right - left))
        y = int(bottom - tick * (bottom - top))
        cv2.line(image, (x, top), (x, bottom), (230, 230, 230), 1)
        cv2.line(image, (left, y), (right, y), (230, 230, 230), 1)
        cv2.putText(image, f"{tick:.1f}", (x - 12, bottom + 20), FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
        cv2.putText(image, f"{tick:.1f}", (left - 32, y + 4), FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (right, bottom), (80, 80, 80), 1)
    cv2.putText(image, title, (left, 26), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, x_label, ((left + right) // 2 - 60, SIZE - 25), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    label = np.full((30, 300, 3), 255, np.uint8)
    cv2.putText(label, y_label, (5, 20), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    rotated = np.asarray(cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE), np.uint8)
    y0 = (top + bottom) // 2 - 150
    image[y0 : y0 + 300, 5:35] = np.minimum(image[y0 : y0 + 300, 5:35], rotated)
    return image


def _to_pixels(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    left, right, top, bottom = MARGIN, SIZE - 20, 40, SIZE - MARGIN
    px = left + np.clip(x, 0, 1) * (right - left)
    py = bottom - np.clip(y, 0, 1) * (bottom - top)
    return np.stack([px, py], axis=1).round().astype(np.int32)


def _legend(image: np.ndarray, labels: Sequence[str]) -> None:
    for index, label in enumerate(labels):
        y = SIZE - MARGIN - 18 - 20 * (len(labels) - 1 - index)
        colour = PALETTE[index % len(PALETTE)]
        cv2.line(image, (MARGIN + 200, y - 4), (MARGIN + 225, y - 4), colour, 2)
        cv2.putText(image, label, (MARGIN + 232, y), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)


def roc_plot(series: Sequence[Series], title: str = "ROC") -> np.ndarray:
    """One curve per series (x = false positive rate, y = true positive rate)."""
    image = _canvas(title, "false positive rate", "true positive rate")
    cv2.line(
        image,
        tuple(_to_pixels(np.array([0.0]), np.array([0.0]))[0]),
        tuple(_to_pixels(np.array([1.0]), np.array([1.0]))[0]),
        (190, 190, 190),
        1,
        cv2.LINE_AA,
    )
    for index, item in enumerate(series):
        points = _to_pixels(np.asarray(item.x, float), np.asarray(item.y, float))
        cv2.polylines(image, [points], False, PALETTE[index % len(PALETTE)], 2, cv2.LINE_AA)
    _legend(image, [s.label for s in series])
    return image


def reliability_plot(series: Sequence[Series], counts: Sequence[Sequence[int]], title: str) -> np.ndarray:
    """Observed frequency against mean predicted probability per bin; the diagonal is perfect."""
    image = _canvas(title, "mean predicted probability", "observed frequency")
    cv2.line(
        image,
        tuple(_to_pixels(np.array([0.0]), np.array([0.0]))[0]),
        tuple(_to_pixels(np.array([1.0]), np.array([1.0]))[0]),
        (190, 190, 190),
        1,
        cv2.LINE_AA,
    )
    for index, (item, sizes) in enumerate(zip(series, counts, strict=True)):
        colour = PALETTE[index % len(PALETTE)]
        points = _to_pixels(np.asarray(item.x, float), np.asarray(item.y, float))
        cv2.polylines(image, [points], False, colour, 2, cv2.LINE_AA)
        biggest = max(sizes) if sizes else 1
        for point, size in zip(points, sizes, strict=True):
            radius = int(3 + 7 * np.sqrt(size / biggest))  # marker area ~ images in the bin
            cv2.circle(image, (int(point[0]), int(point[1])), radius, colour, 1, cv2.LINE_AA)
    _legend(image, [s.label for s in series])
    return image


def save_png(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise OSError(f"could not encode {path.name}")
    path.write_bytes(encoded.tobytes())
