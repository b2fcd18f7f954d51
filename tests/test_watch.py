"""The watched drop folder: complete files only, moved after commit, never processed twice."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from edge.config import Settings
from edge.errors import EdgeError
from edge.imaging.decode import DecodedImage, decode_bytes
from edge.ingest import watch
from edge.ingest.watch import DropFolder
from edge.pipeline import Pipeline
from edge.store import Store
from tests.conftest import DEFAULT_MODEL, MODELS, gradient, png_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def folder(settings: Settings, store: Store) -> tuple[DropFolder, Clock, Store]:
    clock = Clock()
    # The drop folder's mechanics, on gradients no model's check takes: the model is named (a
    # device on one kind of scanner), so they are stored and refused by it, not by routing.
    watched = settings.model_copy(
        update={
            "watch": settings.watch.model_copy(update={"settle_s": 2.0}),
            "models": settings.models.model_copy(update={"default": DEFAULT_MODEL}),
        }
    )
    pipeline = Pipeline(watched, store, actor="watch")
    return DropFolder(watched, pipeline, decode_bytes, clock=clock), clock, store


def settle(drop: DropFolder, clock: Clock) -> dict[str, int]:
    drop.scan_once()  # first sight
    clock.now += 3
    return drop.scan_once()


def test_png_and_dicom_are_ingested_and_moved(folder: Any, sample_png: Path, sample_dcm: Path) -> None:
    drop, clock, store = folder
    shutil.copy(sample_png, drop.inbox / "a.png")
    (drop.inbox / "sub").mkdir()
    shutil.copy(sample_dcm, drop.inbox / "sub" / "b.dcm")
    assert settle(drop, clock)["ingested"] == 2
    assert not list(drop.inbox.rglob("*.*"))
    assert sorted(p.name for p in drop.processed.rglob("*.*")) == ["a.png", "b.dcm"]
    assert store.counts()["jobs_queued"] == 2


def test_a_file_still_growing_waits(folder: Any) -> None:
    drop, clock, store = folder
    target = drop.inbox / "growing.png"
    data = png_bytes(gradient())
    target.write_bytes(data[:100])
    assert drop.scan_once()["waiting"] == 1
    clock.now += 1
    target.write_bytes(data)  # the copy goes on
    assert drop.scan_once()["waiting"] == 1
    clock.now += 3
    assert drop.scan_once()["ingested"] == 1
    assert store.counts()["images"] == 1


def test_partial_and_hidden_names_are_left_alone(folder: Any) -> None:
    drop, clock, _ = folder
    for name in (".hidden.png", "upload.png.part", "x.crdownload"):
        (drop.inbox / name).write_bytes(png_bytes(gradient()))
    assert not any(settle(drop, clock).values())
    assert len(list(drop.inbox.iterdir())) == 3


def test_refused_files_go_to_quarantine_with_the_reason(folder: Any) -> None:
    drop, clock, store = folder
    (drop.inbox / "notes.txt").write_text("hello")
    (drop.inbox / "cut.png").write_bytes(png_bytes(gradient())[:-20])
    assert settle(drop, clock)["quarantined"] == 2
    reasons = {p.name: p.read_text().strip() for p in drop.quarantine.rglob("*.reason.txt")}
    assert reasons["notes.txt.reason.txt"].startswith("INPUT_NOT_IMAGE: ")
    assert reasons["cut.png.reason.txt"].startswith("IMAGE_TRUNCATED: ")
    assert store.counts()["images"] == 0


def test_a_crash_between_commit_and_move_does_not_duplicate(
    folder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop, clock, store = folder
    (drop.inbox / "a.png").write_bytes(png_bytes(gradient()))
    original = DropFolder._move

    def power_cut(self: DropFolder, *args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("power cut after the commit, before the move")

    monkeypatch.setattr(DropFolder, "_move", power_cut)
    with pytest.raises(KeyboardInterrupt):
        settle(drop, clock)
    assert store.counts()["images"] == 1
    monkeypatch.setattr(DropFolder, "_move", original)
    clock.now += 3
    assert drop.scan_once()["duplicate"] == 1  # seen again after the restart: stored once
    counts = store.counts()
    assert (counts["images"], counts["jobs"]) == (1, 1)
    assert not (drop.inbox / "a.png").exists()


def test_full_disk_leaves_files_in_the_inbox(settings: Settings, store: Store) -> None:
    clock = Clock()
    drop = DropFolder(
        settings,
        Pipeline(settings, store),
        decode_bytes,
        clock=clock,
        accepting=lambda: (False, "12 MB free, below the 500 MB floor"),
    )
    (drop.inbox / "a.png").write_bytes(png_bytes(gradient()))
    assert settle(drop, clock)["paused"] == 1
    assert (drop.inbox / "a.png").exists()
    assert store.counts()["images"] == 0


def test_the_same_name_twice_keeps_both(folder: Any) -> None:
    drop, clock, _ = folder
    (drop.inbox / "x.png").write_bytes(png_bytes(gradient()))
    settle(drop, clock)
    (drop.inbox / "x.png").write_bytes(png_bytes(gradient(70, 50)))
    settle(drop, clock)
    assert sorted(p.name for p in drop.processed.rglob("*.png")) == ["x.1.png", "x.png"]


# ------------------------------------------------------------------ refusals are audited


def refusal_codes(store: Store) -> list[str]:
    return sorted(json.loads(row["detail"])["code"] for row in store.audit_rows("input.refused"))


def test_every_refusal_is_audited_with_its_code(settings: Settings, store: Store) -> None:
    """The file itself refused (empty, too large, not a regular file) as well as the decoder's
    refusals: each leaves one audit row with its code, as the README promises."""
    small = settings.model_copy(
        update={
            "watch": settings.watch.model_copy(update={"settle_s": 0.0}),
            "store": settings.store.model_copy(update={"max_input_bytes": 4096}),
        }
    )
    clock = Clock()
    drop = DropFolder(small, Pipeline(small, store, actor="watch"), decode_bytes, clock=clock)
    (drop.inbox / "empty.dcm").write_bytes(b"")
    (drop.inbox / "huge.png").write_bytes(b"\0" * 5000)
    os.mkfifo(drop.inbox / "pipe.dcm")
    (drop.inbox / "notes.txt").write_text("hello")
    assert drop.scan_once()["quarantined"] == 3
    clock.now += watch.UNFINISHED_PATIENCE_S  # an empty file is waited for: a writer may not have begun
    assert drop.scan_once()["quarantined"] == 1
    assert refusal_codes(store) == ["INPUT_EMPTY", "INPUT_NOT_IMAGE", "INPUT_TOO_LARGE", "INPUT_UNREADABLE"]
    reasons = {p.name: p.read_text() for p in drop.quarantine.rglob("*.reason.txt")}
    assert reasons["empty.dcm.reason.txt"].startswith("INPUT_EMPTY: ")
    assert drop.scan_once()["quarantined"] == 0  # moved: audited once
    assert len(refusal_codes(store)) == 4


# ------------------------------------------------------------------ a full disk, quietly


class CountingDecoder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: bytes, name: str) -> DecodedImage:
        self.calls += 1
        return decode_bytes(data, name)


def fill_the_disk(store: Store) -> None:
    """The database can grow no more: every write fails as on a full disk (DISK_FULL)."""
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")
    for pad in (1000, 100, 1):  # use up the free pages inside the file, to the last bytes
        with contextlib.suppress(EdgeError):
            for _ in range(10_000):
                store.audit("test", "filler", None, {"pad": "x" * pad})
    with pytest.raises(EdgeError, match="DISK_FULL"):
        store.audit("test", "filler", None, {})


def free_the_disk(store: Store) -> None:
    store.db.execute("PRAGMA max_page_count = 1073741823")


def device_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("edge") and r.levelno >= logging.WARNING]


def test_a_full_store_is_tried_once_a_minute_not_every_file_every_scan(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The fault campaign's flood: with the store full, every scan decoded every file and logged
    two lines for each. Now one file is tried per RETRY_S and the rest are left alone; once the
    disk is freed, every file left in the inbox is taken."""
    # FP32: loading a model checks its INT8 variants against FP32 once and logs each refusal on
    # a machine where they differ (VARIANT_PARITY_FAILED, a warning per variant of every
    # model routing loads); those lines are the machine's, not the flood this test counts.
    watched = settings.model_copy(
        update={
            "watch": settings.watch.model_copy(update={"settle_s": 0.0}),
            "runtime": settings.runtime.model_copy(update={"precision": "fp32"}),
        }
    )
    clock, decoder = Clock(), CountingDecoder()
    drop = DropFolder(watched, Pipeline(watched, store, actor="watch"), decoder, clock=clock)
    # Pictures the shipped X-ray model is made for (unlabelled: routed by applicability to it).
    pictures = sorted((MODELS / DEFAULT_MODEL / "samples").glob("*.png"))[:20]
    assert len(pictures) == 20
    for index, picture in enumerate(pictures):
        shutil.copy(picture, drop.inbox / f"{index:02}.png")
    fill_the_disk(store)
    caplog.set_level(logging.INFO)
    for _ in range(25):  # 25 s of scans, one a second
        drop.scan_once()
        clock.now += 1
    assert decoder.calls == 1  # before: 25 scans x 20 files
    lines = device_lines(caplog)
    assert len(lines) == 2, [r.getMessage() for r in lines]  # before: 1,000
    assert {r.getMessage().split(":")[0] for r in lines} == {"input refused, not audited", "drop folder"}
    assert len(list(drop.inbox.iterdir())) == 20
    clock.now += watch.RETRY_S
    assert drop.scan_once()["deferred"] == 1  # still full: one more file tried
    assert decoder.calls == 2
    free_the_disk(store)
    clock.now += watch.RETRY_S
    assert drop.scan_once()["ingested"] == 20  # the disk was freed: everything left is taken
    assert not list(drop.inbox.iterdir())
    assert any(r.getMessage() == "drop folder: the store takes files again" for r in caplog.records)


