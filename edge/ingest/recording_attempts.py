"""How often analysing a dropped video was cut short, so one that kills the agent is given up.

A dropped image becomes a job, and the job queue gives up an input whose worker died
`[worker] max_attempts` times (`JOB_ABANDONED`). A dropped video is analysed before anything is
stored, so nothing counted: a video that killed the agent would be taken first again at every
start, and the drop folder would never move on. An attempt is noted (by the video's content)
before its analysis and forgotten after it, whatever its outcome; an attempt still noted when
the next begins was cut short: by the agent's death (the same boot: it counts against
`max_attempts`) or by a restart of the device (another boot: `max_restarts`, as the queue
counts them).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edge.errors import Code, EdgeError
from edge.processes import boot_id
from edge.store.files import remove_quietly, write_atomically

log = logging.getLogger(__name__)

FILE = ".dropped-attempts.json"


class RecordingAttempts:
    """The attempts noted under `folder` (the data folder's clips/), one file for all."""

    def __init__(self, folder: Path, max_attempts: int, max_restarts: int) -> None:
        self.path = folder / FILE
        self.max_attempts = max_attempts
        self.max_restarts = max_restarts

    def begin(self, content: str, name: str) -> None:
        """Note an attempt at the video of sha256 `content`; JOB_ABANDONED where those cut short
        before it reach the limits (its note is then forgotten)."""
        noted = self._read()
        earlier = noted.get(content)
        deaths, restarts = 0, 0
        if isinstance(earlier, dict):
            deaths, restarts = _count(earlier.get("deaths")), _count(earlier.get("restarts"))
            if earlier.get("boot") == boot_id():
                deaths += 1
            else:
                restarts += 1
        if deaths >= self.max_attempts or restarts >= self.max_restarts:
            self.end(content)
            raise EdgeError(
                Code.JOB_ABANDONED,
                f"analysing {name} was cut short {deaths + restarts} time(s) (the agent stopped"
                f" {deaths} time(s) during it, the device restarted {restarts} time(s)): given up",
            )
        noted[content] = {"deaths": deaths, "restarts": restarts, "boot": boot_id()}
        try:
            write_atomically(self.path, json.dumps(noted).encode())
        except (EdgeError, OSError) as error:  # the note is a guard, not the work: go on without it
            why = error.one_line() if isinstance(error, EdgeError) else str(error)
            log.warning("the drop folder cannot note an attempt at %s (%s); analysing it anyway", name, why)

    def end(self, content: str) -> None:
        noted = self._read()
        if noted.pop(content, None) is None:
            return
        try:
            if noted:
                write_atomically(self.path, json.dumps(noted).encode())
            else:
                remove_quietly(self.path)
        except (EdgeError, OSError) as error:  # noted again next time: at worst counted once more
            log.warning("the drop folder cannot clear an attempt's note: %s", error)

    def _read(self) -> dict[str, object]:
        try:
            found = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):  # damaged (a disk error): start again rather than stop
            log.warning("the drop folder's record of video attempts cannot be read; it starts again")
            return {}
        return found if isinstance(found, dict) else {}


def _count(value: object) -> int:
    """A count as noted; anything else (a damaged note) counts as none."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
