"""The watched drop folder: complete files only, moved after commit, never processed twice."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from edge.config import Settings
from edge.imaging.decode import decode_bytes
from edge.ingest.watch import DropFolder
from edge.pipeline import Pipeline
from edge.store import Store
from tests.conftest import gradient, png_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def folder(settings: Settings, store: Store) -> tuple[DropFolder, Clock, Store]:
    clock = Clock()
    watched = settings.model_copy(update={"watch": settings.watch.model_copy(update={"settle_s": 2.0})})
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
    assert settle(drop, clock) == {
        "ingested": 0,
        "duplicate": 0,
        "quarantined": 0,
        "waiting": 0,
        "deferred": 0,
    }
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
    assert settle(drop, clock)["deferred"] == 1
    assert (drop.inbox / "a.png").exists()
    assert store.counts()["images"] == 0


def test_the_same_name_twice_keeps_both(folder: Any) -> None:
    drop, clock, _ = folder
    (drop.inbox / "x.png").write_bytes(png_bytes(gradient()))
    settle(drop, clock)
    (drop.inbox / "x.png").write_bytes(png_bytes(gradient(70, 50)))
    settle(drop, clock)
    assert sorted(p.name for p in drop.processed.rglob("*.png")) == ["x.1.png", "x.png"]
