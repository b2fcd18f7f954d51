"""The technicians' TUI driven by keys (Textual's Pilot) over a store the real pipeline filled."""

from __future__ import annotations

import html
import json
import os
import re
import time
from dataclasses import replace
from datetime import timezone
from pathlib import Path
from typing import Any

import pytest
from textual.command import CommandList, CommandPalette
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, OptionList, Static

from edge.config import Settings
from edge.operations.health import agent_file, agent_lock, snapshot
from edge.operations.host import host_facts
from edge.processes import InstanceLock
from edge.store import Store
from edge.tui.app import EdgeApp, create_app, run_tui
from edge.tui.context import TuiContext
from edge.tui.data import ResultDetail, is_urgent, new_disagreement, sync_short, sync_view
from edge.tui.screens.dialogs import DeleteDialog, ModelDialog, NoteDialog
from edge.tui.screens.help import HelpScreen
from edge.tui.screens.live import LiveModel, LiveScreen, status_text
from edge.tui.screens.result import ResultScreen, sections
from edge.tui.screens.worklist import BORDERLINE_MARK, WorklistScreen, badge, describe, finding_cell
from edge.tui.widgets.picture import Picture
from edge.tui.widgets.score_trace import ScoreTrace
from edge.video.live import LiveScore
from tests.tui_fixtures import (
    CLIP,
    CLIP_MODEL,
    NOW,
    OCULAR,
    Filled,
    build_app,
    copy_of_template,
    drive,
    fixed_health,
    settle,
)


