"""What every decoder returns: the display image, its format and hash, and what the input says
about its study. A module of its own so the DICOM decoder and the dispatcher (`decode.py`) both
use it without importing each other."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.errors import Code, EdgeError
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


@dataclass(frozen=True)
class DicomHeader:
    """What a well-formed DICOM object says about itself when its pixels cannot be shown (an
    encoding this build cannot decode): enough to store it, as a PACS does, without analysing it.
    The same fields as `DecodedImage`, with the size read from the header."""

    sha256: str
    width: int
    height: int
    study: StudyInfo = field(default_factory=StudyInfo)
    sop_instance_uid: str | None = None
    frames: int = 1
    meta: dict[str, Any] = field(default_factory=dict)
    format: str = "dicom"


class UndecodableDicom(EdgeError):
    """A refusal of a well-formed DICOM object's pixels (`DICOM_UNSUPPORTED`,
    `DICOM_PIXELS_DAMAGED`, `DICOM_NO_PIXELS`), carrying its header, so a receiver that keeps
    every instance can store it unanalysed."""

    def __init__(self, code: Code, message: str, header: DicomHeader) -> None:
        super().__init__(code, message)
        self.header = header

    def __reduce__(self) -> tuple[Any, ...]:  # crosses the guarded decoder's pipe
        return (type(self), (self.code, self.message, self.header))
