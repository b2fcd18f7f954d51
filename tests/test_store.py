from __future__ import annotations

import errno
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from edge.errors import Code, EdgeError
from edge.store import NewImage, ResultRecord, Store, schema
from edge.store.files import write_atomically
from edge.store.writer import Writer
from edge.study import StudyInfo


def new_image(data: bytes = b"\x89PNG fake bytes", study_uid: str | None = None, **kw: Any) -> NewImage:
    import hashlib

    return NewImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        format="png",
        width=4,
        height=3,
        study=StudyInfo(study_uid=study_uid, phi_patient_id="P-1"),
        source="cli",
        original_name="x.png",
        **kw,
    )


def result_record(**overrides: Any) -> ResultRecord:
    values: dict[str, Any] = {
        "model_name": "m",
        "model_version": "1",
        "model_sha256": "0" * 64,
        "variant": "fp32",
        "backend": "onnxruntime",
        "precision": "fp32",
        "finding": "pneumonia",
        "finding_label": "pneumonia",
        "probability": 0.9,
        "probabilities": {"normal": 0.1, "pneumonia": 0.9},
        "threshold": 0.5,
        "operating_point": "balanced",
        "latency_ms": 1.0,
        "total_ms": 2.0,
    }
    values.update(overrides)
    return ResultRecord(**values)


def test_pragmas_and_schema(store: Store) -> None:
    pragma = lambda name: store.db.execute(f"PRAGMA {name}").fetchone()[0]  # noqa: E731
    assert pragma("journal_mode") == "wal"
    assert pragma("synchronous") == 2  # FULL
    assert pragma("foreign_keys") == 1
    assert pragma("busy_timeout") == 10_000
    assert schema.schema_version(store.db) == schema.latest_version() >= 1
    assert {"studies", "images", "jobs", "results", "reviews", "outbox", "audit"} <= set(
        store.db.table_names()
    )


def test_reopening_applies_no_migration_twice(tmp_path: Path) -> None:
    Store(tmp_path).close()
    with Store(tmp_path) as again:
        assert len(schema.migrations.applied(again.db)) == schema.latest_version()


def test_clips_made_before_m011_keep_their_model_and_stay_deduplicated(tmp_path: Path) -> None:
    """A store from before clips were keyed by (file, model) upgrades in place."""
    db = Database(tmp_path / "edge.db")
    schema.migrations.apply(db, stop_before="m011_clip_per_model")
    now = "2026-11-01T00:00:00.000Z"
    db.execute("INSERT INTO studies (id, source, received_at) VALUES ('s', 'video', ?)", [now])
    db.execute(
        "INSERT INTO images (id, study_id, sha256, path, format, bytes, width, height, created_at)"
        " VALUES ('i', 's', 'x', 'p.png', 'png', 1, 8, 8, ?)",
        [now],
    )
    db.execute(
        "INSERT INTO jobs (id, image_id, model_name, state, created_at, updated_at)"
        " VALUES ('j', 'i', 'us-lung', 'done', ?, ?)",
        [now, now],
    )
    result = {c.name: None for c in db["results"].columns}
    result.update(id="r", job_id="j", image_id="i", model_name="us-lung", created_at=now)
    for column in db["results"].columns:
        if column.notnull and result[column.name] is None:
            result[column.name] = 0 if column.type in ("INTEGER", "REAL") else "x"
    db["results"].insert(result)
    db.execute(
        "INSERT INTO jobs (id, image_id, model_name, state, created_at, updated_at)"
        " VALUES ('j2', 'i', 'us-breast', 'done', ?, ?)",
        [now, now],
    )
    db["results"].insert({**result, "id": "r2", "job_id": "j2", "model_name": "us-breast"})
    db.execute(
        "INSERT INTO clips (id, result_id, source, source_sha256, frames_analysed, frames_excluded,"
        " duration_s, aggregate, series, key_frames, created_at)"
        " VALUES ('c', 'r', 'file', 'abc', 1, 0, 1.0, 'mean', '[]', '[]', ?)",
        [now],
    )
    db.conn.commit()
    db.close()
    with Store(tmp_path) as upgraded:
        assert upgraded.clip_for_source("abc", "us-lung")["result_id"] == "r"
        assert upgraded.clip_for_source("abc", "us-breast") is None
        insert = (
            "INSERT INTO clips (id, result_id, source, source_sha256, model_name,"
            " frames_analysed, frames_excluded, duration_s, aggregate, series, key_frames,"
            " created_at) VALUES (?, 'r2', 'file', 'abc', ?, 1, 0, 1, 'm', '[]', '[]', ?)"
        )
        # r2 is a real result: only the (file, model) uniqueness can refuse this row.
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            upgraded.db.execute(insert, ["c2", "us-lung", now])
        upgraded.db.execute(insert, ["c3", "us-breast", now])  # the same file, another model
        assert upgraded.clip_for_source("abc", "us-breast")["result_id"] == "r2"


