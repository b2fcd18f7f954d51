"""Crash-safe file writes: temporary name, fsync, rename, fsync the directory (and the parents
of any directory made for it).

After `write_atomically` returns, the file is on disk under its final name with its full
content, or (on any failure) nothing is there under that name. Files hold patient images, so
they are created readable by the owner only.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from edge.errors import Code, EdgeError
from edge.ids import uuid7

FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """Make `path` and its missing parents, each new name made durable in its parent. A new
    directory's name is data of the parent directory: until the parent is fsynced, a power cut
    can take the new directory away with every file later made durable inside it."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=DIR_MODE, exist_ok=True)  # exists: made by a concurrent writer
        fsync_dir(folder.parent)  # whoever made it, it is durable when this returns


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash at any instant leaves all of it or none."""
    make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid7()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        # The clean-up may fail for the same reason (a file system gone read-only): the write's
        # own error is the one to say, coded (a second OSError hid it under a traceback).
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise write_refusal(exc, path) from exc


def write_refusal(exc: OSError, path: Path) -> EdgeError:
    """A failed write of `path`, coded: DISK_FULL, STORE_READ_ONLY (a file system remounted
    read-only under a running agent: an SD card's errors do that), else STORE_WRITE_FAILED."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return EdgeError(Code.DISK_FULL, f"no space left on the disk of {path.parent} to store a file")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return EdgeError(
            Code.STORE_READ_ONLY,
            f"{path.parent} cannot be written ({exc.strerror}): remount the data directory read-write"
            " or give the service's user write access to it, then `edge doctor`",
        )
    return EdgeError(Code.STORE_WRITE_FAILED, f"cannot write a file in {path.parent}: {exc.strerror}")


def remove_quietly(path: Path) -> None:
    """Remove a file we own; missing is fine (a crash may have beaten us to it)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)
