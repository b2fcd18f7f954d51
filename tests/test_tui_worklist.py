"""The worklist after issue 20: urgent means flagged or positive, the specialist's reply is seen,
deletion takes exactly the row the technician chose (one result or the whole study), the search
box gives the keys back, and every refusal says what to do next."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.hints import NEXT_STEPS, next_step
from edge.store import Store
from edge.tui import actions
from edge.tui.context import TuiContext
from edge.tui.data import display_name, identity_lines, middle_ellipsis, review_words
from edge.tui.screens.device import services
from edge.tui.screens.dialogs import DeleteDialog
from edge.tui.screens.glossary import GlossaryScreen
from edge.tui.screens.result import ResultScreen
from edge.tui.screens.worklist import WorklistScreen, describe, layout, review_cell
from tests.tui_fixtures import (
    Filled,
    add_second_result,
    build_app,
    copy_of_template,
    drive,
    settle,
)


@pytest.fixture
def filled(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> tuple[Settings, Filled]:
    return copy_of_template(tmp_path_factory, tmp_path)


def screen_of(app: Any) -> WorklistScreen:
    assert isinstance(app.screen, WorklistScreen)
    return app.screen


def highlighted(app: Any) -> str:
    item = screen_of(app).current_item()
    assert item is not None
    return item.job_id


# ---------------------------------------------------------------------- deletion


@pytest.mark.security
def test_search_then_delete_removes_exactly_the_highlighted_row(filled: tuple[Settings, Filled]) -> None:
    """Issue 20: a search-then-delete removed another study. Down leaves the search for the
    list, letters there are keys (D opens the dialog, it is not typed), and what goes is the row
    under the cursor when D was pressed, named as the technician sees it."""
    settings, _ = filled
    app = build_app(settings)
    before: dict[str, int] = {}

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        screen = screen_of(pilot.app)
        before["rows"] = len(screen.rows)
        await pilot.press("slash", *"sample")
        await settle(pilot)
        search = screen.query_one("#search", Input)
        assert search.has_focus
        names = [display_name(row) for row in screen.rows]
        assert len(names) >= 2
        assert all("sample" in name.lower() for name in names)
        await pilot.press("down")  # the list takes the focus; the cursor stays on the first row
        assert screen.query_one(DataTable).has_focus
        await pilot.press("down")  # now the second matching row
        target = screen.rows[1]
        assert highlighted(pilot.app) == target.job_id
        await pilot.press("D")
        await settle(pilot)
        assert search.value == "sample"  # the D was a key, not a letter of the search
        dialog = pilot.app.screen
        assert isinstance(dialog, DeleteDialog)
        body = str(dialog.query_one(".dialog-body", Static).render())
        assert display_name(target) in str(dialog.query_one(".dialog-title", Static).render())
        assert target.model_name in body
        await pilot.press("s")
        await settle(pilot)
        assert said[-1].startswith("study deleted")
        assert target.job_id not in {row.job_id for row in screen.rows}

    drive(app, scenario)
    with Store(settings.data_dir) as store:
        left = store.technician.worklist()
        assert len(left) == before["rows"] - 1
        audit = list(store.audit_rows("study.deleted"))
        assert len(audit) == 1
        gone = audit[0]["subject_id"]
        assert all(row.study_id != gone for row in left)


def test_one_wrong_model_result_is_deleted_and_the_study_stays(filled: tuple[Settings, Filled]) -> None:
    settings, ids = filled
    chest_job = add_second_result(settings, ids)
    with Store(settings.data_dir) as store:
        chest = store.technician.worklist_item(chest_job)
        assert chest is not None
        assert chest.result_id is not None
        result = store.result(chest.result_id)
        assert result is not None
        assert result.heatmap_path
        heatmap = settings.data_dir / result.heatmap_path
        image = store.image_file(chest.image_id)
    assert heatmap.is_file()
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        screen = screen_of(pilot.app)
        table = screen.query_one(DataTable)
        table.move_cursor(row=table.get_row_index(ids["refused"]["job_id"]))
        await pilot.pause()
        await pilot.press("D")
        await settle(pilot)
        dialog = pilot.app.screen
        assert isinstance(dialog, DeleteDialog)
        body = str(dialog.query_one(".dialog-body", Static).render())
        assert "us-breast" in body
        assert "MODALITY_NOT_ACCEPTED" in body
        assert "this result only" in body
        assert "--" not in body
        await pilot.press("r")
        await settle(pilot)
        assert said[-1].startswith("result deleted")
        jobs = {row.job_id for row in screen.rows}
        assert ids["refused"]["job_id"] not in jobs
        assert chest_job in jobs
        # The study's last row: only the whole study can go.
        table.move_cursor(row=table.get_row_index(chest_job))
        await pilot.pause()
        await pilot.press("D")
        await settle(pilot)
        await pilot.press("r")
        await settle(pilot)
        assert "only result" in said[-1]
        await pilot.press("escape")
        await settle(pilot)
        assert said[-1] == "nothing deleted"

    drive(app, scenario)
    assert image.is_file()  # the image stays with the study
    assert heatmap.is_file()  # the chest result was not touched
    with Store(settings.data_dir) as store:
        assert store.technician.worklist_item(ids["refused"]["job_id"]) is None
        assert store.technician.worklist_item(chest_job) is not None
        audit = list(store.audit_rows("result.deleted"))
        assert [(a["actor"], a["subject_id"]) for a in audit] == [("tui:test", ids["refused"]["job_id"])]


def test_delete_result_removes_its_files_and_refuses_the_last_or_running_row(
    filled: tuple[Settings, Filled],
) -> None:
    settings, ids = filled
    chest_job = add_second_result(settings, ids)
    with Store(settings.data_dir) as store:
        chest = store.technician.worklist_item(chest_job)
        assert chest is not None
        assert chest.result_id is not None
        store.technician.add_note(chest.study_id, "wrong model first", "tui:ana", result_id=chest.result_id)
        stored = store.result(chest.result_id)
        assert stored is not None
        heatmap = settings.data_dir / str(stored.heatmap_path)
        removed = store.technician.delete_result(chest_job, "tui:ana")
        assert removed["results"] == 1
        assert removed["files"] == 2  # its heatmap PNG and its evidence grid
        assert not heatmap.exists()
        assert store.result(chest.result_id) is None
        notes = store.technician.notes_for(chest.study_id)
        assert [(n["phi_text"], n["result_id"]) for n in notes] == [("wrong model first", None)]
        with pytest.raises(EdgeError) as last:
            store.technician.delete_result(ids["refused"]["job_id"], "tui:ana")
        assert "only result" in last.value.message
        assert last.value.code is Code.DELETE_REFUSED  # a refusal, not a disk failure
        running = store.db.execute(
            "SELECT id FROM jobs WHERE state = 'running' AND image_id = ?", [ids["running"]["image_id"]]
        ).fetchone()
        store.technician.requeue_with_model(ids["running"]["image_id"], "us-breast", "tui:ana")
        with pytest.raises(EdgeError) as busy:
            store.technician.delete_result(str(running["id"]), "tui:ana")
        assert "right now" in busy.value.message
        assert busy.value.code is Code.DELETE_REFUSED
        with pytest.raises(EdgeError) as missing:
            store.technician.delete_result("no-such-job", "tui:ana")
        assert missing.value.code is Code.INPUT_NOT_FOUND


def test_a_placeholder_patient_name_is_never_what_names_a_study(filled: tuple[Settings, Filled]) -> None:
    settings, ids = filled
    with Store(settings.data_dir) as store:
        dicom = store.technician.worklist_item(ids["dicom"]["job_id"])
    assert dicom is not None
    for placeholder in ("--", "^^^^", " ", None):
        unnamed = replace(dicom, phi_patient_name=placeholder)
        assert display_name(unnamed) not in ("--", "", "-")
        assert "--" not in "\n".join(identity_lines(unnamed))
    assert display_name(replace(dicom, phi_patient_name="--", phi_accession="ACC-77")) == "accession ACC-77"
    nameless = replace(dicom, phi_patient_name=None, phi_accession=None, phi_patient_id=None)
    assert display_name(nameless) == "demo-07.dcm"


# ---------------------------------------------------------------------- urgent, review, layout


def test_flag_and_urgent_filter_are_two_keys_and_the_review_shows(filled: tuple[Settings, Filled]) -> None:
    settings, ids = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        screen = screen_of(pilot.app)
        everything = len(screen.rows)
        first = highlighted(pilot.app)
        await pilot.press("u")  # a filter: nothing is flagged
        await settle(pilot)
        assert not said
        assert 0 < len(screen.rows) < everything
        await pilot.press("u")
        await settle(pilot)
        assert len(screen.rows) == everything
        assert highlighted(pilot.app) == first
        footer = " ".join(
            binding.description for binding in screen.BINDINGS if hasattr(binding, "description")
        )
        assert "Urgent only" in footer
        assert "Flag" in footer
        table = screen.query_one(DataTable)
        table.move_cursor(row=table.get_row_index(ids["pneumonia_png"]["job_id"]))
        await pilot.pause()
        detail = str(screen.query_one("#row-detail", Static).render())
        assert "new reply" in detail
        assert "specialist: agree" in detail
        row = table.get_row(ids["pneumonia_png"]["job_id"])
        assert "● agree" in str(row[-1])
        await pilot.press("m")  # marks the result and its reply seen
        await settle(pilot)
        assert said[-1] == "marked seen"
        assert not screen.current_item().new_reply  # type: ignore[union-attr]
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(pilot.app.screen, GlossaryScreen)
        await pilot.press("escape")

    drive(app, scenario)


def test_a_reply_that_comes_after_the_seen_mark_is_new_again(filled: tuple[Settings, Filled]) -> None:
    settings, ids = filled
    with Store(settings.data_dir) as store:
        result_id = ids["normal_png"]["result_id"]  # marked seen by the fixture at 09:10
        assert not (store.technician.worklist_item(ids["normal_png"]["job_id"]) or ids).new_reply  # type: ignore[union-attr]
        with store.writer.transaction("a review"):
            store.db.execute(
                "INSERT INTO reviews (id, result_id, verdict, finding, note, reviewer_role, reviewed_at,"
                " received_at) VALUES ('r2', ?, 'disagree', 'pneumonia', 'left base', 'radiologist',"
                " '2025-03-14T09:40:00.000Z', '2099-01-01T00:00:00.000Z')",
                [result_id],
            )
        item = store.technician.worklist_item(ids["normal_png"]["job_id"])
        assert item is not None
        assert item.new_reply
        assert (item.review_verdict, item.review_finding) == ("disagree", "pneumonia")
        assert review_words(item) == "disagree: pneumonia"
        assert review_cell(item).plain == "● disagree: pneumonia"
        assert review_cell(item, 12).plain == "● disagree"  # 80 columns: the verdict whole
        assert store.technician.mark_seen(result_id, "tui:ana")  # a new reply: marked again
        # (the stored review time is in the future, so it stays newer than the mark)


def test_80_columns_keep_codes_whole_and_120_columns_add_the_state(filled: tuple[Settings, Filled]) -> None:
    settings, _ = filled
    with Store(settings.data_dir) as store:
        rows = store.technician.worklist(positive_counts_as_urgent=True)
    context = TuiContext(settings)
    for width in (80, 120):
        columns = {key: size for key, _, size in layout(width, rows, context.when)}
        assert sum(columns.values()) + 1 + 2 * len(columns) <= width
        assert columns["finding"] >= len("MODALITY_NOT_ACCEPTED")
        assert columns["name"] >= 14
        assert ("state" in columns) == (width == 120)
    assert middle_ellipsis("demo-study-2025-03-14-0007.dcm", 14) == "demo-st…07.dcm"
    assert len(middle_ellipsis("demo-study-2025-03-14-0007.dcm", 14)) == 14
    assert middle_ellipsis("short.png", 14) == "short.png"


def test_the_result_screen_puts_the_reply_first_and_explains_the_numbers(
    filled: tuple[Settings, Filled],
) -> None:
    settings, ids = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        screen = screen_of(pilot.app)
        table = screen.query_one(DataTable)
        table.move_cursor(row=table.get_row_index(ids["pneumonia_png"]["job_id"]))
        await pilot.press("enter")
        await settle(pilot)
        result = pilot.app.screen
        assert isinstance(result, ResultScreen)
        sections = [widget.id for widget in result.query(".section") if widget.display]
        assert sections[0] == "section-review"
        review = str(result.query_one("#section-review", Static).render())
        for words in ("AGREE", "pneumonia", "radiologist", "2025-03-14 09:20", "Right lower lobe"):
            assert words in review
        finding = str(result.query_one("#section-finding", Static).render())
        assert "calibrated estimate" in finding
        assert "in 10 show pneumonia" in finding or "nearly all show pneumonia" in finding
        assert "Called pneumonia from 0.48 up" in finding
        assert "missed cases and false alarms" in finding
        await pilot.press("escape")
        await settle(pilot)
        table.move_cursor(row=table.get_row_index(ids["refused"]["job_id"]))
        await pilot.press("enter")
        await settle(pilot)
        refused = str(pilot.app.screen.query_one("#section-finding", Static).render())
        assert f"Next: {next_step('MODALITY_NOT_ACCEPTED')}" in refused

    drive(app, scenario, size=(120, 40))


# ---------------------------------------------------------------------- what to do next


def test_every_refusal_code_has_a_next_step() -> None:
    assert set(NEXT_STEPS) == set(Code)
    assert all(step and not step.endswith(".") for step in NEXT_STEPS.values())
    assert next_step("NOT_A_CODE") is None
    assert next_step(None) is None
    assert "edge-agent" in next_step(Code.STORE_IN_USE)  # type: ignore[operator]


def test_hints_name_the_real_units_and_commands(filled: tuple[Settings, Filled]) -> None:
    stopped = services({"agent": {"running": False, "reason": "no agent file"}}, str)
    assert "systemctl start edge-agent" in stopped
    assert "systemctl start edge " not in stopped + " "
    with Store(filled[0].data_dir) as store:
        refused = store.technician.worklist_item(filled[1]["refused"]["job_id"])
    assert refused is not None
    assert "Next: re-run it with a model that accepts it" in describe(refused, "today")
    sentence = actions.refusal_sentence(EdgeError(Code.DISK_FULL, "no space left"))
    assert sentence.startswith("DISK_FULL: no space left\nNext: free space")


def test_home_and_end_go_to_the_first_and_the_last_row(filled: tuple[Settings, Filled]) -> None:
    """The help says home and end move; DataTable's own scroll sideways, and the Linux console
    and PuTTY send ctrl+Home as Home, so there was no way to either end (a TUI audit)."""
    settings, _ = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        rows = screen_of(pilot.app).rows
        assert len(rows) > 2
        await pilot.press("end")
        await settle(pilot)
        assert highlighted(pilot.app) == rows[-1].job_id
        await pilot.press("home")
        await settle(pilot)
        assert highlighted(pilot.app) == rows[0].job_id

    drive(app, scenario)


def test_the_palette_names_keys_as_printed_on_them(filled: tuple[Settings, Filled]) -> None:
    settings, _ = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        helps = {command.title: command.help for command in pilot.app.get_system_commands(pilot.app.screen)}
        assert helps["Flag"] == "key ! on this screen"  # not "exclamation_mark"
        assert helps["Search"] == "key / on this screen"

    drive(app, scenario)


def test_a_result_the_hub_has_not_got_says_not_sent_not_pending(filled: tuple[Settings, Filled]) -> None:
    """ "pending" was said of a result waiting at the hub for a specialist and of one still on
    this device behind a dead link alike (a TUI audit): only the first can be read by anyone."""
    settings, ids = filled
    job_id, result_id = ids["normal_png"]["job_id"], ids["normal_png"]["result_id"]
    with Store(settings.data_dir) as store:
        item = store.technician.worklist_item(job_id)
        assert item is not None
        assert (item.at_hub, review_words(item)) == (False, "not sent")
        assert "not sent" in describe(item, "08:00")
        with store.writer.transaction("the hub acknowledged it"):
            store.db.execute(
                "UPDATE outbox SET sent_at = '2025-03-14T10:00:00Z', acked_at = '2025-03-14T10:00:01Z'"
                " WHERE kind = 'result' AND ref_id = ?",
                [result_id],
            )
        item = store.technician.worklist_item(job_id)
        assert item is not None
        assert (item.at_hub, review_words(item)) == (True, "pending")
        assert "pending (at the hub, no reply yet)" in describe(item, "08:00")


def test_a_refusal_that_was_also_blank_says_to_repeat_the_film() -> None:
    """The next step followed the first refusal code alone: out of scope said "check the image
    and the model" of a film that was also blank and blurred, which is a film to repeat."""
    from edge.hints import refusal_next_step

    message = "this does not look like a frontal paediatric chest X-ray (also: MOSTLY_BLANK, BLURRED)"
    step = refusal_next_step("OUT_OF_SCOPE", message)
    assert step is not None
    assert step.startswith(str(next_step("OUT_OF_SCOPE")))
    assert f"as it was also MOSTLY_BLANK, BLURRED: {next_step('MOSTLY_BLANK')}" in step
    assert refusal_next_step("BLURRED", "blurred") == next_step("BLURRED")
    assert refusal_next_step("OUT_OF_SCOPE", "(also: NOT_A_CODE)") == next_step("OUT_OF_SCOPE")
