"""Shims for the oldest Python the device runs (3.10 on JetPack 6)."""

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the device's Python 3.10
    import tomli as tomllib

__all__ = ["tomllib"]
