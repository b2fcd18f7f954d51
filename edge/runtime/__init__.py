"""Inference backends behind one contract (`Runner`), chosen by name or automatically.

Backends are imported lazily by name so that a machine without TensorRT never imports it.
"""

from __future__ import annotations

import importlib

from edge.errors import Code, EdgeError
from edge.runtime.base import Runner, TensorNames

# Preference order for `backend = "auto"`: the first available wins.
BACKENDS: dict[str, str] = {
    "tensorrt": "edge.runtime.tensorrt:TensorRTRunner",
    "onnxruntime": "edge.runtime.onnxruntime:OnnxRuntimeRunner",
}


def backend_class(name: str) -> type[Runner] | None:
    """The runner class for `name`, or None when its module is absent from this build."""
    target = BACKENDS.get(name)
    if target is None:
        raise EdgeError(Code.BACKEND_UNAVAILABLE, f"unknown backend {name!r}")
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    runner: type[Runner] = getattr(module, attribute)
    return runner


def available_backends() -> list[str]:
    out = []
    for name in BACKENDS:
        cls = backend_class(name)
        if cls is not None and cls.is_available():
            out.append(name)
    return out


def resolve_backend(requested: str) -> type[Runner]:
    """`auto` -> the first available backend in preference order; a named one must be available."""
    names = list(BACKENDS) if requested == "auto" else [requested]
    for name in names:
        cls = backend_class(name)
        if cls is not None and cls.is_available():
            return cls
    if requested == "auto":
        raise EdgeError(Code.BACKEND_UNAVAILABLE, "no inference backend is available")
    cls = backend_class(requested)
    reason = cls.unavailable_reason() if cls else f"{requested} is not part of this build"
    raise EdgeError(Code.BACKEND_UNAVAILABLE, reason)


__all__ = ["BACKENDS", "Runner", "TensorNames", "available_backends", "backend_class", "resolve_backend"]
