"""Model input preparation, driven by the manifest's `[input]` table. Pure numpy in and out.

Training (tools/train.py) calls these same functions, so what a model saw while learning is
exactly what it sees in the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

Colour = Literal["gray", "rgb"]
ResizePolicy = Literal["stretch", "letterbox", "center_crop"]


@dataclass(frozen=True)
class PreprocessSpec:
    height: int
    width: int
    colour: Colour = "gray"
    resize: ResizePolicy = "stretch"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @property
    def channels(self) -> int:
        return 1 if self.colour == "gray" else 3


def to_colour(image: np.ndarray, colour: Colour) -> np.ndarray:
    """uint8 HxW or HxWx3 (RGB) -> HxW for `gray`, HxWx3 for `rgb`."""
    if colour == "gray":
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)


def resize(image: np.ndarray, height: int, width: int, policy: ResizePolicy) -> np.ndarray:
    """Resize to exactly height x width.

    `stretch` ignores aspect ratio (what the chest X-ray training set did), `letterbox` keeps
    it and pads with black, `center_crop` keeps it and cuts the longer side.
    """
    src_h, src_w = image.shape[:2]
    if policy == "stretch":
        return _resize_to(image, height, width)
    if policy == "letterbox":
        factor = min(height / src_h, width / src_w)
        new_h, new_w = max(1, round(src_h * factor)), max(1, round(src_w * factor))
        inner = _resize_to(image, new_h, new_w)
        out = np.zeros((height, width, *image.shape[2:]), dtype=image.dtype)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        out[top : top + new_h, left : left + new_w] = inner
        return out
    if policy == "center_crop":
        factor = max(height / src_h, width / src_w)
        new_h, new_w = max(height, round(src_h * factor)), max(width, round(src_w * factor))
        inner = _resize_to(image, new_h, new_w)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return np.ascontiguousarray(inner[top : top + height, left : left + width])
    raise ValueError(f"unknown resize policy {policy!r}")


def _resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[0] == height and image.shape[1] == width:
        return image
    shrinking = height < image.shape[0] or width < image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def normalise(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HxW[xC] -> float32 CxHxW, scaled then standardised per channel."""
    chw = image[np.newaxis] if image.ndim == 2 else np.transpose(image, (2, 0, 1))
    mean = np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((chw.astype(np.float32) * np.float32(spec.scale) - mean) / std)


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A display image (uint8) -> one model input tensor (float32 CxHxW)."""
    coloured = to_colour(image, spec.colour)
    return normalise(resize(coloured, spec.height, spec.width, spec.resize), spec)


def preprocess_batch(images: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    return np.stack([preprocess(image, spec) for image in images])
