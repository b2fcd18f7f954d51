"""The class-activation evidence of one result as a few hundred bytes: what the device sends
instead of a blended heatmap PNG (issue 21), and what the hub renders its overlay from.

The shipped models' CAM is a 7x7 to 14x14 grid, so the evidence itself is at most ~200 values;
a blended PNG of it over the image cost ~78 KB on the wire and carried the patient's pixels.
The grid is the positive margin `cam[target] - mean(cam[others])` (explain.evidence_margin,
before max-normalisation, so its strength in logit units is kept), quantised to uint8 with its
scale, plus the geometry that places it on the image: the model input size and resize policy
(stretch, letterbox, centre crop) and the image's size, which `explain.to_image_frame` needs.

Layout (little-endian, 26-byte header then the grid, row-major):
    magic "EVG1" | resize u8 | reserved u8 | grid h, w u16 | model h, w u16 | image h, w u16
    | scale f32 | offset f32 | h*w uint8 values (value = offset + q * scale)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from edge.imaging.explain import evidence_margin, to_image_frame
from edge.imaging.preprocess import PreprocessSpec

MEDIA_TYPE = "application/vnd.edge.evidence-grid"
MAGIC = b"EVG1"
_HEADER = struct.Struct("<4sBBHHHHHHff")
_RESIZE = ("stretch", "letterbox", "center_crop")
MAX_GRID = 64  # a CAM grid larger than this is not a CAM: refused when read (the hub's input)


@dataclass(frozen=True)
class EvidenceGrid:
    values: np.ndarray  # float32 [h, w], >= 0: evidence for the finding, in logit units
    model_height: int
    model_width: int
    resize: str
    image_height: int
    image_width: int

    def heat(self, height: int, width: int) -> np.ndarray:
        """0..1 float heat over an image of `height` x `width` with the original's aspect (a
        thumbnail or the full image), max-normalised as the device's overlay was."""
        peak = float(self.values.max()) if self.values.size else 0.0
        normalised = self.values / peak if peak > 0 else np.zeros_like(self.values)
        spec = PreprocessSpec(self.model_height, self.model_width, resize=self.resize)  # type: ignore[arg-type]
        return np.clip(to_image_frame(normalised.astype(np.float32), height, width, spec), 0.0, 1.0)


def encode(cam: np.ndarray, target: int, spec: PreprocessSpec, image_height: int, image_width: int) -> bytes:
    """[classes, h, w] CAM -> the wire bytes of its evidence for `target`."""
    margin = evidence_margin(cam, target)
    height, width = margin.shape
    if not (0 < height <= MAX_GRID and 0 < width <= MAX_GRID):
        raise ValueError(f"a {height}x{width} map is not a CAM grid")
    peak = float(margin.max())
    scale = peak / 255.0 if peak > 0 else 1.0
    quantised = np.clip(np.rint(margin / scale), 0, 255).astype(np.uint8)
    header = _HEADER.pack(
        MAGIC, _RESIZE.index(spec.resize), 0, height, width, spec.height, spec.width,
        min(image_height, 65535), min(image_width, 65535), scale, 0.0,
    )  # fmt: skip
    return header + quantised.tobytes()


def decode(data: bytes) -> EvidenceGrid:
    """The wire bytes -> the grid; ValueError for anything that is not one (it comes from a
    device: every field is checked before use)."""
    if len(data) < _HEADER.size or not data.startswith(MAGIC):
        raise ValueError("not an evidence grid")
    _, resize, _, height, width, model_h, model_w, image_h, image_w, scale, offset = _HEADER.unpack_from(data)
    if not (0 < height <= MAX_GRID and 0 < width <= MAX_GRID) or resize >= len(_RESIZE):
        raise ValueError("an evidence grid with an impossible shape or resize policy")
    if min(model_h, model_w, image_h, image_w) < 1 or not (np.isfinite(scale) and np.isfinite(offset)):
        raise ValueError("an evidence grid with an impossible geometry or scale")
    if len(data) != _HEADER.size + height * width:
        raise ValueError("an evidence grid of the wrong length")
    raw = np.frombuffer(data, np.uint8, offset=_HEADER.size).reshape(height, width)
    values = np.maximum(offset + raw.astype(np.float32) * np.float32(scale), 0.0).astype(np.float32)
    return EvidenceGrid(values, model_h, model_w, _RESIZE[resize], image_h, image_w)


def is_evidence(data: bytes) -> bool:
    return data.startswith(MAGIC)
