"""Data files readable by their owner only (issue 17).

edge.db holds patient names and hub.db argon2 password hashes. Files made before the program set
its own umask (`edge.cli.main`), or copied in by hand, may be readable by any local user
(`nobody` included). `edge doctor` tightens them: group and other lose every permission bit;
the owner's bits are left as they are. Nothing is opened, so no SQLite lock is disturbed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edge.config import Settings

OPEN_TO_OTHERS = stat.S_IRWXG | stat.S_IRWXO


@dataclass
class Tightened:
    changed: list[Path] = field(default_factory=list)
    """Files and folders whose group/other bits were removed."""
    refused: list[Path] = field(default_factory=list)
    """Open to others, but not ours to change (another owner: run doctor as the service user)."""


def data_roots(settings: Settings) -> list[Path]:
    """The device's data folder and the hub's (beside it by default, else configured)."""
    roots = [settings.data_dir]
    if settings.hub_dir not in roots and not settings.hub_dir.is_relative_to(settings.data_dir):
        roots.append(settings.hub_dir)
    return [root for root in roots if root.exists()]


def _walk(roots: Iterable[Path]) -> Iterable[Path]:
    for root in roots:
        yield root
        for folder, dirs, files in os.walk(root):  # symlinks are not followed (os.walk's default)
            for name in dirs + files:
                yield Path(folder) / name


def tighten(roots: Iterable[Path]) -> Tightened:
    """Remove group and other permissions from every file and folder under `roots`."""
    out = Tightened()
    for path in _walk(roots):
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode) or not info.st_mode & OPEN_TO_OTHERS:
            continue
        try:
            os.chmod(path, stat.S_IMODE(info.st_mode) & ~OPEN_TO_OTHERS)
        except PermissionError:
            out.refused.append(path)
        else:
            out.changed.append(path)
    return out
