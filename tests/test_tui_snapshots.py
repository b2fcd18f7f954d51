"""What every screen looks like (pytest-textual-snapshot), at 80x24 (SSH) and larger.

The store is filled by the real pipeline at fixed times (tests/tui_fixtures.py); clock, zone and
the host's facts are fixed; images are drawn in half-cell blocks (no terminal graphics protocol).
After a deliberate change: `python -m pytest tests/test_tui_snapshots.py --snapshot-update`, then
look at the SVGs in tests/__snapshots__/ before committing them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from edge.operations.health import snapshot
from edge.tui.app import EdgeApp
from tests.tui_fixtures import (
    CLIP,
    RUNNING_AGENT,
    Filled,
    add_second_result,
    build_app,
    copy_of_template,
    fixed_health,
    settle,
)

SMALL = (80, 24)
LARGE = (120, 40)
Compare = Callable[..., bool]

FAILED_SYNC = {
    "state": "failed",
    "hub": "https://hub.example.org",
    "last_success": "2025-03-14T07:58:00.000Z",
    "last_error": "the hub refused the device's signature: its clock is 9 minutes off",
    "last_error_at": "2025-03-14T09:25:00.000Z",
    "pending": {"results": 4, "files": 9},
}


@pytest.fixture
def filled(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> tuple[Any, Filled]:
    return copy_of_template(tmp_path_factory, tmp_path)


def steps(*keys: str, row: str | None = None) -> Callable[[Pilot[Any]], Awaitable[None]]:
    """Wait for the data, optionally put the cursor on a job's row, press keys (waiting after
    each), and take the notifications away so only the screen itself is compared."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        if row is not None:
            table = pilot.app.screen.query_one(DataTable)
            table.move_cursor(row=table.get_row_index(row))
        for key in keys:
            await pilot.press(key)
            await settle(pilot)
        for box in pilot.app.screen.query(Input):
            box.cursor_blink = False
        pilot.app.clear_notifications()
        await pilot.pause()

    return run_before


def app_for(filled: tuple[Any, Filled], **overrides: Any) -> EdgeApp:
    return build_app(filled[0], **overrides)


def test_worklist(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps())


def test_worklist_large(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    assert snap_compare(app_for(filled), terminal_size=LARGE, run_before=steps())


def test_worklist_urgent_filter(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps("u"))


def test_worklist_search_then_list_keys(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    # Down leaves the search box: the list has the focus, the footer its keys again.
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps("slash", *"sample", "down"))


def test_worklist_refused_row_filtered(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps("f", "f", "f", "f"))


def test_result_with_heatmap_and_review(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    row = filled[1]["pneumonia_png"]["job_id"]
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps("enter", row=row))


def test_result_large_urgent_with_note(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    row = filled[1]["dicom"]["job_id"]
    assert snap_compare(app_for(filled), terminal_size=LARGE, run_before=steps("enter", row=row))


def test_result_refused(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    row = filled[1]["refused"]["job_id"]
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps("enter", row=row))


def test_delete_confirmation(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    row = filled[1]["breast"]["job_id"]
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps("D", row=row))


def test_delete_one_result_of_a_dicom_study(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    # The DICOM refused by the wrong model (us-breast) in a study with a second row: r is offered.
    settings, ids = filled
    add_second_result(settings, ids)
    row = ids["refused"]["job_id"]
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps("D", row=row))


def test_rerun_model_choice(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    row = filled[1]["normal_png"]["job_id"]
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps("r", row=row))


def test_note_dialog(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    row = filled[1]["breast"]["job_id"]
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps("n", row=row))


def test_live_after_a_recording(
    snap_compare: Compare, filled: tuple[Any, Filled], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The screen shows the source as given: relative, so the picture is the same in any checkout.
    monkeypatch.chdir(CLIP.parents[2])
    app = app_for(filled, live_source=str(CLIP.relative_to(CLIP.parents[2])))
    assert snap_compare(app, terminal_size=SMALL, run_before=steps("2", "a"))


def test_live_without_a_source(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps("2"))


def test_sync_failed(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    app = app_for(filled, health=fixed_health(snapshot, sync=FAILED_SYNC))
    assert snap_compare(app, terminal_size=SMALL, run_before=steps("3"))


def test_sync_not_configured(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    app = app_for(filled, health=fixed_health(snapshot, sync=None))
    assert snap_compare(app, terminal_size=SMALL, run_before=steps("3"))


def test_device(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps("4"))


def test_device_large_with_the_agent_running(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    app = app_for(filled, agent=lambda settings: RUNNING_AGENT)
    assert snap_compare(app, terminal_size=LARGE, run_before=steps("4"))


def test_help(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps("question_mark"))


def test_glossary(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    assert snap_compare(app_for(filled), terminal_size=SMALL, run_before=steps("g"))


def test_result_with_reply_large(snap_compare: Compare, filled: tuple[Any, Filled]) -> None:
    row = filled[1]["pneumonia_png"]["job_id"]
    assert snap_compare(app_for(filled), terminal_size=LARGE, run_before=steps("enter", row=row))
