"""Store-and-forward sync to a hub: de-identify, send (at least once), pull reviews and models.

The device never deletes what the hub has not acknowledged; the hub stores each record once
(idempotent receiver). `protocol.py` is the wire format both sides import.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from edge.config import Settings
from edge.processes import process_alive


def pid_file(settings: Settings) -> Path:
    return settings.data_dir / "sync" / "sync.pid"


def sync_agent_pid(settings: Settings) -> int | None:
    """The pid of a running `edge sync run`, or None (no pid file, or its process is gone)."""
    try:
        pid = int(pid_file(settings).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if process_alive(pid) else None


def request_sync_now(settings: Settings) -> bool:
    """Wake a running `edge sync run` (SIGUSR1); False when none runs (then sync in-process)."""
    try:
        pid = int(pid_file(settings).read_text().strip())
        os.kill(pid, signal.SIGUSR1)
    except (OSError, ValueError):
        return False
    return True