@pytest.fixture
def filled(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> tuple[Settings, Filled]:
    return copy_of_template(tmp_path_factory, tmp_path)


def text_of(app: EdgeApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def worklist(app: EdgeApp) -> WorklistScreen:
    assert isinstance(app.screen, WorklistScreen)
    return app.screen


async def go_to_row(pilot: Pilot[Any], job_id: str) -> None:
    table = worklist(pilot.app).query_one(DataTable)  # type: ignore[arg-type]
    table.move_cursor(row=table.get_row_index(job_id))
    await pilot.pause()


async def open_row(pilot: Pilot[Any], job_id: str) -> None:
    """Open the result of this worklist row, and let its screen load."""
    await go_to_row(pilot, job_id)
    await pilot.press("enter")
    await settle(pilot)


async def choose_model(pilot: Pilot[Any], name: str) -> None:
    options = pilot.app.screen.query_one(OptionList)
    options.highlighted = next(
        index for index in range(options.option_count) if options.get_option_at_index(index).id == name
    )
    await pilot.press("enter")
    await settle(pilot)


def store_of(settings: Settings) -> Store:
    return Store(settings.data_dir)


# ---------------------------------------------------------------------- worklist


def test_worklist_shows_every_state_urgent_first_and_the_refusal_reason(
    filled: tuple[Settings, Filled],
) -> None:
    settings, ids = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        screen = worklist(pilot.app)  # type: ignore[arg-type]
        rows = screen.rows
        assert rows[0].job_id == ids["dicom"]["job_id"]  # flagged urgent: first
        assert [row.urgent for row in rows] == sorted((row.urgent for row in rows), reverse=True)
        assert {row.state for row in rows} == {"done", "queued", "running", "refused"}
        # Then the specialists' disagreements not yet seen, then the positive findings (urgent
        # too), then the rest; each group newest first.
        urgency = [is_urgent(row) for row in rows]
        assert urgency == sorted(urgency, reverse=True)
        replies = [row for row in rows[1:] if new_disagreement(row)]
        positives = [row for row in rows[1:] if is_urgent(row) and not new_disagreement(row)]
        assert positives
        assert all(row.positive for row in positives)
        assert rows[1 : 1 + len(replies)] == replies
        for group in (replies, positives, [row for row in rows if not is_urgent(row)]):
            times = [row.queued_at for row in group]
            assert times == sorted(times, reverse=True)
        assert "sorted: flagged, disagreed, positive, newest" in text_of(pilot.app, "#filter-state")  # type: ignore[arg-type]
        assert "pneumonia" in text_of(pilot.app, "#row-detail")  # type: ignore[arg-type]
        await go_to_row(pilot, ids["refused"]["job_id"])
        detail = text_of(pilot.app, "#row-detail")  # type: ignore[arg-type]
        assert "refused MODALITY_NOT_ACCEPTED: us-breast accepts US, not CR" in detail

    drive(app, scenario)


def test_search_and_filters_narrow_the_worklist(filled: tuple[Settings, Filled]) -> None:
    settings, ids = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        screen = worklist(pilot.app)  # type: ignore[arg-type]
        everything = len(screen.rows)
        await pilot.press("slash")
        assert screen.query_one("#search", Input).has_focus
        await pilot.press(*"synthetic")
        await settle(pilot)
        assert {row.phi_patient_name for row in screen.rows} == {"Sample^Synthetic"}
        await pilot.press("escape", "f")  # back to the table; state filter: new
        await settle(pilot)
        assert [row.state for row in screen.rows] == ["queued"]
        assert "state: new" in text_of(pilot.app, "#filter-state")  # type: ignore[arg-type]
        await pilot.press("x", "u")  # clear, then urgent only: flagged studies and positive findings
        await settle(pilot)
        assert screen.rows[0].job_id == ids["dicom"]["job_id"]
        assert ids["pneumonia_png"]["job_id"] in {row.job_id for row in screen.rows}
        assert all(is_urgent(row) for row in screen.rows)
        assert "URGENT ONLY" in text_of(pilot.app, "#filter-state")  # type: ignore[arg-type]
        await pilot.press("x", "V")  # unseen results only
        await settle(pilot)
        assert screen.rows
        assert all(row.result_id and not row.seen_at for row in screen.rows)
        await pilot.press("x", "f", "f", "f", "f")  # state: refused
        await settle(pilot)
        assert [row.job_id for row in screen.rows] == [ids["refused"]["job_id"]]
        await pilot.press("x")
        await settle(pilot)
        assert len(screen.rows) == everything

    drive(app, scenario)


# ---------------------------------------------------------------------- result


def test_result_screen_shows_image_heatmap_numbers_review_and_notes(filled: tuple[Settings, Filled]) -> None:
    settings, ids = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        await open_row(pilot, ids["pneumonia_png"]["job_id"])
        screen = pilot.app.screen
        assert isinstance(screen, ResultScreen)
        finding = text_of(pilot.app, "#section-finding")  # type: ignore[arg-type]
        assert "PNEUMONIA" in finding
        assert re.search(r"P\(pneumonia\) = (0\.9\d\d|1\.000)", finding), finding
        assert "normal" in text_of(pilot.app, "#section-probabilities")  # type: ignore[arg-type]
        model = text_of(pilot.app, "#section-model")  # type: ignore[arg-type]
        assert "cxr-pneumonia 1.2.0" in model
        assert "fp32 · onnxruntime/fp32" in model
        assert "operating point balanced" in model
        assert "sharpness" in text_of(pilot.app, "#section-quality")  # type: ignore[arg-type]
        scope = text_of(pilot.app, "#section-applicability")  # type: ignore[arg-type]
        assert "BORDERLINE p = 0.03" in scope
        assert "near the edge of what the model was trained on" in scope
        review = text_of(pilot.app, "#section-review")  # type: ignore[arg-type]
        assert "AGREE" in review
        assert "their finding: pneumonia" in review
        assert "radiologist" in review
        assert "Right lower lobe consolidation" in review
        picture = screen.query_one(Picture)
        assert picture.query_one(".picture-image").image is not None  # type: ignore[attr-defined]
        assert "heatmap overlay" in str(picture.query_one(".picture-caption", Static).render())
        await pilot.press("t")
        await settle(pilot)
        assert "image (t: heatmap)" in str(picture.query_one(".picture-caption", Static).render())
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(pilot.app.screen, WorklistScreen)
        await open_row(pilot, ids["dicom"]["job_id"])
        notes = text_of(pilot.app, "#section-notes")  # type: ignore[arg-type]
        assert "mother asks for a call" in notes
        assert "tui:amina" in notes
        assert "URGENT" in text_of(pilot.app, "#section-finding")  # type: ignore[arg-type]
        assert "SYNTH-0003" in text_of(pilot.app, "#section-study")  # type: ignore[arg-type]
        scope = text_of(pilot.app, "#section-applicability")  # type: ignore[arg-type]
        assert "IN SCOPE" in scope  # the shipped model's own check of its own sample

    drive(app, scenario)


def test_the_worklist_marks_borderline_superseded_and_out_of_scope_rows(
    filled: tuple[Settings, Filled],
) -> None:
    settings, ids = filled
    with store_of(settings) as store:
        borderline = store.technician.worklist_item(ids["pneumonia_png"]["job_id"])
        refused = store.technician.worklist_item(ids["refused"]["job_id"])
    assert borderline is not None
    assert refused is not None
    assert (borderline.applicability_state, borderline.applicability_p) == ("borderline", 0.0312)
    assert badge(borderline).plain == f"POS{BORDERLINE_MARK}"
    assert "borderline (p = 0.03)" in describe(borderline, "today")
    assert badge(replace(borderline, finding="normal")).plain == BORDERLINE_MARK
    old = replace(borderline, superseded=True)
    assert badge(old).plain == "OLD"
    assert "superseded" in describe(old, "today")
    assert "SUPERSEDED" in sections(ResultDetail(old), str)["finding"]
    sentence = "this does not look like a paediatric chest X-ray: check the model or the image"
    out = replace(refused, error_code="OUT_OF_SCOPE", error_message=sentence)
    assert finding_cell(out).plain == "OUT_OF_SCOPE"
    assert f"refused[/] OUT_OF_SCOPE: {sentence}" in describe(out, "today")
    assert sentence in sections(ResultDetail(out), str)["finding"]


def test_refused_and_clip_results_open_too(filled: tuple[Settings, Filled]) -> None:
    settings, ids = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        await open_row(pilot, ids["refused"]["job_id"])
        assert "REFUSED" in text_of(pilot.app, "#section-finding")  # type: ignore[arg-type]
        caption = pilot.app.screen.query_one(".picture-caption", Static).render()
        assert "no heatmap stored" in str(caption)  # the DICOM itself, decoded
        await pilot.press("escape")
        await open_row(pilot, ids["clip"]["job_id"])
        clip = text_of(pilot.app, "#section-clip")  # type: ignore[arg-type]
        assert "frames analysed" in clip

    drive(app, scenario)


# ---------------------------------------------------------------------- actions


def test_flag_urgent_note_and_mark_seen_write_through_the_store(filled: tuple[Settings, Filled]) -> None:
    settings, ids = filled
    app = build_app(settings)
    breast = ids["breast"]

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        screen = worklist(pilot.app)  # type: ignore[arg-type]
        await go_to_row(pilot, breast["job_id"])
        await pilot.press("exclamation_mark")
        await settle(pilot)
        assert said[-1].startswith("flagged urgent")
        assert screen.current_item().job_id == breast["job_id"]  # type: ignore[union-attr]
        # Both urgent now: the newer first.
        assert [row.job_id for row in screen.rows[:2]] == [breast["job_id"], ids["dicom"]["job_id"]]
        await pilot.press("n")
        await pilot.pause()
        dialog = pilot.app.screen
        assert isinstance(dialog, NoteDialog)
        dialog.query_one(Input).value = "Lump in the left breast, 2 cm; repeat in 6 weeks."
        await pilot.press("enter")
        await settle(pilot)
        assert said[-1] == "note added"
        await pilot.press("m")
        await settle(pilot)
        assert said[-1] == "marked seen"
        await pilot.press("m")
        await settle(pilot)
        assert said[-1] == "already marked seen"

    drive(app, scenario)
    with store_of(settings) as store:
        study = store.db.execute("SELECT urgent FROM studies WHERE id = ?", [breast["study_id"]]).fetchone()
        assert study["urgent"] == 1
        notes = store.technician.notes_for(breast["study_id"])
        assert [(n["phi_text"], n["author"], n["result_id"]) for n in notes] == [
            ("Lump in the left breast, 2 cm; repeat in 6 weeks.", "tui:test", breast["result_id"])
        ]
        seen = store.result(breast["result_id"])
        assert seen is not None
        assert seen.seen_by == "tui:test"
        actions = [(a["action"], a["actor"]) for a in store.audit_rows() if a["actor"] == "tui:test"]
        assert actions == [
            ("study.urgent", "tui:test"),
            ("note.added", "tui:test"),
            ("result.seen", "tui:test"),
        ]
        note_audit = next(store.audit_rows("note.added"))
        assert "Lump" not in note_audit["detail"]  # free text never goes into the audit trail


def test_rerun_with_another_model_is_analysed_here_when_no_agent_runs(
    filled: tuple[Settings, Filled],
) -> None:
    settings, ids = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        screen = worklist(pilot.app)  # type: ignore[arg-type]
        before = len(screen.rows)
        # The chest X-ray us-breast refused, run through the model made for it.
        await go_to_row(pilot, ids["refused"]["job_id"])
        await pilot.press("r")
        await settle(pilot)
        assert isinstance(pilot.app.screen, ModelDialog)
        await pilot.press("enter")  # the cursor starts on the first other model: cxr-pneumonia
        await settle(pilot)
        assert said[-1].startswith("cxr-pneumonia: ")  # scored at once: the agent is not running
        assert len(screen.rows) == before + 1
        # The refused job again with the same model: the gate refuses it again, with its reason.
        await go_to_row(pilot, ids["refused"]["job_id"])
        await pilot.press("r")
        await settle(pilot)
        await choose_model(pilot, "us-breast")
        assert "did not score it: MODALITY_NOT_ACCEPTED" in said[-1]
        # A chest X-ray forced through the breast model: analysed here too, and refused as unlike
        # the model's training images.
        await go_to_row(pilot, ids["normal_png"]["job_id"])
        await pilot.press("r")
        await settle(pilot)
        await choose_model(pilot, "us-breast")
        assert said[-1].startswith("us-breast did not score it: OUT_OF_SCOPE: ")
        # Choosing the model that already scored it changes nothing.
        await go_to_row(pilot, ids["normal_png"]["job_id"])
        await pilot.press("r")
        await settle(pilot)
        await choose_model(pilot, "cxr-pneumonia")
        assert said[-1].startswith("already analysed with cxr-pneumonia")

    drive(app, scenario)
    with store_of(settings) as store:

        def jobs_of(name: str) -> list[tuple[str, str]]:
            rows = store.db.execute(
                "SELECT model_name, state FROM jobs WHERE image_id = ? ORDER BY model_name",
                [ids[name]["image_id"]],
            ).fetchall()
            return [tuple(job) for job in rows]

        assert jobs_of("refused") == [("cxr-pneumonia", "done"), ("us-breast", "refused")]
        assert jobs_of("normal_png") == [("cxr-pneumonia", "done"), ("us-breast", "refused")]
        assert len(list(store.audit_rows("job.rerun"))) == 3


def test_rerun_is_left_to_a_running_agent(filled: tuple[Settings, Filled]) -> None:
    settings, ids = filled
    agent_file(settings).write_text(json.dumps({"pid": os.getpid(), "updated_epoch": time.time()}))
    lock = InstanceLock(agent_lock(settings), "agent")  # what a running `edge run` holds
    lock.acquire()
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        assert pilot.app.agent_status == "agent running"  # type: ignore[attr-defined]
        await go_to_row(pilot, ids["breast"]["job_id"])
        await pilot.press("r")
        await settle(pilot)
        await pilot.press("enter")  # the cursor starts on the other model: cxr-pneumonia
        await settle(pilot)
        assert said[-1] == "queued for cxr-pneumonia: the agent will analyse it"

    try:
        drive(app, scenario)
    finally:
        lock.release()
    with store_of(settings) as store:
        job = store.db.execute(
            "SELECT state FROM jobs WHERE image_id = ? AND model_name = 'cxr-pneumonia'",
            [ids["breast"]["image_id"]],
        ).fetchone()
        assert job["state"] == "queued"


def test_delete_asks_first_then_removes_rows_and_files_with_an_audit_row(
    filled: tuple[Settings, Filled],
) -> None:
    settings, ids = filled
    target = ids["pneumonia_png"]
    with store_of(settings) as store:
        image = settings.data_dir / store.image(target["image_id"])["path"]  # type: ignore[index]
        heatmap = settings.data_dir / store.result(target["result_id"]).heatmap_path  # type: ignore[union-attr,operator]
    assert image.is_file()
    assert heatmap.is_file()
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        await go_to_row(pilot, target["job_id"])
        await pilot.press("D")
        await settle(pilot)
        assert isinstance(pilot.app.screen, DeleteDialog)
        await pilot.press("enter", "n")  # Enter does not confirm; n keeps it
        await settle(pilot)
        assert said[-1] == "nothing deleted"
        assert image.is_file()
        await pilot.press("delete")
        await settle(pilot)
        await pilot.press("r")  # the study's only result: not offered, says why, stays open
        await settle(pilot)
        assert isinstance(pilot.app.screen, DeleteDialog)
        assert "only result" in said[-1]
        await pilot.press("s")
        await settle(pilot)
        assert said[-1].startswith("study deleted: 1 image(s), 1 result(s)")
        assert target["job_id"] not in {row.job_id for row in worklist(pilot.app).rows}  # type: ignore[arg-type]

    drive(app, scenario)
    assert not image.exists()
    assert not heatmap.exists()
    with store_of(settings) as store:
        assert store.technician.worklist_item(target["job_id"]) is None
        audit = list(store.audit_rows("study.deleted"))
        assert [(a["actor"], a["subject_id"]) for a in audit] == [("tui:test", target["study_id"])]
        assert json.loads(audit[0]["detail"])["files"] == 3  # image, heatmap PNG, evidence grid


def test_delete_from_the_result_screen_returns_to_the_worklist(filled: tuple[Settings, Filled]) -> None:
    settings, ids = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        await open_row(pilot, ids["clip"]["job_id"])
        await pilot.press("D")
        await settle(pilot)
        await pilot.press("s")
        await settle(pilot)
        assert isinstance(pilot.app.screen, WorklistScreen)
        assert said[-1].startswith("study deleted")

    drive(app, scenario)
    with store_of(settings) as store:
        assert store.clip_for_result(ids["clip"]["result_id"]) is None
    assert not list((settings.data_dir / "clips").rglob("*.png"))


def test_a_study_being_analysed_cannot_be_deleted(filled: tuple[Settings, Filled]) -> None:
    settings, _ = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        running = next(row for row in worklist(pilot.app).rows if row.state == "running")  # type: ignore[arg-type]
        await go_to_row(pilot, running.job_id)
        await pilot.press("D")
        await settle(pilot)
        assert not isinstance(pilot.app.screen, DeleteDialog)
        assert "being analysed right now" in said[-1]

    drive(app, scenario)


# ---------------------------------------------------------------------- navigation, help, palette


def test_keys_reach_every_screen_help_and_the_command_palette(filled: tuple[Settings, Filled]) -> None:
    settings, _ = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        for key, title in (
            ("2", "LiveScreen"),
            ("3", "SyncScreen"),
            ("4", "DeviceScreen"),
            ("1", "WorklistScreen"),
        ):
            await pilot.press(key)
            await settle(pilot)
            assert type(pilot.app.screen).__name__ == title
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(pilot.app.screen, HelpScreen)
        keys = str(pilot.app.screen.query_one("#help-body Static", Static).render())
        for words in (
            "Flag",
            "Urgent only",
            "Re-run",
            "Delete",
            "Sync now",
            "Clip",
            "ctrl+p",
            "glossary",
        ):
            assert words in keys
        await pilot.press("escape")
        commands = {command.title for command in pilot.app.get_system_commands(pilot.app.screen)}
        assert {
            "Go to Sync",
            "Go to Device",
            "Flag",
            "Urgent only",
            "Note",
            "Re-run",
            "Delete",
        } <= commands
        assert {"Search", "Glossary"} <= commands
        await pilot.press("3", "ctrl+p")
        await pilot.pause()
        assert isinstance(pilot.app.screen, CommandPalette)
        await pilot.press(*"sync now")
        # the palette searches in its own time: Enter before it highlights the command runs nothing
        found = pilot.app.screen.query_one(CommandList)
        for _ in range(200):
            chosen = found.highlighted
            if chosen is not None and "Sync now" in str(found.get_option_at_index(chosen).prompt):
                break
            await pilot.pause(0.05)
        else:
            raise AssertionError("the palette never offered Sync now")
        await pilot.press("enter")
        await settle(pilot)
        assert said[-1].startswith("no sync service is running") or "sync" in said[-1]

    drive(app, scenario)


def test_sync_panel_shows_the_sync_report_in_plain_words(
    filled: tuple[Settings, Filled], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _ = filled
    report = {
        "state": "failed",
        "hub": "https://hub.example.org",
        "last_success": "2025-03-14T07:58:00.000Z",
        "last_error": "the hub refused the device's signature: its clock is 9 minutes off",
        "last_error_at": "2025-03-14T09:25:00.000Z",
        "pending": {"results": 4, "files": 9},
    }
    app = build_app(settings, health=fixed_health(snapshot, sync=report))
    monkeypatch.setattr("edge.tui.actions.request_sync_now", lambda settings: True)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        await pilot.press("3")
        await settle(pilot)
        assert "FAILED" in text_of(pilot.app, "#sync-state")  # type: ignore[arg-type]
        facts = text_of(pilot.app, "#sync-facts")  # type: ignore[arg-type]
        assert "2025-03-14 07:58" in facts
        assert "4 results, 9 files" in facts
        assert "clock is 9 minutes off" in text_of(pilot.app, "#sync-error")  # type: ignore[arg-type]
        await pilot.press("s")
        await settle(pilot)
        assert said[-1].startswith("sync requested")

    drive(app, scenario)


def test_every_top_bar_says_how_long_the_hub_has_been_out_of_reach(filled: tuple[Settings, Filled]) -> None:
    settings, _ = filled
    report = {
        "state": "offline",
        "hub": "https://hub.example.org",
        "last_success": "2025-03-11T07:58:00.000Z",  # three days before NOW
        "last_error": "the hub cannot be reached: [Errno 101] Network is unreachable",
        "last_error_at": "2025-03-14T09:25:00.000Z",
        "pending": {"results": 9, "files": 14},
    }
    app = build_app(settings, health=fixed_health(snapshot, sync=report))

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        for screen in ("1", "4"):
            await pilot.press(screen)
            await settle(pilot)
            bar = text_of(pilot.app, ".top-bar")  # type: ignore[arg-type]
            assert "agent NOT running · offline 3d, 9 waiting" in bar, bar

    drive(app, scenario)


@pytest.mark.parametrize(
    ("state", "last_success", "pending", "words"),
    [
        ("up to date", "2025-03-14T09:29:00Z", 0, "sync ok"),
        ("syncing", "2025-03-14T09:29:00Z", 3, "sending, 3 waiting"),
        ("offline", "2025-03-14T09:05:00Z", 2, "offline 25m, 2 waiting"),
        ("offline", "2025-03-14T01:30:00Z", 0, "offline 8h"),
        ("offline", None, 5, "offline, 5 waiting"),  # never reached the hub
        ("failed", "2025-03-10T09:30:00Z", 1, "SYNC FAILED, 1 waiting"),
        ("revoked", None, 4, "SYNC REVOKED, 4 waiting"),
        ("offline", "2025-03-14T09:45:00Z", 0, "offline"),  # the device clock behind the record
        ("offline", "1970-01-02T00:00:00Z", 2, "offline, 2 waiting"),  # stamped before the clock was set
    ],
)
def test_the_sync_state_in_a_few_words(
    state: str, last_success: str | None, pending: int, words: str
) -> None:
    context = TuiContext(Settings(), clock=lambda: NOW, display_tz=timezone.utc)
    view = {"state": state, "last_success": last_success, "pending": {"results": pending}}
    assert sync_short(view, context)[0] == words
    not_set_up = sync_view({"outbox_pending": 7})
    assert sync_short(not_set_up, context) == ("no hub", "dim")


def test_device_screen_shows_disk_queue_models_services_and_jetson_temperature(
    filled: tuple[Settings, Filled],
) -> None:
    settings, _ = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        await pilot.press("4")
        await settle(pilot)
        assert "41.0 GB free" in text_of(pilot.app, "#device-storage")  # type: ignore[arg-type]
        assert "1 new, 1 running, 1 refused" in text_of(pilot.app, "#device-queue")  # type: ignore[arg-type]
        models = text_of(pilot.app, "#device-models")  # type: ignore[arg-type]
        assert "cxr-pneumonia 1.2.0 · last result by fp32 on onnxruntime/fp32" in models
        assert "not running" in text_of(pilot.app, "#device-services")  # type: ignore[arg-type]
        host = text_of(pilot.app, "#device-host")  # type: ignore[arg-type]
        assert "Jetson Orin Nano" in host
        assert "GPU load 37%" in host
        assert "gpu-thermal 54°C" in host

    drive(app, scenario)


def test_an_empty_device_says_how_studies_arrive(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "empty")
    Store(settings.data_dir).close()
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        assert "No studies yet" in text_of(pilot.app, "#row-detail")  # type: ignore[arg-type]
        await pilot.press("exclamation_mark")
        assert said[-1] == "no study selected"

    drive(app, scenario)


def test_run_tui_creates_the_database_and_returns_the_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path / "fresh")
    monkeypatch.setattr(EdgeApp, "run", lambda self, **options: None)
    assert run_tui(settings) == 0
    assert settings.db_path.is_file()
    assert isinstance(create_app(settings), EdgeApp)


# ---------------------------------------------------------------------- live ultrasound


@pytest.mark.slow
def test_live_screen_scores_a_recording_and_stores_the_clip(filled: tuple[Settings, Filled]) -> None:
    settings, _ = filled
    app = build_app(settings, live_source=str(CLIP))

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        await pilot.press("2")
        await settle(pilot)
        screen = pilot.app.screen
        assert isinstance(screen, LiveScreen)
        await pilot.press("c")  # records a clip, starting the analysis
        await settle(pilot)  # the recording plays to its end (lossless, not real time)
        assert not screen.running
        assert screen.recording
        assert len(screen.scores) >= 10
        assert screen.out_of_scope == 0  # a lung clip, played to the lung model
        assert all(0.0 <= value <= 1.0 for value in screen.scores)
        assert screen.query_one(ScoreTrace).values == screen.scores
        assert screen.query_one(".picture-image").image is not None  # type: ignore[attr-defined]
        assert "OK" in text_of(pilot.app, "#live-status")  # type: ignore[arg-type]
        assert "end of file" in text_of(pilot.app, "#live-info")  # type: ignore[arg-type]
        await pilot.press("c")
        await settle(pilot)
        assert said[-1].startswith("clip stored: ")
        assert "clip stored" in text_of(pilot.app, "#live-clip")  # type: ignore[arg-type]

    drive(app, scenario)
    with store_of(settings) as store:
        clips = store.db.execute(
            "SELECT source, frames_analysed FROM clips WHERE source = 'capture'"
        ).fetchall()
        assert len(clips) == 1
        assert clips[0]["frames_analysed"] >= 3
        assert [a["actor"] for a in store.audit_rows("clip.recorded")] == ["file", "capture"]


@pytest.mark.slow
def test_live_screen_marks_frames_out_of_scope_and_the_clip_is_refused(
    filled: tuple[Settings, Filled],
) -> None:
    settings, _ = filled
    app = build_app(settings, live_source=str(OCULAR))  # an eye, played to the lung model

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        await pilot.press("2", "c")
        await settle(pilot)
        screen = pilot.app.screen
        assert isinstance(screen, LiveScreen)
        assert not screen.running
        assert screen.out_of_scope > len(screen.scores) // 2  # the clip is judged by its median frame
        assert f"({screen.out_of_scope} out of scope)" in text_of(pilot.app, "#live-info")  # type: ignore[arg-type]
        await pilot.press("c")
        await settle(pilot)
        assert said[-1].startswith("OUT_OF_SCOPE: ")
        assert "OUT_OF_SCOPE" in text_of(pilot.app, "#live-clip")  # type: ignore[arg-type]

    drive(app, scenario)
    with store_of(settings) as store:
        assert not store.db.execute("SELECT 1 FROM clips WHERE source = 'capture'").fetchall()


def test_live_status_words_follow_the_applicability_check() -> None:
    model = LiveModel(CLIP_MODEL, "1.1.0", "covid", 0.5, 0.5)

    def status(scope: str | None) -> list[str]:
        return status_text(LiveScore(7, 2.3, "ok", 0.71, 0.64, "covid", 12.0, scope), model).splitlines()

    for scope in (None, "in scope"):
        assert status(scope)[0].startswith(
            "[green]OK[/] picture usable · this frame: [bold yellow]covid[/] · t=2.3 s"
        )
    assert "borderline" in status("borderline")[0]
    assert "covid" in status("borderline")[0]
    out = status("out of scope")
    assert "OUT OF SCOPE" in out[0]
    assert "covid" not in out[0]  # no finding for a frame unlike the model's training images
    assert "0.640" in out[1]


def test_live_screen_says_when_the_source_cannot_be_opened(
    filled: tuple[Settings, Filled], tmp_path: Path
) -> None:
    settings, _ = filled
    app = build_app(settings, live_source=str(tmp_path / "no-such-recording.mp4"))

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        await pilot.press("2", "a")
        await settle(pilot)
        assert "cannot open no-such-recording.mp4" in said[-1]
        await pilot.press("c")  # a clip, starting the analysis again
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        assert "VIDEO_" in said[-1]  # nothing analysed: no clip, and the code says why

    drive(app, scenario)


def test_host_facts_read_a_jetson_from_proc_and_sys(tmp_path: Path) -> None:
    def put(relative: str, text: str) -> None:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    put("proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\x00")
    put("sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    put("sys/class/thermal/thermal_zone0/temp", "52300\n")
    put("sys/class/thermal/thermal_zone1/type", "gpu-thermal\n")
    put("sys/class/thermal/thermal_zone1/temp", "54100\n")
    put("sys/devices/gpu.0/load", "370\n")
    put("proc/meminfo", "MemTotal:        7803000 kB\nMemFree: 1 kB\nMemAvailable:    4515000 kB\n")
    facts = host_facts(tmp_path)
    assert facts["board"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert facts["jetson"] is True
    assert facts["gpu_load"] == 0.37
    assert facts["temperatures"] == [("cpu-thermal", 52.3), ("gpu-thermal", 54.1)]
    assert facts["memory_mb"] == (7620, 4409)
    bare = host_facts(tmp_path / "nothing-here")
    assert (bare["board"], bare["jetson"], bare["gpu_load"], bare["temperatures"]) == (None, False, None, [])


def test_the_heatmap_survives_no_colour_and_the_linux_console(
    filled: tuple[Settings, Filled], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under NO_COLOR the overlay's colours turned grey like the anatomy, and the Linux console's
    fonts have no half block (a TUI audit): there the picture is ASCII by brightness, and the
    heatmap's warm cells are in reverse video, which needs neither colour nor a glyph."""
    import numpy as np
    from PIL import Image as PILImage

    from edge.tui.widgets.picture import HEAT_WORDS, RAMP, TextImage, plain_terminal, text_cells

    assert plain_terminal({"NO_COLOR": "1", "TERM": "xterm-256color"})
    assert plain_terminal({"TERM": "linux"})
    assert not plain_terminal({"TERM": "xterm-256color"})
    grey = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (32, 1))
    overlay = np.dstack([grey, grey, grey])
    overlay[8:16, 40:56] = (230, 180, 20)  # the colour map's warm end, over the right middle
    picture = PILImage.fromarray(overlay)
    cells = text_cells(picture, 32, 8, heat=True)
    rows = cells.plain.split("\n")
    assert len(rows) == 8
    assert all(len(row) == 32 and set(row) <= set(RAMP) for row in rows)
    hot = {(span.start // 33, span.start % 33) for span in cells.spans if "reverse" in str(span.style)}
    assert hot
    assert all(2 <= row <= 4 and 19 <= col <= 28 for row, col in hot)
    assert not text_cells(picture, 32, 8, heat=False).spans

    monkeypatch.setenv("NO_COLOR", "1")
    settings, ids = filled
    app = build_app(settings, graphics="auto")

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        await open_row(pilot, ids["pneumonia_png"]["job_id"])
        shown = pilot.app.screen.query_one(Picture)
        image = shown.query_one(".picture-image")
        assert isinstance(image, TextImage)
        assert image.heat
        assert HEAT_WORDS in str(shown.query_one(".picture-caption", Static).render())
        await pilot.press("t")  # the image alone: nothing reversed, no words about it
        await settle(pilot)
        assert not image.heat
        assert HEAT_WORDS not in str(shown.query_one(".picture-caption", Static).render())

    drive(app, scenario)


# What console-setup's fonts (Lat15, Uni2, Terminus) draw beyond Latin-1, checked against their
# unicode tables: box lines, the full block and two shades, and the few marks the screens use.
CONSOLE_GLYPHS = set("─│┌┐└┘├┤═║╔╗╚╝█░▒·—“”…→←↑↓●") | {chr(c) for c in range(0x20, 0x7F)}
CONSOLE_GLYPHS |= {chr(c) for c in range(0xA0, 0x100)}


def test_the_linux_console_is_drawn_only_with_its_fonts_glyphs(
    filled: tuple[Settings, Filled], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its fonts have no block elements nor emoji: Textual's tall and thick borders, scrollbar
    ends, the palette's bar and icon and the live trace's eighths were replacement boxes."""
    from textual.scrollbar import ScrollBar

    monkeypatch.setenv("TERM", "linux")
    monkeypatch.setattr(ScrollBar, "renderer", ScrollBar.renderer)  # the app swaps it: put it back
    settings, ids = filled
    app = build_app(settings, graphics="auto", console=None, live_source=str(CLIP))
    drawn: dict[str, set[str]] = {}

    def look(pilot: Pilot[Any], where: str) -> None:
        svg = pilot.app.export_screenshot()
        text = html.unescape("".join(re.findall(r"<text[^>]*>(.*?)</text>", svg)))
        drawn[where] = set(text) - CONSOLE_GLYPHS

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        look(pilot, "worklist")
        await open_row(pilot, ids["pneumonia_png"]["job_id"])
        for _ in range(3):
            await pilot.press("pagedown")  # the details scroll: a scrollbar
        look(pilot, "result")
        await pilot.press("escape", "r")
        await settle(pilot)
        look(pilot, "re-run dialog")
        await pilot.press("escape", "n", "x")
        look(pilot, "note dialog, typing")
        await pilot.press("escape", "question_mark")
        look(pilot, "help")
        await pilot.press("escape", "ctrl+p", "s", "y")
        await settle(pilot)
        look(pilot, "command palette")
        await pilot.press("escape", "3", "s")
        await settle(pilot)
        look(pilot, "sync, with a notice")
        await pilot.press("2", "a")
        await settle(pilot)
        assert pilot.app.screen.query_one(ScoreTrace).values
        look(pilot, "live, scored")

    drive(app, scenario)
    assert len(drawn) == 8
    assert not {where: glyphs for where, glyphs in drawn.items() if glyphs}


def test_rerun_starts_on_a_model_that_takes_the_image(filled: tuple[Settings, Filled]) -> None:
    """A chest film scored by the chest model: no other model takes CR, so the cursor starts on
    its own (Enter changes nothing), not on us-breast, which would refuse it (a TUI audit); the
    models that would are marked."""
    settings, ids = filled
    app = build_app(settings)

    async def scenario(pilot: Pilot[Any], said: list[str]) -> None:
        await go_to_row(pilot, ids["dicom"]["job_id"])
        await pilot.press("r")
        await settle(pilot)
        dialog = pilot.app.screen
        assert isinstance(dialog, ModelDialog)
        options = dialog.query_one(OptionList)
        assert options.highlighted is not None
        assert options.get_option_at_index(options.highlighted).id == "cxr-pneumonia"
        breast = str(options.get_option("us-breast").prompt)
        assert "not CR" in breast
        await pilot.press("escape")

    drive(app, scenario)


def test_the_result_screen_says_a_film_was_read_through_its_frame() -> None:
    """A result read with its thin frame filled (`Scope.frame_filled`) says so under its verdict."""
    from types import SimpleNamespace

    from edge.tui.screens.result import _applicability

    verdict = {"state": "in scope", "distance": 30.0, "p_value": 0.41, "threshold": 40.0}
    plain = _applicability(SimpleNamespace(applicability=verdict))  # type: ignore[arg-type]
    framed = _applicability(SimpleNamespace(applicability={**verdict, "frame_filled": 0.02}))  # type: ignore[arg-type]
    assert "frame" not in plain
    assert framed.startswith(plain)
    assert "flat frame along its edges (2% of a side) filled" in framed
