"""One line at the top of every screen: the four screens with their keys (the current one lit),
whether the agent runs, how the sync stands, and the site. Takes the place of Textual's Header,
which would spend the line on the title alone. At 80 columns the site, least needed on a box
that serves one, is what gets cut."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual.widgets import Static

AGENT_UP, AGENT_DOWN = "agent running", "agent NOT running"
TABS = (("worklist", "1 Worklist"), ("live", "2 Live"), ("sync", "3 Sync"), ("device", "4 Device"))


class TopBar(Static):
    def __init__(self, current: str) -> None:
        super().__init__(classes="top-bar")
        self.current = current

    def on_mount(self) -> None:
        self.watch(self.app, "agent_status", self._redraw)
        self.watch(self.app, "sync_status", self._redraw)

    def _redraw(self, _changed: Any = None) -> None:
        tabs = "".join(
            f"[reverse b] {label} [/]" if mode == self.current else f" {label} " for mode, label in TABS
        )
        agent = escape(getattr(self.app, "agent_status", ""))
        if agent == AGENT_DOWN:
            agent = f"[bold red]{agent}[/]"
        sync_words, sync_style = getattr(self.app, "sync_status", ("", ""))
        sync = f" · [{sync_style}]{escape(sync_words)}[/]" if sync_words else ""
        site = escape(getattr(self.app, "site", ""))
        self.update(f"{tabs} {agent}{sync} · [dim]{site}[/]")
