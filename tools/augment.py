"""Modality-aware training augmentation on uint8 display images (numpy + OpenCV).

Each transform imitates a way one clinic's pictures differ from another's, so a model trained
through them ranks and thresholds the same at a new site (Ovadia et al. 2019: under shift the
calibration of an un-augmented model degrades first):

- geometry: small rotation, zoom and shift (positioning, collimation, the depth setting), and
  `aspect`: non-square pixels (a capture card scaling a 4:3 screen to 16:9);
- `resolution`: the picture made at a lower resolution and scaled back up (a smaller detector,
  a phone photo of a film, a downsampled export), and `blur` (focal spot, motion, a soft kernel);
- `local_contrast`: CLAHE, as many X-ray consoles and ultrasound presets apply it;
- contrast, brightness, gamma and, for ultrasound, overall gain: exposure and processing;
- `noise`: quantum and electronic noise; ultrasound `speckle` is multiplicative instead;
- `jpeg`: re-compression by a PACS export, a viewer or a messaging app;
- ultrasound `depth_crop`: a shallower imaging depth.

No horizontal flips for X-ray: a mirrored chest (heart on the right) is not a plausible
radiograph. The same primitives at fixed strengths are the shifts of the shift-aware validation
(`tools/shift_eval.py`), so what training covers and what validation checks are one list.
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
    out = _acquisition(out, params, rng)
    out = _intensity(out, params, rng)
    return _storage(out, params, rng)


def _applies(params: dict[str, Any], key: str, rng: np.random.Generator) -> bool:
    """Optional transforms fire with probability `<key>_p` (default 0.3) when configured."""
    return key in params and rng.random() < params.get(f"{key}_p", 0.3)


def _geometry(image: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(-params.get("rotate_deg", 0.0), params.get("rotate_deg", 0.0))
    low, high = params.get("scale", [1.0, 1.0])
    shift = params.get("translate", 0.0)
    out = affine(
        image, angle, rng.uniform(low, high), (rng.uniform(-shift, shift), rng.uniform(-shift, shift))
    )
    if _applies(params, "aspect", rng):
        out = stretch(out, rng.uniform(*params["aspect"]))
    return out


def _ultrasound(image: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    out = image
    depth = params.get("depth_crop", 0.0)
    if depth and rng.random() < 0.5:
        out = depth_crop(out, rng.uniform(0.0, depth))
    if params.get("speckle"):
        out = speckle(out, params["speckle"], rng)
    return out


def _acquisition(image: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    out = image
    if _applies(params, "resolution", rng):
        out = lower_resolution(out, rng.uniform(*params["resolution"]))
    if _applies(params, "blur", rng):
        out = blur(out, rng.uniform(*params["blur"]))
    if _applies(params, "local_contrast", rng):
        out = local_contrast(out, rng.uniform(*params["local_contrast"]))
    if _applies(params, "noise", rng):
        out = noise(out, rng.uniform(*params["noise"]), rng)
    return out


def _intensity(image: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    return intensity(
        image,
        gamma=rng.uniform(*params.get("gamma", [1.0, 1.0])),
        contrast=rng.uniform(*params.get("contrast", [1.0, 1.0])),
        gain=rng.uniform(*params.get("gain", [1.0, 1.0])),
        brightness=rng.uniform(-params.get("brightness", 0.0), params.get("brightness", 0.0)),
    )


def _storage(image: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    if _applies(params, "jpeg", rng):
        low, high = params["jpeg"]
        return jpeg(image, int(rng.integers(low, high + 1)))
    return image


# ---------------------------------------------------------------- the primitives (deterministic)


def affine(image: np.ndarray, angle_deg: float, zoom: float, shift: tuple[float, float]) -> np.ndarray:
    """Rotate and zoom about the centre, shift by fractions of the size; black where uncovered."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle_deg, zoom)
    matrix[0, 2] += shift[0] * width
    matrix[1, 2] += shift[1] * height
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


def stretch(image: np.ndarray, factor: float) -> np.ndarray:
    """Widened by `factor` (narrowed below 1) about the centre, the height kept."""
    height, width = image.shape[:2]
    matrix = np.array([[factor, 0.0, (1.0 - factor) * width / 2], [0.0, 1.0, 0.0]])
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


def depth_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    """Shallower imaging depth: the top (1 - fraction) of the picture, stretched back to size."""
    rows = max(8, int(image.shape[0] * (1.0 - fraction)))
    return cv2.resize(image[:rows], (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)


def speckle(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative gamma-distributed noise of relative spread `strength` (ultrasound)."""
    field = rng.gamma(1 / strength**2, strength**2, size=image.shape[:2]).astype(np.float32)
    if image.ndim == 3:
        field = field[:, :, None]
    return np.clip(image.astype(np.float32) * field, 0, 255).astype(np.uint8)


def lower_resolution(image: np.ndarray, factor: float) -> np.ndarray:
    """Made at `factor` (< 1) of this resolution, then shown at this size again."""
    height, width = image.shape[:2]
    small = (max(4, round(width * factor)), max(4, round(height * factor)))
    down = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
    return cv2.resize(down, (width, height), interpolation=cv2.INTER_LINEAR)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigmaX=max(sigma, 1e-3))


def local_contrast(image: np.ndarray, clip_limit: float) -> np.ndarray:
    """CLAHE on the luminance, 8x8 tiles."""
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(8, 8))
    if image.ndim == 2:
        return clahe.apply(np.ascontiguousarray(image))
    lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB)
    lab[:, :, 0] = clahe.apply(lab[:, :, 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of `sigma` grey levels."""
    values = image.astype(np.float32) + rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
    return np.clip(values + 0.5, 0, 255).astype(np.uint8)


def intensity(
    image: np.ndarray,
    *,
    gamma: float = 1.0,
    contrast: float = 1.0,
    gain: float = 1.0,
    brightness: float = 0.0,
) -> np.ndarray:
    """Gamma, then contrast about the mean, then gain and an offset (fractions of full scale)."""
    values = np.power(image.astype(np.float32) / 255.0, gamma)
    mean = float(values.mean())
    values = ((values - mean) * contrast + mean) * gain + brightness
    return np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Encoded and decoded as a JPEG of this quality."""
    bgr = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    flags = cv2.IMREAD_GRAYSCALE if image.ndim == 2 else cv2.IMREAD_COLOR
    out = cv2.imdecode(data, flags)
    return out if image.ndim == 2 else cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
