"""What every decoder returns: the display image, its format and hash, and what the input says
about its study. A module of its own so the DICOM decoder and the dispatcher (`decode.py`) both
use it without importing each other."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.study import StudyInfo


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray
    format: str  # dicom | png | jpeg
    sha256: str
    study: StudyInfo = field(default_factory=StudyInfo)
    sop_instance_uid: str | None = None
    frames: int = 1
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
