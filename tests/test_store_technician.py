"""The store's technician side (edge/store/technician.py): worklist reads and audited marks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.errors import Code, EdgeError
from edge.store import Store
from edge.store.reads import evidence_beside
from edge.store.technician import URGENT_PRIORITY, WITHDRAWN_NOTE
from tests.tui_fixtures import CLIP_MODEL, Filled, add_review, copy_of_template


@pytest.fixture
def filled(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Iterator[tuple[Store, Filled]]:
    settings, ids = copy_of_template(tmp_path_factory, tmp_path)
    with Store(settings.data_dir) as store:
        yield store, ids


def test_migration_adds_notes_and_seen_marks(store: Store) -> None:
    columns = {row["name"] for row in store.db.execute("PRAGMA table_info(results)").fetchall()}
    assert {"seen_at", "seen_by"} <= columns
    notes = {row["name"] for row in store.db.execute("PRAGMA table_info(notes)").fetchall()}
    assert notes == {"id", "study_id", "result_id", "phi_text", "author", "created_at"}


def test_worklist_puts_urgent_first_then_newest_and_filters(filled: tuple[Store, Filled]) -> None:
    store, ids = filled
    rows = store.technician.worklist()
    assert rows[0].job_id == ids["dicom"]["job_id"]
    assert [row.queued_at for row in rows[1:]] == sorted((row.queued_at for row in rows[1:]), reverse=True)
    assert {row.state for row in store.technician.worklist(states=("refused",))} == {"refused"}
    assert [row.job_id for row in store.technician.worklist(urgent_only=True)] == [ids["dicom"]["job_id"]]
    unseen = store.technician.worklist(unseen_only=True)
    assert ids["normal_png"]["job_id"] not in {row.job_id for row in unseen}
    assert all(row.result_id for row in unseen)
    assert {row.phi_original_name for row in store.technician.worklist(search="SAMPLE-12")} == {
        "sample-12.png"
    }
    assert store.technician.worklist(search="100%") == []  # LIKE wildcards are matched literally
    assert len(store.technician.worklist(search="MODALITY_NOT")) == 1
    reviewed = store.technician.worklist_item(ids["pneumonia_png"]["job_id"])
    assert reviewed is not None
    assert reviewed.review_verdict == "agree"


def test_the_worklist_keeps_the_order_studies_came_whatever_the_clock_stamped(
    filled: tuple[Store, Filled],
) -> None:
    """A study stamped 2041 by a clock that was ahead stayed above today's work for years, one
    stamped 1970 sank out of sight: newest first is the order the jobs came."""
    store, _ = filled
    before = [row.job_id for row in store.technician.worklist()]
    oldest, newest = before[-1], before[1]  # the first is urgent
    store.db.execute("UPDATE jobs SET created_at = '2041-06-01T00:00:00.000Z' WHERE id = ?", [oldest])
    store.db.execute("UPDATE jobs SET created_at = '1970-01-02T00:00:00.000Z' WHERE id = ?", [newest])
    store.db.conn.commit()
    assert [row.job_id for row in store.technician.worklist()] == before


def test_a_disagreement_not_yet_seen_comes_right_after_the_flagged(filled: tuple[Store, Filled]) -> None:
    """A specialist who disagrees with a normal result (a child to recall) in a reply the
    technician has not seen: urgent on the technician's worklist, before the positive findings,
    kept by urgent-only, until it is marked seen (a TUI audit found one at row 193 of 500)."""
    store, ids = filled
    normal = ids["normal_png"]  # marked seen by the fixture at 09:10; this reply came after
    later = "2025-03-14T11:00:00.000Z"
    add_review(store, normal["result_id"], "disagree", "pneumonia", "Consolidation: recall.", later, None)

    def order() -> list[str]:
        return [row.job_id for row in store.technician.worklist(positive_counts_as_urgent=True)]

    def urgent() -> set[str]:
        rows = store.technician.worklist(positive_counts_as_urgent=True, urgent_only=True)
        return {row.job_id for row in rows}

    assert order()[:2] == [ids["dicom"]["job_id"], normal["job_id"]]
    assert normal["job_id"] in urgent()
    assert store.technician.worklist()[1].job_id != normal["job_id"]  # other callers: flags alone
    store.technician.mark_seen(normal["result_id"], "tui:amina")
    assert order()[1] != normal["job_id"]
    assert normal["job_id"] not in urgent()
    add_review(store, normal["result_id"], "agree", "normal", "", "2025-03-14T12:00:00.000Z", None)
    assert normal["job_id"] not in urgent()  # a newer reply that agrees: not urgent


def test_set_urgent_moves_queued_jobs_up_and_is_audited(filled: tuple[Store, Filled]) -> None:
    store, ids = filled
    queued = ids["queued"]
    store.technician.set_urgent(queued["study_id"], True, "tui:ana")
    priority = store.db.execute(
        "SELECT priority FROM jobs WHERE image_id = ?", [queued["image_id"]]
    ).fetchone()[0]
    assert priority == URGENT_PRIORITY
    store.technician.set_urgent(queued["study_id"], False, "tui:ana")
    actions = [
        (a["action"], a["actor"], a["subject_id"]) for a in store.audit_rows() if a["actor"] == "tui:ana"
    ]
    assert actions == [
        ("study.urgent", "tui:ana", queued["study_id"]),
        ("study.not_urgent", "tui:ana", queued["study_id"]),
    ]
    with pytest.raises(EdgeError) as missing:
        store.technician.set_urgent("no-such-study", True, "tui:ana")
    assert missing.value.code is Code.INPUT_NOT_FOUND


def test_notes_are_kept_and_never_copied_into_the_audit_trail(filled: tuple[Store, Filled]) -> None:
    store, ids = filled
    study = ids["breast"]["study_id"]
    note_id = store.technician.add_note(study, "  Patient Jane Roe prefers a call  ", "tui:ana")
    assert [n["phi_text"] for n in store.technician.notes_for(study)] == ["Patient Jane Roe prefers a call"]
    audit = list(store.audit_rows("note.added"))[-1]  # the fixture added the first
    assert json.loads(audit["detail"]) == {"chars": 31, "note": note_id}
    for bad in ("   ", "x" * 2001):
        with pytest.raises(EdgeError) as refused:
            store.technician.add_note(study, bad, "tui:ana")
        assert refused.value.code is Code.NOTE_REFUSED
    with pytest.raises(EdgeError) as gone:
        store.technician.add_note("no-such-study", "text", "tui:ana")
    assert gone.value.code is Code.INPUT_NOT_FOUND


def test_mark_seen_once(filled: tuple[Store, Filled]) -> None:
    store, ids = filled
    result_id = ids["breast"]["result_id"]
    assert store.technician.mark_seen(result_id, "tui:ana") is True
    assert store.technician.mark_seen(result_id, "tui:bo") is False
    seen = store.result(result_id)
    assert seen is not None
    assert seen.seen_by == "tui:ana"
    assert len(list(store.audit_rows("result.seen"))) == 2  # one from the fixture, one here
    with pytest.raises(EdgeError):
        store.technician.mark_seen("no-such-result", "tui:ana")


def test_requeue_with_model_adds_reopens_or_returns_the_job(filled: tuple[Store, Filled]) -> None:
    store, ids = filled
    image = ids["normal_png"]["image_id"]
    new = store.technician.requeue_with_model(image, "us-breast", "tui:ana")
    assert (store.job(new) or {})["state"] == "queued"
    assert store.technician.requeue_with_model(image, "us-breast", "tui:ana") == new  # queued: the same job
    assert (
        store.technician.requeue_with_model(image, "cxr-pneumonia", "tui:ana") == ids["normal_png"]["job_id"]
    )  # done
    refused = ids["refused"]
    again = store.technician.requeue_with_model(refused["image_id"], "us-breast", "tui:ana")
    assert again == refused["job_id"]
    job = store.job(again) or {}
    assert (job["state"], job["error_code"], job["worker"]) == ("queued", None, None)
    assert len(list(store.audit_rows("job.rerun"))) == 2
    with pytest.raises(EdgeError):
        store.technician.requeue_with_model("no-such-image", "us-breast", "tui:ana")


def test_delete_study_removes_rows_and_files_and_withdraws_unsent_records(
    filled: tuple[Store, Filled],
) -> None:
    store, ids = filled
    clip = ids["clip"]
    # The filled store's clip must be one its model answers (tests/tui_fixtures.py: the lung
    # recording through us-lung); a refused clip (OUT_OF_SCOPE) stores no result to delete.
    assert clip["result_id"] is not None, f"the fixture's clip was refused: {clip['code']}"
    result = store.result(clip["result_id"])
    assert result is not None
    image_path = store.image_file(result.image_id)
    study_id = (store.image(result.image_id) or {})["study_id"]
    clip_row = store.clip_for_result(clip["result_id"]) or {}
    clip_files = [store.data_dir / p for k in clip_row["key_frames"] for p in (k["path"], k["heatmap"]) if p]
    # Each key frame's heatmap has its evidence grid beside it (issue 21): it goes with the study.
    clip_files += [
        store.data_dir / evidence_beside(k["heatmap"]) for k in clip_row["key_frames"] if k["heatmap"]
    ]
    clip_files.append(store.data_dir / clip_row["video_path"])
    assert all(path.is_file() for path in [image_path, *clip_files])
    store.technician.add_note(study_id, "wrong patient", "tui:ana")
    removed = store.technician.delete_study(study_id, "tui:ana")
    assert removed == {
        "images": 1,
        "results": 1,
        "notes": 1,
        "files": len(clip_files) + 1,
        "unsent_withdrawn": 1,
        "tombstones": 1,  # queued for the hub: it may have been sent already (tests/test_tombstones.py)
    }
    assert not any(path.exists() for path in [image_path, *clip_files])
    assert not clip_files[0].parent.exists()  # the clip's own folder goes too
    assert store.result(clip["result_id"]) is None
    assert store.technician.notes_for(study_id) == []
    outbox = store.db.execute(
        "SELECT kind, last_error FROM outbox WHERE ref_id = ? ORDER BY seq", [clip["result_id"]]
    )
    assert [tuple(row) for row in outbox.fetchall()] == [("result", WITHDRAWN_NOTE), ("tombstone", None)]
    audit = list(store.audit_rows("study.deleted"))
    assert [(a["actor"], a["subject_id"], json.loads(a["detail"])) for a in audit] == [
        ("tui:ana", study_id, removed)
    ]
    with pytest.raises(EdgeError):
        store.technician.delete_study(study_id, "tui:ana")


def test_a_study_with_a_running_job_is_not_deleted(filled: tuple[Store, Filled]) -> None:
    store, ids = filled
    running = ids["running"]
    with pytest.raises(EdgeError) as busy:
        store.technician.delete_study(running["study_id"], "tui:ana")
    assert "being analysed" in busy.value.message
    assert store.image(running["image_id"]) is not None
    assert list(store.audit_rows("study.deleted")) == []


def test_models_in_use_reports_what_served_each_model(filled: tuple[Store, Filled]) -> None:
    store, _ = filled
    served = {row["model_name"]: row for row in store.technician.models_in_use()}
    # The X-ray samples, the breast sample and the refused DICOM (us-breast), and the stored clip's
    # model (the lung recording through us-lung).
    assert set(served) == {"cxr-pneumonia", "us-breast", CLIP_MODEL}
    chest = served["cxr-pneumonia"]
    assert (chest["backend"], chest["precision"]) == ("onnxruntime", "fp32")
    assert chest["results"] == 3