def test_ingest_writes_file_then_rows(store: Store) -> None:
    outcome = store.ingest(new_image(), ["m"], actor="test")
    assert not outcome.duplicate
    assert len(outcome.job_ids) == 1
    path = store.image_file(outcome.image_id)
    assert path.read_bytes() == b"\x89PNG fake bytes"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # patient data: owner only
    assert not list(path.parent.glob(".*.tmp"))
    counts = store.counts()
    assert (counts["studies"], counts["images"], counts["jobs_queued"]) == (1, 1, 1)


def test_same_bytes_twice_are_one_image(store: Store) -> None:
    first = store.ingest(new_image(), ["m"], actor="test")
    again = store.ingest(new_image(), ["m"], actor="test")
    assert again.duplicate
    assert (again.image_id, again.job_ids) == (first.image_id, first.job_ids)
    with_more = store.ingest(new_image(), ["m", "other"], actor="test")
    assert with_more.job_ids[0] == first.job_ids[0]
    counts = store.counts()
    assert (counts["images"], counts["jobs"]) == (1, 2)
    assert len(list((store.data_dir / "images").rglob("*.png"))) == 1


def test_same_sop_instance_uid_with_other_bytes_is_kept_alongside(store: Store) -> None:
    """Without a comparison of the two, other bytes under a stored UID are another object:
    stored without the UID (the first keeps it), never dropped as a duplicate (issue 17)."""
    first = store.ingest(new_image(b"a", sop_instance_uid="1.2.3"), ["m"], actor="test")
    again = store.ingest(new_image(b"b", sop_instance_uid="1.2.3"), ["m"], actor="test")
    assert (again.duplicate, again.collides_with) == (False, first.image_id)
    same = store.ingest(new_image(b"a", sop_instance_uid="1.2.3"), ["m"], actor="test")
    assert (same.duplicate, same.image_id) == (True, first.image_id)


def test_images_of_one_study_share_it(store: Store) -> None:
    a = store.ingest(new_image(b"a", study_uid="9.9"), ["m"], actor="test")
    b = store.ingest(new_image(b"b", study_uid="9.9"), ["m"], actor="test")
    assert a.study_id == b.study_id
    assert store.counts()["studies"] == 1


