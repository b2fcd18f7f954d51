"""The actions on one worklist row, shared by the worklist and the result screen.

Flag urgent, note, mark seen, re-run with another model, delete (only after `y` in a dialog that
says what goes). Each ends in `EdgeScreen.perform`, so the store is written from a thread worker.
"""

from __future__ import annotations

from typing import Any

from textual import work
from textual.binding import Binding

from edge.errors import EdgeError
from edge.store import WorklistItem
from edge.tui import actions
from edge.tui.data import display_name, installed_models
from edge.tui.screens.base import ActionFinished, EdgeScreen
from edge.tui.screens.dialogs import ConfirmDialog, ModelDialog, NoteDialog

ITEM_BINDINGS = [
    Binding("u", "toggle_urgent", "Urgent"),
    Binding("n", "note", "Note"),
    Binding("m", "mark_seen", "Seen"),
    Binding("r", "rerun", "Re-run"),
    Binding("delete,D", "delete", "Delete", show=False),
]


class ItemActions(EdgeScreen):
    """A screen with a current worklist row (`current_item`) the technician acts on."""

    def current_item(self) -> WorklistItem | None:
        """The row the actions apply to; None when there is none (an empty worklist)."""
        return None

    def screen_for_delete(self) -> EdgeScreen:
        """The screen that runs the deletion and reports it: this one, or (for a screen that shows
        only the deleted study) the one it returns to."""
        return self

    def _item_or_say(self) -> WorklistItem | None:
        item = self.current_item()
        if item is None:
            self.notify("no study selected", severity="warning")
        return item

    def action_toggle_urgent(self) -> None:
        item = self._item_or_say()
        if item is not None:
            self.perform(actions.set_urgent, self.context, item.study_id, not item.urgent)

    def action_note(self) -> None:
        item = self._item_or_say()
        if item is None:
            return

        def save(text: str | None) -> None:
            if text:
                self.perform(actions.add_note, self.context, item.study_id, text, item.result_id)

        self.app.push_screen(NoteDialog(display_name(item)), save)

    def action_mark_seen(self) -> None:
        item = self._item_or_say()
        if item is None:
            return
        if not item.result_id:
            self.notify("no result to mark yet (the job is not done)", severity="warning")
            return
        self.perform(actions.mark_seen, self.context, item.result_id)

    def action_rerun(self) -> None:
        item = self._item_or_say()
        if item is not None:
            self._choose_model(item)

    @work(thread=True, group="dialog")
    def _choose_model(self, item: WorklistItem) -> None:
        models = installed_models(self.context)  # reads every manifest: off the UI thread
        self.app.call_from_thread(self._ask_model, item, models)

    def _ask_model(self, item: WorklistItem, models: list[dict[str, Any]]) -> None:
        def chosen(model: str | None) -> None:
            if model:
                self.notify(f"re-running with {model}…", timeout=3)
                self.perform(actions.rerun, self.context, item.image_id, model)

        self.app.push_screen(ModelDialog(models, item.model_name), chosen)

    def action_delete(self) -> None:
        item = self._item_or_say()
        if item is not None:
            self._prepare_delete(item)

    @work(thread=True, group="dialog")
    def _prepare_delete(self, item: WorklistItem) -> None:
        try:
            contents = actions.study_contents(self.context, item.study_id)
        except EdgeError as error:
            self.post_message(ActionFinished(error.one_line(), ok=False))
            return
        self.app.call_from_thread(self._confirm_delete, item, contents)

    def _confirm_delete(self, item: WorklistItem, contents: dict[str, int]) -> None:
        if contents["running"]:
            self.notify(
                "the study is being analysed right now: delete it when the job ends", severity="error"
            )
            return
        body = (
            f"{display_name(item)}: {contents['images']} image(s), {contents['results']} result(s) and "
            f"{contents['notes']} note(s) will be removed from this device, with their files.\n"
            "This cannot be undone. The audit trail records who deleted it."
        )

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.screen_for_delete().perform(actions.delete_study, self.context, item.study_id)
            else:
                self.notify("nothing deleted", timeout=3)

        self.app.push_screen(ConfirmDialog("Delete this study?", body), confirmed)
