"""Store-and-forward sync to a hub: de-identify, send (at least once), pull reviews and models.

The device never deletes what the hub has not acknowledged; the hub stores each record once
(idempotent receiver). `protocol.py` is the wire format both sides import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.config import Settings
from edge.processes import holder, ring


def sync_lock(settings: Settings) -> Path:
    """The flock `edge sync run` holds for its life (one sync agent per data directory)."""
    return settings.data_dir / "sync" / "sync.lock"


def doorbell(settings: Settings) -> Path:
    """The FIFO a running `edge sync run` listens on; `edge sync now` and the TUI ring it."""
    return settings.data_dir / "sync" / "wake"


def sync_agent(settings: Settings) -> dict[str, Any] | None:
    """The running `edge sync run` (pid, host, started), or None: its lock is held or not."""
    return holder(sync_lock(settings))


def request_sync_now(settings: Settings) -> bool:
    """Wake a running `edge sync run`; False when none runs (then sync in-process). No signal
    goes to a pid read from a file: a stale one may name an unrelated process."""
    return sync_agent(settings) is not None and ring(doorbell(settings))
