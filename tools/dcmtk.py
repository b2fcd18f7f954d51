"""dcmtk's command-line tools, found on PATH past the virtual environment: pynetdicom installs
console scripts of the same names (storescu, movescu, echoscu, ...) with another output, and an
activated venv (as in CI) puts them first."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def tool(name: str) -> str:
    """The path of dcmtk's `name` (or /usr/bin/NAME, where Debian puts it, if none is found)."""
    venv_bin = str(Path(sys.prefix) / "bin")
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p.rstrip("/") != venv_bin]
    return shutil.which(name, path=os.pathsep.join(path)) or f"/usr/bin/{name}"
