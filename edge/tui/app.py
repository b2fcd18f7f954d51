"""`edge tui`: the technicians' terminal UI over the device store and the health snapshot.

Four screens, each its own mode (1 worklist, 2 live ultrasound, 3 sync, 4 device); a result
opens over the worklist; `?` lists every key, `g` explains every word and mark; ctrl+p finds
every action by name. It reads the store directly, so it works with or without the agent, and
the header says which.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, tzinfo
from functools import partial
from typing import Any, ClassVar

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.screen import Screen
from textual.scrollbar import ScrollBar

from edge.config import Settings
from edge.tui.context import AgentSource, FactsSource, HealthSource, TuiContext
from edge.tui.data import load_health, sync_short, sync_view

# Before textual-image's terminal queries (in widgets.picture, imported by the screens).
from edge.tui.screens.device import DeviceScreen
from edge.tui.screens.glossary import GlossaryScreen
from edge.tui.screens.help import HelpScreen, key_name
from edge.tui.screens.live import LiveScreen
from edge.tui.screens.result import ResultScreen
from edge.tui.screens.sync import SyncScreen
from edge.tui.screens.worklist import WorklistScreen
from edge.tui.terminal import CONSOLE_FONT_CLASS, WholeCellScrollBar, console_font
from edge.tui.widgets.top_bar import AGENT_DOWN, AGENT_UP

log = logging.getLogger(__name__)

SCREEN_NAMES = {"worklist": "Worklist", "live": "Live ultrasound", "sync": "Sync", "device": "Device"}


class EdgeApp(App[int]):
    agent_status = reactive("agent: checking…")
    sync_status: reactive[tuple[str, str]] = reactive(("", ""))
    """The sync state in a few words and its style (`data.sync_short`), for the top bar."""
    CSS_PATH = "app.tcss"
    TITLE = "edge"
    MODES: ClassVar[dict[str, str | Callable[[], Screen[Any]]]] = {
        "worklist": WorklistScreen,
        "live": LiveScreen,
        "sync": SyncScreen,
        "device": DeviceScreen,
    }
    DEFAULT_MODE = "worklist"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "switch_mode('worklist')", "Worklist", show=False),
        Binding("2", "switch_mode('live')", "Live", show=False),
        Binding("3", "switch_mode('sync')", "Sync", show=False),
        Binding("4", "switch_mode('device')", "Device", show=False),
        Binding("question_mark,f1", "help", "Help"),
        Binding("g", "glossary", "Glossary", show=False),
        Binding("q", "quit", "Quit", show=False),
    ]

    def __init__(self, context: TuiContext) -> None:
        super().__init__()
        self.context = context
        self.title = f"edge · {context.settings.site}"
        self.site = context.settings.site

    def on_unmount(self) -> None:
        self.context.close()

    def on_mount(self) -> None:
        if self.context.console_font:
            self.add_class(CONSOLE_FONT_CLASS)
            ScrollBar.renderer = WholeCellScrollBar
        self._check_background()
        self.set_interval(max(self.context.refresh_s, 5.0), self._check_background)

    @work(thread=True, exclusive=True, group="agent")
    def _check_background(self) -> None:
        """Whether the agent runs and how the sync stands: what every screen's top bar says."""
        agent = self.context.agent(self.context.settings)
        words = AGENT_UP if agent.get("running") else AGENT_DOWN
        self.call_from_thread(setattr, self, "agent_status", words)
        try:
            sync = sync_short(sync_view(load_health(self.context)), self.context)
        except Exception:  # the bar must not die of it; the sync screen shows the error
            log.exception("reading the sync state for the top bar")
            sync = ("sync: unknown", "yellow")
        self.call_from_thread(setattr, self, "sync_status", sync)

    # ------------------------------------------------------------------ help and the palette

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        sections: list[tuple[str, Any]] = [
            ("Everywhere", self.BINDINGS),
            ("Worklist", WorklistScreen.BINDINGS),
            ("Result", ResultScreen.BINDINGS),
            ("Live ultrasound", LiveScreen.BINDINGS),
            ("Sync", SyncScreen.BINDINGS),
        ]
        self.push_screen(HelpScreen(sections))

    def action_glossary(self) -> None:
        if not isinstance(self.screen, GlossaryScreen):
            self.push_screen(GlossaryScreen())

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        for mode, name in SCREEN_NAMES.items():
            yield SystemCommand(
                f"Go to {name}", f"switch to the {name.lower()} screen", partial(self.switch_mode, mode)
            )
        yield SystemCommand("Help: keys", "every key of every screen", self.action_help)
        yield SystemCommand("Glossary", "what the marks and numbers mean", self.action_glossary)
        # The current screen's own actions, by their names (flag urgent, note, sync now, ...).
        for binding in getattr(screen, "BINDINGS", []):
            if isinstance(binding, Binding) and binding.description:
                yield SystemCommand(
                    binding.description,
                    f"key {key_name(binding.key.split(',')[0])} on this screen",
                    partial(screen.run_action, binding.action),
                )
        yield from super().get_system_commands(screen)


def create_app(
    settings: Settings,
    *,
    health: HealthSource | None = None,
    agent: AgentSource | None = None,
    facts: FactsSource | None = None,
    clock: Callable[[], datetime] | None = None,
    display_tz: tzinfo | None = None,
    actor: str | None = None,
    refresh_s: float = 2.0,
    graphics: str = "auto",
    console: bool | None = None,
    live_source: str | None = None,
    live_model: str | None = None,
    live_realtime: bool = True,
) -> EdgeApp:
    """The app, with every outside dependency replaceable (tests fix health, facts and clock).
    `console`: draw for the Linux console's fonts; None: when TERM says it is one."""
    context = TuiContext(settings, refresh_s=refresh_s, graphics=graphics, display_tz=display_tz)
    context.console_font = console_font() if console is None else console
    if health is not None:
        context.health = health
    if agent is not None:
        context.agent = agent
    if facts is not None:
        context.facts = facts
    if clock is not None:
        context.clock = clock
    if actor is not None:
        context.actor = actor
    context.live_source = live_source
    context.live_model = live_model
    context.live_realtime = live_realtime
    context.ensure_schema()
    return EdgeApp(context)


def run_tui(settings: Settings, **options: Any) -> int:
    """Run the TUI in this terminal until the technician quits; the exit status."""
    app = create_app(settings, **options)
    result = app.run()
    return int(result or 0)
