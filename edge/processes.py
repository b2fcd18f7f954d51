"""Which process holds what: job holders, the one-per-data-directory locks, and the doorbell.

- A job is claimed by `host:pid:suffix:boot`; a later process on the same host finds the holder
  gone with `process_alive` and returns its jobs to the queue (a reused pid only delays that
  until the job's lease ends: nothing is signalled). A holder of an earlier boot of this host is
  gone however its pid is used now, and its death was the device's (a power cut, a reboot), not
  its input's (`holder_state`).
- `InstanceLock`: an flock the agent (`edge run`) and the sync agent each hold for their whole
  life. The kernel drops it when the process dies however it dies, so "is it running?" is
  "is the lock held?", never "is that pid alive?" (a pid file outlives a SIGKILL and its pid is
  reused). A second agent on the same data directory is refused, naming the first.
- `Doorbell`: a FIFO that a running process reads; `ring` wakes it, and tells whether anyone
  was there to hear (no reader: ENXIO). It replaces SIGUSR1 to a pid read from a file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import select
import socket
import stat
import time
from pathlib import Path
from typing import Any

from edge.errors import Code, EdgeError
from edge.ids import uuid7

log = logging.getLogger(__name__)


def process_alive(pid: int) -> bool:
    """True when a process with this pid exists (also one owned by another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user (the service's dynamic user)
    except OSError:
        return False
    return True


def this_host() -> str:
    return socket.gethostname()


BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def boot_id() -> str | None:
    """This boot of the machine, shortened (the kernel draws a new one at every boot); None
    where the kernel does not say. Read once: it cannot change under a running process."""
    try:
        return BOOT_ID_FILE.read_text().strip().replace("-", "")[:12] or None
    except OSError:
        return None


def new_worker_id() -> str:
    """`host:pid:suffix:boot`: the holder recorded on a claimed job (the suffix tells two
    pipelines of one process apart; the boot tells a holder that a restart killed)."""
    return f"{this_host()}:{os.getpid()}:{uuid7()[-8:]}:{boot_id() or ''}"


def holder_state(worker: str | None) -> str:
    """What became of a job's holder: "restarted" (a process of this host before its last
    boot), "gone" (a process of this boot that no longer exists), "alive", or "unknown" (another
    host, or a holder recorded without its host and pid)."""
    parts = (worker or "").split(":")
    if len(parts) < 2 or parts[0] != this_host() or not parts[1].isdigit():
        return "unknown"
    held_in = parts[3] if len(parts) > 3 else ""  # older holders did not record their boot
    now = boot_id()
    if held_in and now and held_in != now:
        return "restarted"
    return "alive" if process_alive(int(parts[1])) else "gone"


ACQUIRE_WITHIN_S = 1.0


class InstanceLock:
    """An exclusive flock on `path` held for a process's life, the holder's pid and start time
    written inside for the message that refuses a second one (`role` names it, e.g. "agent")."""

    def __init__(self, path: Path, role: str) -> None:
        self.path = path
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise EdgeError(Code.DISK_FULL, f"no space left to create {self.path}: free space") from exc
        if not _flock_within(fd, ACQUIRE_WITHIN_S):
            os.close(fd)
            first = holder(self.path) or {}
            raise EdgeError(
                Code.ALREADY_RUNNING,
                f"another {self.role} already runs on {self.path.parent}"
                f" (pid {first.get('pid', '?')}, started {first.get('started', '?')});"
                " stop it first, or give this one another --data-dir",
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": this_host(), "started": _now()}).encode())
        except OSError as exc:  # the lock is held; who holds it is only said (a full disk: a traceback)
            log.warning("could not write who holds %s: %s", self.path.name, exc.strerror or exc)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock; the file stays (unlinking would race)
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _flock_within(fd: int, seconds: float) -> bool:
    """Take the exclusive lock, retrying briefly: `holder` takes a shared lock for an instant
    to look, and a process starting at that instant must not mistake the look for a rival."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def holder(path: Path) -> dict[str, Any] | None:
    """What the holder of the lock at `path` wrote (pid, host, started), or None when no
    process holds it (never run, stopped, or killed: the kernel released it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return dict(json.loads(os.read(fd, 4096) or b"{}"))
            except ValueError:
                return {}  # held, its holder still writing who it is
        return None  # we could take it: nobody holds it (released again on close)
    finally:
        os.close(fd)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Doorbell:
    """A named pipe at `path`: the process that `listen`s is woken by any `ring`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def listen(self) -> bool:
        """Start listening; False (and the process only polls) where the data directory's file
        system has no named pipes (FAT, some FUSE and network file systems)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISFIFO(self.path.lstat().st_mode):
                    self.path.unlink()
            with contextlib.suppress(FileExistsError):
                os.mkfifo(self.path, 0o600)
            # Read-write: the reader never sees end-of-file when a ringer closes its end.
            self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self._fd = None
            return False
        return True

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s for a ring; True when rung (all pending rings are consumed)."""
        if self._fd is None:
            time.sleep(timeout)
            return False
        ready, _, _ = select.select([self._fd], [], [], max(timeout, 0.0))
        if not ready:
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 512):
                pass
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def ring(path: Path) -> bool:
    """Wake the process listening at `path`; False when none listens (or there is no bell)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT, errno.EACCES, errno.EPERM):
            return False
        raise
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        with contextlib.suppress(BlockingIOError):  # the pipe is full: it will wake anyway
            os.write(fd, b"!")
        return True
    finally:
        os.close(fd)
