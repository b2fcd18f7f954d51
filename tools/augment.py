"""Modality-aware training augmentation on uint8 display images (numpy + OpenCV).

X-ray: small rotation, scale and shift, contrast, brightness and gamma: the variation between
X-ray units and exposures. No horizontal flips: a mirrored chest (heart on the right) is not a
plausible radiograph. Ultrasound: gain, speckle noise and depth crop; flips only where the
recipe allows them.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def augment(image: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    kind = params.get("kind", "xray")
    out = _geometry(image, params, rng)
    if params.get("hflip") and rng.random() < 0.5:
        out = out[:, ::-1]
    if kind == "ultrasound":
        out = _ultrasound(out, params, rng)
    return _intensity(out, params, rng)


def _geometry(image: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    angle = rng.uniform(-params.get("rotate_deg", 0.0), params.get("rotate_deg", 0.0))
    low, high = params.get("scale", [1.0, 1.0])
    scale = rng.uniform(low, high)
    shift = params.get("translate", 0.0)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    matrix[0, 2] += rng.uniform(-shift, shift) * width
    matrix[1, 2] += rng.uniform(-shift, shift) * height
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


def _ultrasound(image: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    out = image
    depth = params.get("depth_crop", 0.0)
    if depth and rng.random() < 0.5:
        # Shallower imaging depth: keep the top part of the sector, stretched back to size.
        keep = 1.0 - rng.uniform(0.0, depth)
        rows = max(8, int(out.shape[0] * keep))
        out = cv2.resize(out[:rows], (out.shape[1], out.shape[0]), interpolation=cv2.INTER_LINEAR)
    speckle = params.get("speckle", 0.0)
    if speckle:
        noise = rng.gamma(1 / speckle**2, speckle**2, size=out.shape[:2]).astype(np.float32)
        if out.ndim == 3:
            noise = noise[:, :, None]
        out = np.clip(out.astype(np.float32) * noise, 0, 255).astype(np.uint8)
    return out


def _intensity(image: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    values = image.astype(np.float32) / 255.0
    gamma_low, gamma_high = params.get("gamma", [1.0, 1.0])
    values = np.power(values, rng.uniform(gamma_low, gamma_high))
    c_low, c_high = params.get("contrast", [1.0, 1.0])
    gain_low, gain_high = params.get("gain", [1.0, 1.0])
    brightness = params.get("brightness", 0.0)
    mean = float(values.mean())
    values = (values - mean) * rng.uniform(c_low, c_high) + mean
    values = values * rng.uniform(gain_low, gain_high) + rng.uniform(-brightness, brightness)
    return np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
