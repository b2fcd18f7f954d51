"""One line at the top of every screen: the four screens with their keys (the current one lit),
the site, and whether the agent runs. Takes the place of Textual's Header, which would spend the
line on the title alone."""

from __future__ import annotations

from rich.markup import escape
from textual.widgets import Static

TABS = (("worklist", "1 Worklist"), ("live", "2 Live"), ("sync", "3 Sync"), ("device", "4 Device"))


class TopBar(Static):
    def __init__(self, current: str) -> None:
        super().__init__(classes="top-bar")
        self.current = current

    def on_mount(self) -> None:
        self.watch(self.app, "agent_status", self._redraw)

    def _redraw(self, agent_status: str) -> None:
        tabs = " ".join(
            f"[reverse b] {label} [/]" if mode == self.current else f" {label} " for mode, label in TABS
        )
        site = escape(getattr(self.app, "site", ""))
        self.update(f"{tabs}  [dim]{site}[/] · {escape(agent_status)}")
