"""Sync with the hub: is it working, when did it last succeed, what waits, what went wrong."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Static

from edge.tui import actions
from edge.tui.data import SYNC_STATES, load_health, sync_view
from edge.tui.screens.base import EdgeScreen
from edge.tui.widgets.top_bar import TopBar


class SyncLoaded(Message):
    def __init__(self, view: dict[str, Any]) -> None:
        super().__init__()
        self.view = view


class SyncScreen(EdgeScreen):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("s", "sync_now", "Sync now")]

    def compose(self) -> ComposeResult:
        yield TopBar("sync")
        with VerticalScroll(id="sync-body"):
            yield Static("reading the sync state…", id="sync-state", classes="section")
            yield Static("", id="sync-facts", classes="section")
            yield Static("", id="sync-error", classes="section")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.refresh_every(self.context.refresh_s)

    def reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="sync")
    def _load(self) -> None:
        self.post_message(SyncLoaded(sync_view(load_health(self.context))))

    def on_sync_loaded(self, message: SyncLoaded) -> None:
        view = message.view
        known = SYNC_STATES.get(view["state"])
        colour, meaning = (known.style, known.meaning) if known else ("", "")
        self.query_one("#sync-state", Static).update(
            f"[b]Sync[/b]  [{colour}]● {view['state'].upper()}[/]\n{meaning}"
        )
        pending = ", ".join(f"{count} {kind}" for kind, count in view["pending"].items()) or "nothing"
        last = self.context.stamp(view["last_success"]) if view["last_success"] else "never"
        hub = f"[b]Hub[/b] {escape(str(view['hub']))}\n" if view["hub"] else ""
        self.query_one("#sync-facts", Static).update(
            f"{hub}[b]Last success[/b] {last}\n[b]Waiting to be sent[/b] {pending}"
        )
        error = view["last_error"]
        when = f" ({self.context.stamp(view['last_error_at'])})" if view["last_error_at"] else ""
        refused = "".join(f"\n[yellow]{escape(line)}[/]" for line in view.get("refused", []))
        self.query_one("#sync-error", Static).update(
            (f"[b]Last error[/b]{when}\n{escape(str(error))}" if error else "[b]Last error[/b] none")
            + (f"\n\n[b]Refused from the hub[/b]{refused}" if refused else "")
        )

    def action_sync_now(self) -> None:
        self.perform(actions.sync_now, self.context.settings)
