"""What every screen of the TUI shares: settings, where data comes from, the clock, who is typing.

No Textual here. Screens reach it as `app.context`; tests build one with fixed health, device
facts and clock so that what is drawn depends on the store alone.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from functools import cached_property
from typing import Any

from edge.config import Settings
from edge.inference.registry import Registry
from edge.ingest.guard import GuardedDecoder
from edge.store import Store

HealthSource = Callable[[Settings, Store], dict[str, Any]]
FactsSource = Callable[[], dict[str, Any]]
AgentSource = Callable[[Settings], dict[str, Any]]


def _default_health(settings: Settings, store: Store) -> dict[str, Any]:
    from edge.operations.health import snapshot

    return snapshot(settings, store)


def _default_agent(settings: Settings) -> dict[str, Any]:
    from edge.operations.health import read_agent

    return read_agent(settings)


def _default_facts() -> dict[str, Any]:
    from edge.operations.host import host_facts

    return host_facts()


def _local_now() -> datetime:
    return datetime.now(timezone.utc)


def technician() -> str:
    """The audit trail's actor: the login behind the keyboard (technicians share no account)."""
    try:
        return f"tui:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container): still say it was the TUI
        return "tui"


@dataclass
class TuiContext:
    settings: Settings
    health: HealthSource = _default_health
    """The health snapshot (agent, queue, disk, sync); `edge.operations.health.snapshot` in the field."""
    agent: AgentSource = _default_agent
    """The agent's report (running or not, pid, sources): whether the TUI or the agent analyses."""
    facts: FactsSource = _default_facts
    """Host facts for the device screen (Jetson model, temperatures, memory)."""
    clock: Callable[[], datetime] = _local_now
    display_tz: tzinfo | None = None
    """Times are shown in this zone; None: the machine's local zone."""
    actor: str = field(default_factory=technician)
    refresh_s: float = 2.0
    """How often the worklist and panels reload (the agent writes from another process)."""
    graphics: str = "auto"
    """auto: sixel / kitty graphics where the terminal has them, else half-cell blocks; or halfcell."""
    console_font: bool = False
    """Draw only what the Linux console's fonts have (lines, no block elements): `terminal.py`."""
    live_source: str | None = None
    live_model: str | None = None
    live_realtime: bool = True
    """Play a file source at its own speed (a stand-in for a device); False: every frame, fast."""

    def open_store(self) -> Store:
        """A store for the calling thread (SQLite connections are not shared between threads).
        The schema was brought up to date once, when the app started (`ensure_schema`), so the
        screens' refreshes only read: no migration check every two seconds."""
        return Store(
            self.settings.data_dir, busy_timeout_ms=self.settings.store.busy_timeout_ms, migrate=False
        )

    def ensure_schema(self) -> None:
        """Create or upgrade the database before the screens read it, so a fresh device shows an
        empty worklist rather than an error."""
        Store(self.settings.data_dir, busy_timeout_ms=self.settings.store.busy_timeout_ms).close()

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.settings.models.dir)

    @cached_property
    def decoder(self) -> GuardedDecoder:
        """Stored pictures are shown as the agent decodes them, in one bounded, quiet worker
        (started at the first picture): an object the agent's guard refused is stored all the
        same (it may be the study's), and a crafted video stream that takes gigabytes to parse
        took them from the TUI's own process."""
        return GuardedDecoder.from_settings(self.settings.ingest, quiet=True)

    def close(self) -> None:
        """Stop the picture decoder, if one was started."""
        decoder = self.__dict__.pop("decoder", None)
        if decoder is not None:
            decoder.close()

    def now(self) -> datetime:
        return self.clock().astimezone(self.display_tz)

    def local(self, iso: str | None) -> datetime | None:
        """A stored UTC time (ISO-8601 with Z) in the display zone."""
        if not iso:
            return None
        try:
            parsed = datetime.fromisoformat(iso.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(self.display_tz)

    def when(self, iso: str | None, *, narrow: bool = False) -> str:
        """`14:05` today, `12 Mar 14:05` before (`narrow`: `12 Mar`, for an 80-column worklist;
        the row's detail line has the full time)."""
        moment = self.local(iso)
        if moment is None:
            return "-"
        if moment.date() == self.now().date():
            return moment.strftime("%H:%M")
        if narrow:
            return f"{moment.day} {moment:%b}"
        return f"{moment.day} {moment:%b %H:%M}"

    def stamp(self, iso: str | None) -> str:
        moment = self.local(iso)
        return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"
