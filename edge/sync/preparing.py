"""Which outgoing file the sync service is preparing, kept in a small file across its deaths.

A file whose preparation kills the service would otherwise stop every file queued after it. A
large film in the service's memory cap is one: MemoryMax kills the service, systemd starts it
again, and it starts on the same film again. Measured with `tools/film_memory_bench.py`: a 30 MP
film needed about 450 MB for its thumbnail, children included, against a cap of 384 MB. So each
start is written down before the work, and the record is cleared when the work ends, whether it
succeeded or failed. A file whose preparation has started `MAX_DEATHS` times in this boot and
never ended is withheld with its reason, and the queue moves on.

A power cut is not held against the file: the record carries the boot, as the agent's job
holders do (`edge.processes.boot_id`). A stop or restart by systemd (SIGTERM) lets the work end
and clears the record, unless it outlasts the unit's TimeoutStopSec. What counts is a death in
the middle of the work: SIGKILL, the OOM killer, or a crash in native code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from edge.ids import uuid7
from edge.processes import boot_id

log = logging.getLogger(__name__)
MAX_DEATHS = 3


class PreparationRecord:
    """`begin(row)` before a file is prepared, `end()` after; `begin` says how many earlier
    starts on that row, in this boot, never ended."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def begin(self, row_id: str) -> int:
        earlier, boot = self._read(), boot_id() or ""
        same = earlier.get("row") == row_id and earlier.get("boot") == boot
        starts = earlier.get("starts")
        deaths = starts if same and isinstance(starts, int) else 0
        self._write({"row": row_id, "boot": boot, "starts": deaths + 1})
        return deaths

    def end(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:  # the next begin overwrites it anyway
            log.warning("could not clear %s: %s", self.path.name, exc)

    def _read(self) -> dict[str, object]:
        try:
            found = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # torn or unreadable: as if absent
            log.warning("ignoring %s: %s", self.path.name, exc)
            return {}
        return found if isinstance(found, dict) else {}

    def _write(self, record: dict[str, object]) -> None:
        # No fsync: what this guards against is the process dying, which loses nothing written
        # to the page cache; a power cut does not count (the boot changes) and loses nothing that
        # matters. A full disk must not stop the sync either: then nothing is recorded.
        tmp = self.path.with_name(f".{self.path.name}.{uuid7()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not record the file being prepared: %s", exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