def test_failed_ingest_leaves_no_rows_and_no_file(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Writer.insert

    def failing(self: Writer, table: str, row: dict[str, Any]) -> None:
        if table == "jobs":
            raise sqlite3.OperationalError("injected failure between image and job rows")
        original(self, table, row)

    monkeypatch.setattr(Writer, "insert", failing)
    with pytest.raises(sqlite3.OperationalError, match="injected"):
        store.ingest(new_image(), ["m"], actor="test")
    counts = store.counts()
    assert (counts["studies"], counts["images"], counts["jobs"]) == (0, 0, 0)
    assert not [p for p in (store.data_dir / "images").rglob("*") if p.is_file()]


def test_result_job_state_and_outbox_commit_together(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = store.ingest(new_image(), ["m"], actor="test")
    job = store.claim_job("w1")
    assert job is not None
    assert job.id == outcome.job_ids[0]

    def failing(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("injected failure before the outbox row")

    monkeypatch.setattr(Writer, "enqueue_outbox", failing)
    with pytest.raises(sqlite3.OperationalError, match="injected"):
        store.complete_job(job, result_record())
    counts = store.counts()
    assert (counts["results"], counts["outbox"], counts["jobs_running"], counts["jobs_done"]) == (0, 0, 1, 0)

    monkeypatch.undo()
    store.db.execute("UPDATE jobs SET lease_until = '2000-01-01T00:00:00.000Z'")  # the lease ran out
    store.db.conn.commit()
    # what the agent's maintenance tick does
    assert store.leases.reclaim(max_attempts=3, max_restarts=10) == (1, 0)
    job = store.claim_job("w2")
    assert job is not None
    result_id = store.complete_job(job, result_record())
    counts = store.counts()
    assert (counts["results"], counts["outbox"], counts["jobs_done"]) == (1, 1, 1)
    row = store.result_for_job(job.id)
    assert row is not None
    assert row.id == result_id
    assert row.probabilities == {"normal": 0.1, "pneumonia": 0.9}
    outbox = dict(store.db.execute("SELECT * FROM outbox").fetchone())
    assert (outbox["kind"], outbox["ref_id"], outbox["seq"]) == ("result", result_id, 1)


def test_a_job_requeued_elsewhere_cannot_be_completed_by_its_old_worker(store: Store) -> None:
    store.ingest(new_image(), ["m"], actor="test")
    stale = store.claim_job("old-worker", lease_s=0.001)
    assert stale is not None
    time.sleep(0.01)
    assert store.leases.reclaim(max_attempts=3, max_restarts=10) == (1, 0)
    fresh = store.claim_job("new-worker")
    assert fresh is not None
    assert fresh.attempts == 2
    with pytest.raises(EdgeError) as caught:
        store.complete_job(stale, result_record())
    assert caught.value.code is Code.STORE_WRITE_FAILED
    assert store.counts()["results"] == 0
    store.complete_job(fresh, result_record())
    assert store.counts()["results"] == 1


def test_claims_never_share_a_job(store: Store) -> None:
    for index in range(3):
        store.ingest(new_image(bytes([index])), ["m"], actor="test")
    claimed = [store.claim_job(f"w{i}") for i in range(4)]
    ids = [job.id for job in claimed if job]
    assert len(ids) == len(set(ids)) == 3
    assert claimed[3] is None


def test_fail_job_records_code_and_audit(store: Store) -> None:
    store.ingest(new_image(), ["m"], actor="test")
    job = store.claim_job("w")
    assert job is not None
    store.fail_job(job, Code.INFERENCE_FAILED, "backend crashed")
    row = store.job(job.id)
    assert row is not None
    assert (row["state"], row["error_code"]) == ("failed", "INFERENCE_FAILED")
    assert [a["action"] for a in store.audit_rows("job.failed")] == ["job.failed"]


def test_disk_full_during_a_commit_is_a_coded_refusal(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Writer, "audit", full)
    with pytest.raises(EdgeError) as caught:
        store.audit("test", "x", None, {})
    assert caught.value.code is Code.DISK_FULL


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", no_space)
    target = tmp_path / "d" / "image.dcm"
    with pytest.raises(EdgeError) as caught:
        write_atomically(target, b"data")
    assert caught.value.code is Code.DISK_FULL
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_a_file_system_gone_read_only_is_said_coded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Remounted read-only under a running agent: the write and its clean-up both fail; the
    clean-up's OSError hid the write's under a traceback, and the drop folder retried the file
    every half second. Now one coded refusal, which the folder waits out."""
    from edge.ingest.watch import LEAVE_FOR_LATER

    def read_only(*_: Any, **__: Any) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    target = tmp_path / "d" / "image.dcm"
    target.parent.mkdir()
    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(EdgeError) as caught:
        write_atomically(target, b"data")
    assert caught.value.code is Code.STORE_READ_ONLY
    assert "remount the data directory read-write" in caught.value.message
    assert caught.value.code in LEAVE_FOR_LATER


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    write_atomically(target, b"first version")
    write_atomically(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
