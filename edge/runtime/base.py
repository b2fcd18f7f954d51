"""The runtime contract every inference backend implements.

Shaped after Polygraphy's runners (activate / infer / deactivate) and pydicom's decoder plugins
(one module per backend, its heavy import guarded, `is_available()` to ask first). A runner is
built for one model file and one set of tensor names; it is used from one thread at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edge.config import RuntimeSettings
from edge.errors import Code, EdgeError


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


@dataclass(frozen=True)
class TensorSpec:
    name: str
    is_input: bool
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # -1 where dynamic


def bind(specs: list[TensorSpec], names: TensorNames) -> tuple[TensorSpec, list[TensorSpec]]:
    """The engine's input and requested outputs, by the manifest's names (never by position)."""
    by_name = {spec.name: spec for spec in specs}
    problems = []
    if names.input not in by_name or not by_name[names.input].is_input:
        problems.append(f"no input tensor {names.input!r}")
    for output in names.outputs:
        if output not in by_name or by_name[output].is_input:
            problems.append(f"no output tensor {output!r}")
    extra_inputs = [s.name for s in specs if s.is_input and s.name != names.input]
    if extra_inputs:
        problems.append(f"unexpected extra inputs {extra_inputs}")
    if problems:
        found = ", ".join(f"{s.name} ({'in' if s.is_input else 'out'})" for s in specs)
        raise EdgeError(
            Code.MODEL_MANIFEST_INVALID,
            f"engine does not match the manifest: {'; '.join(problems)} (engine has {found})",
        )
    return by_name[names.input], [by_name[o] for o in names.outputs]


def concrete_shape(spec: TensorSpec, batch: int) -> tuple[int, ...]:
    """A tensor's shape at a batch size: the leading dynamic dimension becomes `batch`."""
    if not spec.shape:
        return ()
    rest = spec.shape[1:]
    if any(d < 0 for d in rest):
        raise EdgeError(Code.MODEL_MANIFEST_INVALID, f"{spec.name} has dynamic dimensions besides the batch")
    return (batch, *rest)
