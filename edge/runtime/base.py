"""The runtime contract every inference backend implements.

Shaped after Polygraphy's runners (activate / infer / deactivate) and pydicom's decoder plugins
(one module per backend, its heavy import guarded, `is_available()` to ask first). A runner is
built for one model file and one set of tensor names; it is used from one thread at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from edge.config import RuntimeSettings


@dataclass(frozen=True)
class TensorNames:
    """Which tensors to feed and fetch, taken from the manifest (never guessed by position)."""

    input: str
    outputs: tuple[str, ...]


class Runner(ABC):
    """One loaded model on one backend."""

    backend: ClassVar[str]

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """True when this backend can run here (its library imports, its device exists)."""

    @classmethod
    def unavailable_reason(cls) -> str:
        return f"{cls.backend} is not available on this machine"

    def __init__(self, model_file: Path, names: TensorNames, settings: RuntimeSettings) -> None:
        self.model_file = model_file
        self.names = names
        self.settings = settings

    @abstractmethod
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a float32 NCHW batch; returns every requested output by name."""

    @abstractmethod
    def close(self) -> None:
        """Release the session, engine or device memory. Safe to call twice."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
