"""The actions on one worklist row, shared by the worklist and the result screen.

Flag urgent (`!`), note, mark seen (and the specialist's reply read), re-run with another model,
delete one result or the whole study (only after `r` or `s` in a dialog that names the row).
Each ends in `EdgeScreen.perform`, so the store is written from a thread worker.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual import work
from textual.binding import Binding

from edge.errors import EdgeError
from edge.store import WorklistItem
from edge.tui import actions
from edge.tui.data import STATE_LABELS, display_name, identity_lines, installed_models
from edge.tui.screens.base import ActionFinished, EdgeScreen
from edge.tui.screens.dialogs import DeleteDialog, ModelDialog, NoteDialog

ITEM_BINDINGS = [
    Binding("exclamation_mark", "toggle_urgent", "Flag", tooltip="flag the study urgent; again: unflag"),
    Binding("n", "note", "Note"),
    Binding("m", "mark_seen", "Seen", tooltip="mark the result and its reply seen"),
    Binding("r", "rerun", "Re-run"),
    Binding("D,delete", "delete", "Delete", tooltip="this result only, or the whole study"),
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

        self.app.push_screen(ModelDialog(models, item.model_name, item.modality), chosen)

    def action_delete(self) -> None:
        # The row is taken now, when the key is pressed: what the dialog names and what `r`/`s`
        # delete is this row, whatever a refresh or a search does to the list meanwhile.
        item = self._item_or_say()
        if item is not None:
            self._prepare_delete(item)

    @work(thread=True, group="dialog")
    def _prepare_delete(self, item: WorklistItem) -> None:
        try:
            study = actions.study_contents(self.context, item.study_id)
            job = actions.job_contents(self.context, item.job_id)
        except EdgeError as error:
            self.post_message(ActionFinished(actions.refusal_sentence(error), ok=False))
            return
        self.app.call_from_thread(self._confirm_delete, item, study, job)

    def _confirm_delete(self, item: WorklistItem, study: dict[str, int], job: dict[str, Any]) -> None:
        if study["running"]:
            self.notify(
                "the study is being analysed right now: delete it when the job ends", severity="error"
            )
            return
        body = delete_question(item, study, job)
        result_allowed = bool(job["other_jobs"])

        def confirmed(choice: str | None) -> None:
            target = self.screen_for_delete() if choice else self
            if choice == "result":
                target.perform(actions.delete_result, self.context, item.job_id)
            elif choice == "study":
                target.perform(actions.delete_study, self.context, item.study_id)
            else:
                self.notify("nothing deleted", timeout=3)

        title = f"Delete {display_name(item)}?"
        self.app.push_screen(DeleteDialog(title, body, result_allowed=result_allowed), confirmed)


def delete_question(item: WorklistItem, study: dict[str, int], job: dict[str, Any]) -> str:
    """The confirmation's text: the row as the technician sees it, then what each key removes."""
    outcome = item.finding or item.error_code or STATE_LABELS.get(item.state, item.state)
    lines = [f"This row: [b]{escape(item.model_name)}[/b] → {escape(str(outcome))}"]
    lines += [escape(line) for line in identity_lines(item)]
    lines.append("")
    if job["other_jobs"]:
        lines.append(
            f"[b]r[/b] this result only: the study, its image and its {job['other_jobs']} other "
            "row(s) stay (e.g. a result from the wrong model)"
        )
    else:
        lines.append("[dim]r: not offered, this is the study's only result[/dim]")
    lines.append(
        f"[b]s[/b] the whole study: {study['images']} image(s), {study['results']} result(s) and "
        f"{study['notes']} note(s), with their files"
    )
    lines.append("This cannot be undone on this device. The audit trail records who deleted it.")
    return "\n".join(lines)
