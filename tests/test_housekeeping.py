"""Disk guard, reserve, orphan sweep, retention (only what the hub acknowledged), doctor, status."""

from __future__ import annotations

import json
import os
import time
from collections import namedtuple
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.cli import cli
from edge.clock import AGE_UNKNOWN, utc_now
from edge.config import Settings
from edge.imaging.decode import decode_bytes
from edge.operations import housekeeping
from edge.operations.doctor import run_checks, worst
from edge.pipeline import Pipeline
from edge.store import Store
from tests.conftest import gradient, png_bytes

Usage = namedtuple("Usage", "total used free")


def with_free(monkeypatch: pytest.MonkeyPatch, free_mb: int) -> None:
    monkeypatch.setattr(
        housekeeping.shutil, "disk_usage", lambda _: Usage(10_000 * 2**20, 0, free_mb * 2**20)
    )


def test_disk_guard_levels(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    with_free(monkeypatch, 5000)
    assert housekeeping.disk_state(settings).accepting
    assert not housekeeping.disk_state(settings).warning
    with_free(monkeypatch, 1000)
    state = housekeeping.disk_state(settings)
    assert state.accepting
    assert state.warning
    assert "warning level" in state.reason
    with_free(monkeypatch, 100)
    state = housekeeping.disk_state(settings)
    assert not state.accepting
    assert "below the 500 MB floor" in state.reason


def test_reserve_is_made_and_released(settings: Settings) -> None:
    small = settings.model_copy(
        update={"store": settings.store.model_copy(update={"reserve_mb": 2, "min_free_mb": 0})}
    )
    small.data_dir.mkdir(parents=True)
    assert housekeeping.ensure_reserve(small)
    assert housekeeping.reserve_path(small).stat().st_size == 2 * 2**20
    assert housekeeping.release_reserve(small)
    assert not housekeeping.reserve_path(small).exists()


def ingest_one(settings: Settings, store: Store, data: bytes) -> str:
    outcome = store.ingest(Pipeline.new_image(decode_bytes(data), data, "test", None), ["m"], actor="t")
    return outcome.image_id


def test_orphans_are_swept_only_when_old(settings: Settings, store: Store) -> None:
    image_id = ingest_one(settings, store, png_bytes(gradient()))
    kept = store.image_file(image_id)
    orphan = kept.parent / "01a22650-0000-7000-8000-000000000000.png"  # a crash before the commit
    orphan.write_bytes(b"x")
    tmp = kept.parent / ".x.png.123.tmp"
    tmp.write_bytes(b"x")
    assert housekeeping.sweep_orphans(store) == 0  # too recent: may belong to a commit in flight
    old = time.time() - 2 * housekeeping.ORPHAN_GRACE_S
    for path in (orphan, tmp, kept):
        os.utime(path, (old, old))
    assert housekeeping.sweep_orphans(store) == 2
    assert kept.exists()
    assert not orphan.exists()
    assert not tmp.exists()
    # The image is set aside, not deleted: it may be the only copy of a result a database rolled
    # back lost (its -wal deleted). Doctor names it; a row pointing at it again (a backup
    # restored) puts it back; it goes after ORPHAN_KEEP_S.
    aside = settings.data_dir / housekeeping.ORPHANS / orphan.relative_to(settings.data_dir)
    assert aside.read_bytes() == b"x"
    assert housekeeping.orphaned_images(settings.data_dir) == 1
    [check] = [c for c in run_checks(settings) if c.name == "orphaned images"]
    assert check.level == "warn"
    assert "1 stored image(s) no record points at" in check.message
    assert housekeeping.sweep_orphans(store) == 0
    store.db.execute(
        "UPDATE images SET path = ? WHERE id = ?", [str(orphan.relative_to(settings.data_dir)), image_id]
    )
    store.db.conn.commit()
    assert housekeeping.sweep_orphans(store) == 2  # put back; the image no row points at now, aside
    assert orphan.read_bytes() == b"x"
    ancient = time.time() - housekeeping.ORPHAN_KEEP_S - 1
    for path in (settings.data_dir / housekeeping.ORPHANS).rglob("*"):
        os.utime(path, (ancient, ancient))
    assert housekeeping.sweep_orphans(store) == 1
    assert housekeeping.orphaned_images(settings.data_dir) == 0
    assert not [c for c in run_checks(settings) if c.name == "orphaned images"]


def test_the_drop_folders_ledger_and_staged_profiles_are_not_set_aside(
    settings: Settings, store: Store
) -> None:
    """The drop folder's count of a video's deaths lives in clips/: it was swept (the old code
    deleted it), losing the count that ends a video that keeps killing the agent. A site
    profile's staged copy is deleted, as before, not kept."""
    from edge.ingest.recording_attempts import FILE

    ledger = settings.data_dir / "clips" / FILE
    ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger.write_text("{}")
    staged = settings.data_dir / "profiles" / "m" / ".m-1.toml.abc.new"
    staged.parent.mkdir(parents=True)
    staged.write_text("x")
    old = time.time() - 2 * housekeeping.ORPHAN_GRACE_S
    for path in (ledger, staged):
        os.utime(path, (old, old))
    assert housekeeping.sweep_orphans(store) == 1
    assert ledger.exists()
    assert not staged.exists()
    assert not (settings.data_dir / housekeeping.ORPHANS).exists()


def test_interrupted_writes_temporary_files_are_swept_a_short_grace_after_they_stop(
    settings: Settings, store: Store
) -> None:
    """Before: only images/heatmaps/clips were looked at, only an hour later and only at agent
    start, so a crash's `.tmp` files (agent.json, sync state) survived the restart after it."""
    leftovers = [
        settings.data_dir / ".agent.json.01a2.tmp",
        settings.data_dir / "sync" / ".state.json.01a2.tmp",
        settings.data_dir / "profiles" / "m" / ".m-1-site-20260101T000000Z.toml.01a2.new",  # calibrate
        settings.data_dir / "profiles" / "m" / ".active.01a2.tmp",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    keep = settings.data_dir / "sync" / "credential.json"
    keep.write_bytes(b"{}")
    profile = settings.data_dir / "profiles" / "m" / "m-1-site-20260101T000000Z.toml"
    profile.write_bytes(b"a profile")
    assert housekeeping.ORPHAN_GRACE_S <= 300
    old = time.time() - housekeeping.ORPHAN_GRACE_S - 1
    for path in (*leftovers, keep, profile):
        os.utime(path, (old, old))
    assert housekeeping.sweep_orphans(store) == 4
    assert profile.exists()
    assert not any(path.exists() for path in leftovers)
    assert keep.exists()


def _result_for(store: Store, image_id: str, acked: bool) -> None:
    """A finished job, its result and its outbox row (acknowledged by the hub or not)."""
    job_id, result_id = f"j-{image_id}", f"r-{image_id}"
    store.db.execute("UPDATE jobs SET state = 'done' WHERE image_id = ?", [image_id])
    job_id = store.db.execute("SELECT id FROM jobs WHERE image_id = ?", [image_id]).fetchone()[0]
    store.db.execute(
        "INSERT INTO results (id, job_id, image_id, model_name, model_version, model_sha256, variant,"
        " backend, precision, finding, finding_label, probability, probabilities, threshold,"
        " operating_point, latency_ms, total_ms, created_at) VALUES"
        " (?, ?, ?, 'm', '1', 'x', 'fp32', 'onnxruntime', 'fp32', 'normal', 'p', 0.1, '{}', 0.5,"
        " 'balanced', 1, 1, '2020-01-01T00:00:00.000Z')",
        [result_id, job_id, image_id],
    )
    store.db.execute(
        "INSERT INTO outbox (id, kind, ref_id, payload, created_at, acked_at)"
        " VALUES (?, 'result', ?, '{}', '2020-01-01T00:00:00.000Z', ?)",
        [f"o-{result_id}", result_id, "2020-01-02T00:00:00.000Z" if acked else None],
    )


def _synced_now(store: Store) -> None:
    """A sync round went through just now: the hub took the device's clock as it is."""
    now = utc_now()
    store.outbox.set_sync_state(last_success=now, clock_confirmed=now, clock_offset_s=0.0, failing=False)


def test_retention_deletes_only_what_the_hub_acknowledged(settings: Settings, store: Store) -> None:
    acked = ingest_one(settings, store, png_bytes(gradient()))
    unacked = ingest_one(settings, store, png_bytes(gradient(70, 40)))
    queued = ingest_one(settings, store, png_bytes(gradient(90, 50)))
    store.db.execute("UPDATE images SET created_at = '2024-06-01T00:00:00.000Z'")
    _result_for(store, acked, acked=True)
    _result_for(store, unacked, acked=False)
    store.db.conn.commit()
    assert housekeeping.purge_expired(store, retention_days=30) == 0  # no sync has confirmed the clock
    _synced_now(store)
    assert housekeeping.purge_expired(store, retention_days=30) == 1
    assert not store.image_file(acked).exists()
    assert store.image_file(unacked).exists()
    assert store.image_file(queued).exists()  # its job still waits for the worker
    assert store.image(acked)["purged_at"] is not None
    assert store.result(f"r-{acked}") is not None  # the result stays
    assert housekeeping.purge_expired(store, retention_days=30) == 0  # once


def test_with_full_images_the_image_itself_must_be_acknowledged(settings: Settings, store: Store) -> None:
    sent = ingest_one(settings, store, png_bytes(gradient()))
    waiting = ingest_one(settings, store, png_bytes(gradient(70, 40)))
    store.db.execute("UPDATE images SET created_at = '2024-06-01T00:00:00.000Z'")
    for image_id, acked_at in ((sent, "2020-01-02T00:00:00.000Z"), (waiting, None)):
        _result_for(store, image_id, acked=True)
        store.db.execute(
            "INSERT INTO outbox (id, kind, ref_id, payload, created_at, acked_at)"
            " VALUES (?, 'image', ?, '{}', ?, ?)",
            [f"o-{image_id}", image_id, "2020-01-01T00:00:00.000Z", acked_at],
        )
    store.db.conn.commit()
    _synced_now(store)
    assert housekeeping.purge_expired(store, retention_days=30, image_upload=True) == 1
    assert not store.image_file(sent).exists()
    assert store.image_file(waiting).exists()


def test_an_image_stamped_by_a_wrong_clock_is_kept_its_whole_retention(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A box without a clock battery stamps 1970 until NTP steps it (or a clock ahead stamps
    2041): such an image was deleted at the first retention run after the clock was put right,
    minutes after it was taken. Its age now starts when the clock is first right."""
    taken_at = {"1970-01-02T00:00:00.000Z": None, "2041-06-01T00:00:00.000Z": None}
    for stamp, colour in zip(taken_at, (40, 70), strict=True):
        image_id = ingest_one(settings, store, png_bytes(gradient(colour, 30)))
        store.db.execute("UPDATE images SET created_at = ? WHERE id = ?", [stamp, image_id])
        _result_for(store, image_id, acked=True)
        taken_at[stamp] = image_id
    store.db.conn.commit()
    monkeypatch.setattr(housekeeping, "clock_plausible", lambda: False)  # still 1970: nothing goes
    assert housekeeping.purge_expired(store, retention_days=30) == 0
    assert all(store.image(i)["aged_from"] is None for i in taken_at.values())  # type: ignore[arg-type]
    monkeypatch.undo()
    _synced_now(store)
    assert housekeeping.purge_expired(store, retention_days=30, off_hub_s=3 * 86400) == 0  # off the hub's
    assert housekeeping.purge_expired(store, retention_days=30) == 0  # the clock put right
    for image_id in taken_at.values():
        assert image_id is not None
        assert store.image_file(image_id).exists()
        assert store.image(image_id)["aged_from"] is not None  # its age counts from now
    assert (
        store.db.execute("SELECT count(*) FROM audit WHERE action = 'image.age_restarted'").fetchone()[0] == 1
    )
    store.db.execute("UPDATE images SET aged_from = '2099-06-01T00:00:00.000Z'")  # restarted by a clock ahead
    store.db.conn.commit()
    assert housekeeping.purge_expired(store, retention_days=30) == 0
    assert all(store.image(i)["aged_from"] < "2099" for i in taken_at.values())  # type: ignore[arg-type]
    store.db.execute("UPDATE images SET aged_from = '2024-06-01T00:00:00.000Z'")  # 30 days on
    store.db.conn.commit()
    assert housekeeping.purge_expired(store, retention_days=30) == 2


def test_an_image_stored_while_the_clock_was_behind_is_kept_its_whole_retention(
    settings: Settings, store: Store
) -> None:
    """The clock read months behind, a plausible date, after the hub had confirmed it: an image
    so stamped looked months old once NTP put the clock right and was deleted that day."""
    ahead = (datetime.now(timezone.utc) + timedelta(days=120)).isoformat().replace("+00:00", "Z")
    store.outbox.set_sync_state(clock_confirmed=ahead)  # the hub took a clock 4 months later
    image_id = ingest_one(settings, store, png_bytes(gradient()))
    assert store.image(image_id)["aged_from"] == AGE_UNKNOWN  # type: ignore[index]
    _result_for(store, image_id, acked=True)
    store.db.execute("UPDATE images SET created_at = '2025-01-01T00:00:00.000Z'")
    store.outbox.set_sync_state(clock_confirmed=None)
    _synced_now(store)  # the clock put right, confirmed
    assert housekeeping.purge_expired(store, retention_days=30) == 0
    assert store.image_file(image_id).exists()
    assert store.image(image_id)["aged_from"] < "2100"  # type: ignore[index]  # its age: from now
    # Measured off by the hub (a resync found the clock 4496 h behind), before any confirmation:
    store.outbox.set_sync_state(clock_confirmed=None, clock_offset_s=4496 * 3600.0)
    second = ingest_one(settings, store, png_bytes(gradient(70, 40)))
    assert store.image(second)["aged_from"] == AGE_UNKNOWN  # type: ignore[index]
    # A clock months ahead, corrected by the offset, stamps a round's success months ahead: it
    # does not count as a confirmation (retention waited until then, every image unknown).
    ahead = (datetime.now(timezone.utc) + timedelta(days=150)).isoformat().replace("+00:00", "Z")
    store.outbox.set_sync_state(last_success=ahead, clock_offset_s=0.0)
    third = ingest_one(settings, store, png_bytes(gradient(90, 50)))
    assert store.image(third)["aged_from"] is None  # type: ignore[index]


def test_an_image_whose_thumbnail_or_heatmap_waits_is_kept(settings: Settings, store: Store) -> None:
    """Thumbnails and heatmaps are filed under their result and built from the image when sent:
    retention deleted images whose result the hub had but whose thumbnail still waited, and
    those were withdrawn from the hub for good (an outside-style check)."""
    image_id = ingest_one(settings, store, png_bytes(gradient()))
    store.db.execute("UPDATE images SET created_at = '2024-06-01T00:00:00.000Z'")
    _result_for(store, image_id, acked=True)
    store.db.execute(
        "INSERT INTO outbox (id, kind, ref_id, payload, created_at) VALUES (?, 'thumbnail', ?, '{}', ?)",
        [f"t-{image_id}", f"r-{image_id}", "2024-06-01T00:00:00.000Z"],
    )
    store.db.conn.commit()
    _synced_now(store)
    assert housekeeping.purge_expired(store, retention_days=30) == 0
    store.db.execute("UPDATE outbox SET acked_at = created_at WHERE kind = 'thumbnail'")
    store.db.conn.commit()
    assert housekeeping.purge_expired(store, retention_days=30) == 1


def test_retention_waits_when_the_clock_jumped_since_the_last_sync(settings: Settings, store: Store) -> None:
    """The clock jumped months ahead while the hub was out of reach, within plausible years:
    retention deleted images taken that day (an outside-style check). The last sync that went
    through, stamped before the jump, is months behind the clock now: retention waits."""
    image_id = ingest_one(settings, store, png_bytes(gradient()))
    _result_for(store, image_id, acked=True)
    store.db.conn.commit()
    months_ago = (datetime.now(timezone.utc) - timedelta(days=90)).isoformat().replace("+00:00", "Z")
    store.db.execute("UPDATE images SET created_at = ?", [months_ago])  # as a clock 3 months ahead reads it
    store.outbox.set_sync_state(last_success=months_ago, clock_confirmed=months_ago)
    store.db.conn.commit()
    assert housekeeping.purge_expired(store, retention_days=30) == 0
    assert store.image_file(image_id).exists()
    in_future = (datetime.now(timezone.utc) + timedelta(days=9)).isoformat().replace("+00:00", "Z")
    store.outbox.set_sync_state(clock_confirmed=in_future)  # the clock went back since
    assert housekeeping.purge_expired(store, retention_days=30) == 0
    _synced_now(store)  # a sync goes through: the hub took the clock as it is
    assert housekeeping.purge_expired(store, retention_days=30) == 1


def test_a_device_never_enrolled_lets_refused_images_go(settings: Settings, store: Store) -> None:
    """No hub ever confirms a clock there: waiting for one kept every refused image for good (an
    analysed one waits for the hub's acknowledgement in any case)."""
    refused = ingest_one(settings, store, png_bytes(gradient()))
    analysed = ingest_one(settings, store, png_bytes(gradient(70, 40)))
    store.db.execute("UPDATE jobs SET state = 'failed' WHERE image_id = ?", [refused])
    _result_for(store, analysed, acked=False)
    store.db.execute("UPDATE images SET created_at = '2024-06-01T00:00:00.000Z'")
    store.db.conn.commit()
    assert housekeeping.purge_expired(store, retention_days=30) == 0  # enrolled: waits for the hub
    assert housekeeping.retention_args(settings)["enrolled"] is False
    assert housekeeping.purge_expired(store, retention_days=30, enrolled=False) == 1
    assert not store.image_file(refused).exists()
    assert store.image_file(analysed).exists()
    # Once a hub confirmed the clock, it must confirm it again: a credential lost is no licence.
    store.outbox.set_sync_state(clock_confirmed="2024-07-01T00:00:00.000Z")
    assert housekeeping.clock_unconfirmed(store, 0.0, enrolled=False) is not None


def test_doctor_says_when_retention_waits(settings: Settings, store: Store) -> None:
    """A device whose hub stays out of reach keeps every image past retention, and that was said
    only in the agent's log: `edge doctor` says how many and why."""
    from edge.sync import signatures
    from edge.sync.credential import Credential

    def retention() -> tuple[str, str]:
        [check] = [c for c in run_checks(settings) if c.name == "retention"]
        return check.level, check.message

    image_id = ingest_one(settings, store, png_bytes(gradient()))
    _result_for(store, image_id, acked=True)
    store.db.execute("UPDATE images SET created_at = '2024-06-01T00:00:00.000Z'")
    store.db.conn.commit()
    assert retention()[0] == "pass"  # never enrolled: nothing waits for a hub
    Credential("https://hub.example", "dev", key=signatures.new_device_key()).save(settings, True)
    level, message = retention()
    assert level == "warn"
    assert "1 image file(s) past 30 days are kept" in message
    assert "the hub has not confirmed the clock" in message
    _synced_now(store)
    assert retention()[0] == "pass"
    assert housekeeping.purge_expired(store, 30, **housekeeping.retention_args(settings)) == 1


def test_doctor_lines_and_exit_status(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = {c.name: c for c in run_checks(settings)}
    for name in (
        "python",
        "packages",
        "onnxruntime",
        "tensorrt",
        "model cxr-pneumonia",
        "database",
        "disk",
        "clock",
        "dicom listener",
        "agent",
        "hub",
    ):
        assert name in checks, name
    assert checks["database"].level == "pass"
    assert "integrity ok" in checks["database"].message
    assert checks["model cxr-pneumonia"].level == "pass"
    assert checks["agent"].level == "warn"  # no agent running
    with_free(monkeypatch, 10)
    assert worst(run_checks(settings)) == 2
    result = CliRunner().invoke(cli, ["--data-dir", str(settings.data_dir), "doctor", "--json"])
    assert result.exit_code == 2
    assert {c["level"] for c in json.loads(result.stdout)} >= {"pass", "fail"}


def test_doctor_says_when_the_clock_is_off_the_hubs(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock years off that the hub's skew check found (the credential keeps the offset) was
    never said anywhere: the only trace was a retry warning."""
    from edge.operations import doctor
    from edge.sync import signatures
    from edge.sync.credential import Credential

    def clock() -> tuple[str, str]:
        [check] = [c for c in run_checks(settings) if c.name == "clock"]
        return check.level, check.message

    assert clock()[0] == "pass"
    Credential(
        "https://hub.example", "dev", clock_offset=56 * 365.25 * 86400, key=signatures.new_device_key()
    ).save(settings, True)
    level, message = clock()
    assert level == "warn"
    assert "56 years behind the hub's at the last sync" in message
    monkeypatch.setattr(doctor, "clock_plausible", lambda: False)
    level, message = clock()
    assert level == "fail"
    assert "no image is deleted by retention until it is right" in message


def test_doctor_spots_a_corrupt_model(settings: Settings, tmp_path: Path) -> None:
    from tests.tinymodel import make_model_dir

    folder = make_model_dir(tmp_path / "models")
    (folder / "tiny-fp32.onnx").write_bytes(b"tampered")
    moved = settings.model_copy(
        update={"models": settings.models.model_copy(update={"dir": tmp_path / "models"})}
    )
    check = next(c for c in run_checks(moved) if c.name == "model tiny")
    assert check.level == "fail"
    assert "MODEL_CHECKSUM_MISMATCH" in check.message


def test_status_json(settings: Settings, store: Store) -> None:
    result = CliRunner().invoke(cli, ["--data-dir", str(settings.data_dir), "status", "--json"])
    assert result.exit_code == 0
    snap = json.loads(result.stdout)
    assert snap["agent"]["running"] is False
    for key in (
        "queue_depth",
        "counts",
        "last_result",
        "recent_errors",
        "disk",
        "versions",
        "outbox_pending",
    ):
        assert key in snap
    assert snap["versions"]["edge"]


def test_doctor_reads_the_schema_as_found_and_refuses_a_newer_one(settings: Settings, store: Store) -> None:
    """Doctor reports the schema before opening the store (which upgrades it), and a database
    written by newer software (a migration this one does not know) fails the check."""
    assert next(c for c in run_checks(settings) if c.name == "database").level == "pass"
    store.db.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
        " VALUES ('edge', 'm999_future', 'now')"
    )
    store.db.conn.commit()
    check = next(c for c in run_checks(settings) if c.name == "database")
    assert check.level == "fail"
    assert "newer than this software" in check.message


def test_a_clips_recording_is_kept_in_the_data_folder_and_swept_an_hour_after(
    settings: Settings, store: Store
) -> None:
    """A clip's video was recorded in /tmp: the patient's pictures outside the data folder (and
    its encryption), left there by a power cut or kill -9 mid-clip (355 such files were in this
    machine's /tmp). It is written under clips/ now, and swept at the next start an hour on
    (a recording may wait that long for its stop)."""
    from edge.video.clip import ClipRecorder

    recorder = ClipRecorder(
        ["normal", "finding"], "finding", fps=5, max_seconds=2, max_side=64, key_frames=2,
        folder=settings.data_dir / "clips",
    )  # fmt: skip
    recorder._write_video(0.0, gradient(64, 48))
    assert recorder._video is not None
    recording = recorder._video
    assert recording.parent == settings.data_dir / "clips"
    assert recording.name.startswith(".recording-")
    recorder._writer.release()  # the process died here: nothing else happens to it
    assert housekeeping.sweep_orphans(store, min_age_s=0) == 0  # not an hour old: may be running
    old = time.time() - housekeeping.RECORDING_GRACE_S - 1
    os.utime(recording, (old, old))
    assert housekeeping.sweep_orphans(store) == 1
    assert not recording.exists()


def test_status_names_the_files_the_drop_folder_refused(settings: Settings, store: Store) -> None:
    """A refused file never reaches the store, so `edge status` showed nothing of it (an
    outside-style check: 10 files quarantined, status silent)."""
    day = settings.inbox.parent / "quarantine" / "2026-12-05"
    day.mkdir(parents=True)
    (day / "loop.mp4").write_bytes(b"x")
    (day / "loop.mp4.reason.txt").write_text("VIDEO_UNREADABLE: cannot open loop.mp4\n")
    result = CliRunner().invoke(cli, ["--data-dir", str(settings.data_dir), "status"])
    assert result.exit_code == 0
    assert "drop folder: 1 file(s) refused in 7 days" in result.stdout
    assert "loop.mp4: VIDEO_UNREADABLE: cannot open loop.mp4" in result.stdout
    result = CliRunner().invoke(cli, ["--data-dir", str(settings.data_dir), "status", "--json"])
    assert json.loads(result.stdout)["drop_folder_refused"]["last_7_days"] == 1
