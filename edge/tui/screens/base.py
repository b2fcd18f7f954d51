"""What the screens share: the context, and running a blocking action off the UI thread.

An action (a store write, a re-run, a sync request) runs in a thread worker and posts
`ActionFinished` back; the screen shows its sentence and reloads. The UI never waits on SQLite,
a model or the network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from textual import events, work
from textual.message import Message
from textual.screen import Screen

from edge.errors import EdgeError
from edge.tui.actions import refusal_sentence
from edge.tui.context import TuiContext

log = logging.getLogger(__name__)

WIDE_COLUMNS = 110  # a terminal this wide gets the larger layouts (app.tcss `.-wide`)


class ActionFinished(Message):
    def __init__(self, sentence: str, ok: bool) -> None:
        super().__init__()
        self.sentence = sentence
        self.ok = ok


class EdgeScreen(Screen[None]):
    """A full screen of the TUI (worklist, result, live, sync, device)."""

    @property
    def context(self) -> TuiContext:
        # The app holds the context (EdgeApp.context); read by name so the screens need not
        # import the app, which imports them.
        context: TuiContext = self.app.context  # type: ignore[attr-defined]
        return context

    def on_mount(self) -> None:
        # Set before the first layout too, not only on Resize: a screen pushed onto a wide
        # terminal could lay its picture out narrow first and keep that height (a flaky layout).
        self._fit_width(self.app.size.width)

    def on_resize(self, event: events.Resize) -> None:
        self._fit_width(event.size.width)

    def _fit_width(self, columns: int) -> None:
        # WIDE_COLUMNS and more: the stylesheet's `.-wide` rules (a bigger image, more columns).
        self.set_class(columns >= WIDE_COLUMNS, "-wide")

    def reload(self) -> None:
        """Read the screen's data again (shown again, after an action, on the refresh timer)."""

    def refresh_every(self, seconds: float) -> None:
        """Reload on a timer, but only while this screen is the one shown: a mode switched away
        keeps its timers running, and the health snapshot behind some screens is not free.
        Coming back reloads at once (on_screen_resume)."""
        self.set_interval(seconds, self._refresh_if_shown)

    def _refresh_if_shown(self) -> None:
        if self.is_current:
            self.reload()

    def on_screen_resume(self) -> None:
        # Shown for the first time, or again (another screen or a dialog was on top): what it
        # shows may have changed meanwhile.
        self.reload()

    @work(thread=True, group="action")
    def perform(self, action: Callable[..., str], *args: Any) -> None:
        """Run `action(*args)` (blocking: store, model, network) in a thread; its sentence, or the
        refusal's `CODE: sentence`, comes back as `ActionFinished`."""
        try:
            sentence, ok = action(*args), True
        except EdgeError as error:
            sentence, ok = refusal_sentence(error), False
        except Exception as exc:
            log.exception("a TUI action failed")
            sentence, ok = f"the action failed: {type(exc).__name__}: {exc}", False
        self.post_message(ActionFinished(sentence, ok))

    def on_action_finished(self, message: ActionFinished) -> None:
        self.notify(message.sentence, severity="information" if message.ok else "error", timeout=6)
        self.reload()