def test_while_the_disk_guard_says_no_no_file_is_touched(
    folder: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop, clock, store = folder
    state = {"accepting": False}
    drop._accepting = lambda: (state["accepting"], "12 MB free, below the 500 MB floor")
    (drop.inbox / "a.png").write_bytes(png_bytes(gradient()))
    monkeypatch.setattr(DropFolder, "candidates", lambda self: pytest.fail("the inbox was listed"))
    caplog.set_level(logging.INFO)
    for _ in range(30):
        assert drop.scan_once()["paused"] == 1
        clock.now += 1
    assert [r.getMessage() for r in device_lines(caplog)] == [
        "drop folder paused: 12 MB free, below the 500 MB floor; files stay in the inbox"
    ]
    monkeypatch.undo()
    state["accepting"] = True
    assert settle(drop, clock)["ingested"] == 1
    assert store.counts()["images"] == 1


# ------------------------------------------------------------------ what it could not move


def test_a_refused_file_that_cannot_be_moved_is_not_decoded_again_until_it_changes(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    watched = settings.model_copy(update={"watch": settings.watch.model_copy(update={"settle_s": 0.0})})
    clock, decoder = Clock(), CountingDecoder()
    drop = DropFolder(watched, Pipeline(watched, store, actor="watch"), decoder, clock=clock)
    target = drop.inbox / "cut.png"
    target.write_bytes(png_bytes(gradient())[:-20])
    real_move = DropFolder._move_now

    def read_only(self: DropFolder, *args: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(DropFolder, "_move_now", read_only)
    assert drop.scan_once()["held"] == 1
    for _ in range(10):
        clock.now += 1
        assert drop.scan_once()["held"] == 1
    assert decoder.calls == 1
    assert refusal_codes(store) == ["IMAGE_TRUNCATED"]

    target.write_bytes(png_bytes(gradient())[:-30])  # changed: a new file, decoded again
    os.utime(target, ns=(1, 1))
    drop.scan_once()
    assert decoder.calls == 2
    assert len(refusal_codes(store)) == 2

    monkeypatch.setattr(DropFolder, "_move_now", real_move)
    clock.now += watch.RETRY_S
    assert drop.scan_once()["quarantined"] == 1  # only the move is tried again
    assert decoder.calls == 2
    assert len(refusal_codes(store)) == 2
    assert [p.name for p in drop.quarantine.rglob("*.png")] == ["cut.png"]


def test_the_memory_is_bounded(settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    watched = settings.model_copy(update={"watch": settings.watch.model_copy(update={"settle_s": 0.0})})
    drop = DropFolder(watched, Pipeline(watched, store, actor="watch"), decode_bytes, clock=Clock())
    monkeypatch.setattr(watch, "MAX_HELD", 3)
    monkeypatch.setattr(
        DropFolder, "_move_now", lambda self, *args: (_ for _ in ()).throw(OSError(errno.EROFS, "ro"))
    )
    for index in range(5):
        (drop.inbox / f"{index}.txt").write_text(f"not an image {index}")
    drop.scan_once()
    assert len(drop._held) == 3
    for path in drop.inbox.iterdir():
        path.unlink()
    drop.scan_once()  # files taken away by hand are forgotten
    assert (len(drop._held), len(drop._seen)) == (0, 0)


# ------------------------------------------------------------------ links and owners (issue 17)


@pytest.mark.security
def test_a_symlink_is_quarantined_unread_and_its_target_untouched(
    folder: Any, sample_dcm: Path, tmp_path: Path
) -> None:
    """The folder followed a link to any file the agent could read (another study's DICOM in
    the data directory, a key): now it is refused as a link, whatever it points at."""
    drop, clock, store = folder
    secret = tmp_path / "elsewhere" / "other-patient.dcm"
    secret.parent.mkdir()
    shutil.copy(sample_dcm, secret)
    (drop.inbox / "looks-fine.dcm").symlink_to(secret)
    assert settle(drop, clock)["quarantined"] == 1
    assert store.counts()["images"] == 0
    assert refusal_codes(store) == ["DROP_FILE_LINKED"]
    assert secret.read_bytes() == sample_dcm.read_bytes()  # the target stays where it was
    moved = next(p for p in drop.quarantine.rglob("looks-fine.dcm"))
    assert moved.is_symlink()  # the link itself was moved, never its target
    reason = next(drop.quarantine.rglob("*.reason.txt")).read_text()
    assert reason.startswith("DROP_FILE_LINKED: ")


@pytest.mark.security
def test_a_hard_link_is_quarantined_unread(folder: Any, sample_dcm: Path, tmp_path: Path) -> None:
    drop, clock, store = folder
    secret = tmp_path / "other-patient.dcm"
    shutil.copy(sample_dcm, secret)
    os.link(secret, drop.inbox / "b.dcm")
    assert settle(drop, clock)["quarantined"] == 1
    assert store.counts()["images"] == 0
    assert refusal_codes(store) == ["DROP_FILE_LINKED"]
    assert secret.exists()


@pytest.mark.security
def test_a_file_of_another_owner_is_quarantined_unread(
    settings: Settings, store: Store, sample_dcm: Path
) -> None:
    """Only files of `[watch] owners` (default: the agent's own user) are read; here the
    expected owner is someone else, so our own file stands for a stranger's."""
    other = str(os.geteuid() + 4242)
    watched = settings.model_copy(
        update={"watch": settings.watch.model_copy(update={"settle_s": 0.0, "owners": [other]})}
    )
    drop = DropFolder(watched, Pipeline(watched, store, actor="watch"), decode_bytes, clock=Clock())
    shutil.copy(sample_dcm, drop.inbox / "b.dcm")
    assert drop.scan_once()["quarantined"] == 1
    assert refusal_codes(store) == ["DROP_FILE_NOT_OWNED"]
    assert store.counts()["images"] == 0


@pytest.mark.security
def test_a_file_swapped_for_a_symlink_after_the_listing_is_not_followed(
    sample_dcm: Path, tmp_path: Path
) -> None:
    """The check is on what was opened (O_NOFOLLOW, fstat), not on an earlier stat."""
    target = tmp_path / "target.dcm"
    shutil.copy(sample_dcm, target)
    link = tmp_path / "dropped.dcm"
    link.symlink_to(target)
    with pytest.raises(EdgeError) as refused:
        watch.read_dropped(link, 1 << 30, frozenset({os.geteuid()}))
    assert refused.value.code.value == "DROP_FILE_LINKED"
    assert watch.read_dropped(target, 1 << 30, frozenset({os.geteuid()})) == sample_dcm.read_bytes()


def test_the_files_refused_at_the_door_are_shown_to_the_technician(folder: Any) -> None:
    """A file refused before the store (not an image, undecodable, like no model's images) never
    reaches the worklist: the device screen says how many, and the newest with why."""
    from edge.tui.screens.device import queue

    drop, clock, _ = folder
    assert watch.recent_refusals(drop.settings) == (0, [])
    for name in ("a.txt", "b.txt"):
        (drop.inbox / name).write_text("not an image")
    assert settle(drop, clock)["quarantined"] == 2
    count, newest = watch.recent_refusals(drop.settings, limit=1)
    assert count == 2
    [item] = newest
    assert item["name"] in ("a.txt", "b.txt")
    assert item["reason"].startswith("INPUT_NOT_IMAGE")
    snap = {"counts": {"studies": 0, "results": 0}, "queue_depth": 0, "outbox_pending": 0}
    shown = queue({**snap, "drop_refused": count, "drop_refused_newest": newest})
    assert "2 file(s) refused at the drop folder" in shown
    assert "INPUT_NOT_IMAGE" in shown
    assert "refused at the drop folder" not in queue(snap)  # nothing refused: nothing said


def test_a_dropped_video_is_analysed_as_one_clip(folder: Any, tmp_path: Path) -> None:
    """An ultrasound loop exported as MP4 was refused "not a DICOM, PNG or JPEG file", while
    `edge infer` analysed it. It is a clip now, stored once; one cut short is refused, coded."""
    from tests.conftest import REPO

    drop, clock, store = folder
    clip = REPO / "samples" / "video" / "lung-regular-alines.mp4"
    shutil.copy(clip, drop.inbox / "loop.mp4")
    assert settle(drop, clock)["ingested"] == 1
    [row] = store.db.execute("SELECT source, frames_analysed FROM clips").fetchall()
    assert row["source"] == "file"
    assert row["frames_analysed"] >= 3
    [name] = store.db.execute("SELECT phi_original_name FROM images").fetchall()
    assert name[0] == "loop.mp4"  # what the technician dropped, to find it by
    assert not (drop.inbox / "loop.mp4").exists()
    shutil.copy(clip, drop.inbox / "again.mp4")  # the same recording: stored once
    assert settle(drop, clock)["duplicate"] == 1
    assert store.db.execute("SELECT count(*) FROM clips").fetchone()[0] == 1
    (drop.inbox / "cut.mp4").write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    assert settle(drop, clock)["waiting"] == 1  # it may still be being written
    clock.now += watch.UNFINISHED_PATIENCE_S
    assert drop.scan_once()["quarantined"] == 1  # unchanged for that long: taken as it is
    [reason] = drop.quarantine.rglob("cut.mp4.reason.txt")
    assert reason.read_text().startswith(("VIDEO_UNREADABLE", "VIDEO_SOURCE_LOST"))
    assert watch.DROPPED not in reason.read_text()  # it names the file dropped, not the copy
    assert not list((store.data_dir / "clips").rglob("*dropped*"))  # no copy left
    # A copy a killed agent left goes at the next start (one per video, by its content).
    stale = store.data_dir / "clips" / f"{watch.DROPPED}0123.mp4"
    stale.write_bytes(b"a patient's loop")
    DropFolder(drop.settings, drop._pipeline, decode_bytes)
    assert not stale.exists()


def test_a_recording_still_being_written_is_waited_for_then_analysed_whole(folder: Any) -> None:
    """A recorder writing into the inbox (or a copy that paused) left a file unchanged for a
    few seconds before it was finished: an AVI's first 38 of 90 frames were stored as the whole
    clip, and an MP4 without its index yet was quarantined while the recorder went on writing.
    An unfinished container now waits (`containers.unfinished`) and the finished file is taken."""
    from tests.conftest import REPO

    drop, clock, store = folder
    whole = (REPO / "samples" / "video" / "lung-regular-alines.mp4").read_bytes()
    growing = drop.inbox / "live.mp4"
    growing.write_bytes(whole[: len(whole) // 3])
    assert settle(drop, clock)["waiting"] == 1
    clock.now += 60  # a pause of a minute: still waited for
    assert drop.scan_once()["waiting"] == 1
    growing.write_bytes(whole)  # the recorder finishes
    assert settle(drop, clock)["ingested"] == 1
    assert store.db.execute("SELECT count(*) FROM clips").fetchone()[0] == 1
    assert not list(drop.quarantine.rglob("*.mp4"))
    empty = drop.inbox / "starting.avi"  # a recorder that has not written yet
    empty.write_bytes(b"")
    assert settle(drop, clock)["waiting"] == 1
    clock.now += watch.UNFINISHED_PATIENCE_S
    assert drop.scan_once()["quarantined"] == 1


def test_a_dropped_video_whose_analysis_keeps_killing_the_agent_is_given_up(
    folder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dropped video is analysed before anything is stored, so no job counted its attempts:
    one that killed the agent would be taken first at every start, and the folder would never
    move on. After `[worker] max_attempts` deaths during it, it is quarantined JOB_ABANDONED."""
    from tests.conftest import REPO

    drop, clock, store = folder
    clip = REPO / "samples" / "video" / "lung-regular-alines.mp4"
    shutil.copy(clip, drop.inbox / "killer.mp4")

    def dies(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt("kill -9 in the middle of the analysis")

    monkeypatch.setattr(drop._pipeline, "analyse_file", dies)
    attempts = drop.settings.worker.max_attempts
    for _ in range(attempts):  # each try dies
        with pytest.raises(KeyboardInterrupt):
            settle(drop, clock)
        drop = DropFolder(drop.settings, drop._pipeline, decode_bytes, clock=clock)  # the restart
    monkeypatch.undo()
    assert settle(drop, clock)["quarantined"] == 1
    [reason] = drop.quarantine.rglob("killer.mp4.reason.txt")
    assert reason.read_text().startswith("JOB_ABANDONED: analysing killer.mp4 was cut short")
    assert "JOB_ABANDONED" in refusal_codes(store)
    # A video analysed to its end leaves no note behind.
    shutil.copy(clip, drop.inbox / "fine.mp4")
    assert settle(drop, clock)["ingested"] == 1
    assert not (store.data_dir / "clips" / ".dropped-attempts.json").exists()
