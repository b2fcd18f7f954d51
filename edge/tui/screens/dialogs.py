"""Small modal questions: confirm a deletion, type a note, pick a model. Keyboard only."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from edge.store.technician import MAX_NOTE_CHARS


class ConfirmDialog(ModalScreen[bool]):
    """A yes/no question where only `y` says yes (Enter does not: a deletion must be meant)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, body: str, yes: str = "delete") -> None:
        super().__init__()
        self._title, self._body, self._yes = title, body, yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog danger"):
            yield Static(self._title, classes="dialog-title")
            yield Static(self._body, classes="dialog-body")
            yield Static(f"[b]y[/b] {self._yes}    [b]n[/b] / [b]esc[/b] keep it", classes="dialog-keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class DeleteDialog(ModalScreen[str | None]):
    """Delete one row's result (`r`: a wrong model's, the study stays) or the whole study (`s`).
    Answers "result", "study" or None. No key defaults: Enter does nothing here."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "answer('result')", "This result only"),
        Binding("s", "answer('study')", "Whole study"),
        Binding("n,escape", "answer(None)", "Keep"),
    ]

    def __init__(self, title: str, body: str, *, result_allowed: bool) -> None:
        super().__init__()
        self._title, self._body, self._result_allowed = title, body, result_allowed

    def compose(self) -> ComposeResult:
        keys = "[b]s[/b] delete the whole study    [b]n[/b] / [b]esc[/b] keep it"
        if self._result_allowed:
            keys = "[b]r[/b] delete this result only    " + keys
        with Vertical(classes="dialog danger"):
            yield Static(self._title, classes="dialog-title")
            yield Static(self._body, classes="dialog-body")
            yield Static(keys, classes="dialog-keys")

    def action_answer(self, choice: str | None) -> None:
        if choice == "result" and not self._result_allowed:
            self.notify("this is the study's only result: s deletes the study", severity="warning")
            return
        self.dismiss(choice)


class NoteDialog(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, about: str) -> None:
        super().__init__()
        self._about = about

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(f"Note on {self._about}", classes="dialog-title")
            yield Input(placeholder="what the next person should know", max_length=MAX_NOTE_CHARS)
            yield Static(
                "[b]enter[/b] save    [b]esc[/b] cancel    (stays on this device)", classes="dialog-keys"
            )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ModelDialog(ModalScreen[str | None]):
    """Choose the model to run the image through again."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, models: list[dict[str, Any]], current: str, modality: str | None = None) -> None:
        super().__init__()
        self._models, self._current, self._modality = models, current, modality

    def _accepts(self, model: dict[str, Any]) -> bool:
        """Whether the model takes the image's modality (any, when either is not known)."""
        return not self._modality or not model["modalities"] or self._modality in model["modalities"]

    def compose(self) -> ComposeResult:
        options = []
        for model in self._models:
            if "error" in model:
                options.append(Option(f"{model['name']}: {model['error']}", id=model["name"], disabled=True))
                continue
            accepts = "/".join(model["modalities"]) or "any"
            mark = " (this result)" if model["name"] == self._current else ""
            if not self._accepts(model):
                accepts += f", not {self._modality}"
            options.append(
                Option(
                    f"{model['name']} {model['version']}{mark} · {accepts} · {model['title']}",
                    id=model["name"],
                )
            )
        with Vertical(classes="dialog"):
            yield Static("Re-run with which model?", classes="dialog-title")
            yield OptionList(*options)
            yield Static("[b]enter[/b] run    [b]esc[/b] cancel", classes="dialog-keys")

    def on_mount(self) -> None:
        # "Re-run with another model": the cursor starts on the first other one that can load and
        # takes the image's modality; with none, on this result's own (Enter then changes
        # nothing), not on one that would refuse it (a chest film's started on us-breast).
        loadable = [index for index, model in enumerate(self._models) if "error" not in model]
        fitting = [
            i for i in loadable if self._models[i]["name"] != self._current and self._accepts(self._models[i])
        ]
        own = [i for i in loadable if self._models[i]["name"] == self._current]
        options = self.query_one(OptionList)
        options.highlighted = (fitting or own or loadable or [0])[0]
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
