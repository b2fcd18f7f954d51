"""Every key of every screen, read from the screens' own bindings so it cannot drift from them."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

INTRO = (
    "[b]edge[/b]: AI second reads on this device. Every result is decision support for a clinician.\n"
    "Everything works by keyboard. [b]ctrl+p[/b] opens the command palette: every action by name.\n"
    "[b]g[/b] opens the glossary: what URGENT, POS, the probability and the threshold mean.\n"
    "Urgent rows are studies flagged with [b]![/b] and positive findings; [b]u[/b] shows only them."
)
TABLE_KEYS = (
    "[b]↑ ↓ pgup pgdn home end[/b] move · [b]enter[/b] open the result\n"
    "  In the search box: [b]↓[/b], [b]enter[/b] or [b]esc[/b] go back to the list"
)


KEY_NAMES = {
    "question_mark": "?",
    "slash": "/",
    "delete": "del",
    "escape": "esc",
    "backspace": "bksp",
    "exclamation_mark": "!",
}


def key_name(key: str) -> str:
    """A key as printed on it ("!", not Textual's "exclamation_mark")."""
    return KEY_NAMES.get(key.strip(), key.strip())


def key_lines(bindings: list[BindingType]) -> list[str]:
    lines = []
    for binding in bindings:
        if not isinstance(binding, Binding) or not binding.description:
            continue
        keys = " / ".join(key_name(key) for key in binding.key.split(","))
        extra = f" [dim]({binding.tooltip})[/dim]" if binding.tooltip else ""
        lines.append(f"  [b]{keys:<14}[/b] {binding.description}{extra}")
    return lines


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,f1,q", "close", "Close")]

    def __init__(self, sections: list[tuple[str, list[BindingType]]]) -> None:
        super().__init__()
        self._sections = sections

    def compose(self) -> ComposeResult:
        lines = [INTRO, ""]
        for title, bindings in self._sections:
            lines.append(f"[b reverse] {title} [/]")
            if title == "Worklist":
                lines.append(f"  {TABLE_KEYS}")
            lines.extend(key_lines(bindings))
            lines.append("")
        with Vertical(classes="dialog help"):
            yield Static("Keys", classes="dialog-title")
            with VerticalScroll(id="help-body"):
                yield Static("\n".join(lines).rstrip())
            yield Static("[b]esc[/b] close", classes="dialog-keys")

    def on_mount(self) -> None:
        self.query_one("#help-body").focus()

    def action_close(self) -> None:
        self.dismiss(None)
