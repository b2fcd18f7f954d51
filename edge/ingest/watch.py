"""A watched drop folder: DICOM, PNG or JPEG files left in an inbox (a share the X-ray PC writes
to, a USB import script) are ingested once complete, then moved out of the way.

- Complete means: not hidden or named like a partial download, and size and modification time
  unchanged for `settle_s` (a copy in progress keeps changing). Polling, not inotify: it works
  the same on SMB/NFS shares, where change notification is unreliable.
- After the ingest commits, the file moves to processed/<date>/; a refused file moves to
  quarantine/<date>/ with `<name>.reason.txt` holding `CODE: sentence`. A crash between the
  commit and the move makes the next scan see the file again: it is then a duplicate (same
  bytes), stored once, and simply moved. A restart never processes a file twice.
- When the disk guard says no, or the store cannot write, files stay in the inbox for later.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.clock import utc_now
from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.imaging.decode import read_input
from edge.pipeline import Decoder, Pipeline
from edge.store.files import DIR_MODE, fsync_dir, write_atomically

log = logging.getLogger(__name__)
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".filepart", ".swp")
LEAVE_FOR_LATER = {Code.DISK_FULL, Code.STORE_WRITE_FAILED}


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float


class DropFolder:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        decoder: Decoder,
        *,
        on_queued: Callable[[], None] = lambda: None,
        accepting: Callable[[], tuple[bool, str]] = lambda: (True, ""),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.inbox = settings.inbox
        self.processed = self.inbox.parent / "processed"
        self.quarantine = self.inbox.parent / "quarantine"
        self._pipeline = pipeline
        self._decoder = decoder
        self._on_queued = on_queued
        self._accepting = accepting
        self._clock = clock
        self._seen: dict[Path, _Seen] = {}
        for folder in (self.inbox, self.processed, self.quarantine):
            folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    def candidates(self) -> list[Path]:
        out = []
        for root, dirs, files in os.walk(self.inbox):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if (
                    name.startswith(".")
                    or name.lower().endswith(PARTIAL_SUFFIXES)
                    or name.endswith(".reason.txt")
                ):
                    continue
                out.append(Path(root) / name)
        return out

    def _complete(self, path: Path, now: float) -> bool:
        try:
            stat = path.stat()
        except FileNotFoundError:
            self._seen.pop(path, None)
            return False
        seen = self._seen.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            self._seen[path] = _Seen(stat.st_size, stat.st_mtime_ns, now)
            return self.settings.watch.settle_s == 0
        return now - seen.stable_since >= self.settings.watch.settle_s

    def scan_once(self) -> dict[str, int]:
        """One pass over the inbox; returns counts of what happened (for logs and tests)."""
        counts = {"ingested": 0, "duplicate": 0, "quarantined": 0, "waiting": 0, "deferred": 0}
        now = self._clock()
        for path in self.candidates():
            if not self._complete(path, now):
                counts["waiting"] += 1
                continue
            accepting, reason = self._accepting()
            if not accepting:
                log.warning("drop folder paused: %s", reason)
                counts["deferred"] += 1
                break
            counts[self._take(path)] += 1
        return counts

    def _take(self, path: Path) -> str:
        try:
            data = read_input(path, self.settings.store.max_input_bytes)
            ingested = self._pipeline.ingest(data, path.name, "watch", decoder=self._decoder)
        except EdgeError as error:
            if error.code in LEAVE_FOR_LATER:
                return "deferred"
            self._move(path, self.quarantine, reason=error.one_line())
            return "quarantined"
        self._move(path, self.processed)
        self._on_queued()
        return "duplicate" if ingested.outcome.duplicate else "ingested"

    def _move(self, path: Path, target_root: Path, reason: str | None = None) -> None:
        day = target_root / utc_now()[:10]
        day.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        target = day / path.name
        counter = 1
        while target.exists():  # the same name dropped twice: keep both
            target = day / f"{path.stem}.{counter}{path.suffix}"
            counter += 1
        if reason is not None:
            write_atomically(target.with_name(target.name + ".reason.txt"), (reason + "\n").encode())
        os.replace(path, target)
        fsync_dir(day)
        fsync_dir(path.parent)
        self._seen.pop(path, None)

    def run(self, stop: threading.Event) -> None:
        log.info("watching %s every %.1f s", self.inbox, self.settings.watch.interval_s)
        while not stop.is_set():
            try:
                counts = self.scan_once()
                if counts["ingested"] or counts["quarantined"]:
                    log.info("drop folder: %s", counts)
            except Exception:  # the watcher must outlive one bad scan
                log.exception("drop folder scan failed")
            stop.wait(self.settings.watch.interval_s)
