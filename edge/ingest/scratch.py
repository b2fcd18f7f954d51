"""Scratch folders of decoder processes, and the sweep of those whose owner is gone.

A decoder's temporary files are the patient's pictures (a video cine's stream, GDCM's copy of
a file). Each worker gets a folder of its own as its TMPDIR, removed when it is killed: a worker
killed mid-decode cannot remove its files itself. The process that made the folder holds an
exclusive `flock` on its `.owner` file for as long as it lives; the lock goes with the process
(a power cut, kill -9), so a later sweep knows a folder nobody holds. Entries are judged by
`lstat`: a symlink, a file or another user's folder under the prefix is never followed or
removed, and a folder younger than a minute is left (its owner may not hold the lock yet).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "edge-guard-"
OWNER = ".owner"
YOUNG_S = 60.0


class Scratch:
    """A private folder held by this process until `remove`."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX))  # mode 0700
        try:
            self._owner: int | None = os.open(
                self.path / OWNER, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600
            )
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        owner, self._owner = self._owner, None
        if owner is not None:
            os.close(owner)


def sweep() -> int:
    """Remove the scratch folders no living process holds; returns how many."""
    removed = 0
    for entry in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            found = entry.lstat()
            if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
                continue  # a symlink, a file, someone else's: not ours to judge
            if time.time() - found.st_mtime < YOUNG_S:
                continue
            owner = os.open(entry / OWNER, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, or no owner file: left
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: its process lives
        finally:
            with contextlib.suppress(OSError):
                os.close(owner)
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    if removed:
        log.info("removed %d decoder scratch folder(s) left by a process that died", removed)
    return removed
