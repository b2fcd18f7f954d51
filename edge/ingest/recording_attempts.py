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
            deaths, restarts = int(earlier.get("deaths", 0)), int(earlier.get("restarts", 0))
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
        write_atomically(self.path, json.dumps(noted).encode())

    def end(self, content: str) -> None:
        noted = self._read()
        if noted.pop(content, None) is None:
            return
        if noted:
            write_atomically(self.path, json.dumps(noted).encode())
        else:
            remove_quietly(self.path)

    def _read(self) -> dict[str, object]:
        try:
            found = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):  # damaged (a disk error): start again rather than stop
            log.warning("the drop folder's record of video attempts cannot be read; it starts again")
            return {}
        return found if isinstance(found, dict) else {}
