"""Real power loss: the data directory on tools/unsyncedfs.py, where a cut throws away every byte
not fsynced (docs/power-loss.md). First the harness itself is shown to lose what it must lose,
so the campaign cannot pass vacuously; then a short campaign (tools/powercut.py) of cuts during
ingest and sync."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.store.files import write_atomically
from tools.powercut import failed, run
from tools.unsyncedfs import PowerDisk

pytestmark = pytest.mark.slow


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PowerDisk]:
    reason = PowerDisk.unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"power-loss tests cannot run: {reason} (.ci/run installs fuse3)")
        pytest.skip(reason)
    powered = PowerDisk(tmp_path / "disk", tmp_path / "mnt", tmp_path / "unsyncedfs.log")
    try:
        powered.mount()
        yield powered
    finally:
        powered.close()
        assert not os.path.ismount(tmp_path / "mnt")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reboot(disk: PowerDisk) -> dict[str, int]:
    lost = disk.cut()
    disk.mount()
    return lost


def test_a_cut_loses_exactly_what_was_not_fsynced(disk: PowerDisk) -> None:
    root = disk.mountpoint
    (root / "never-synced").write_bytes(b"x" * 10_000)
    (root / "synced-file-only").write_bytes(b"data")
    fsync_path(root / "synced-file-only")
    (root / "sub").mkdir()
    (root / "sub" / "kept").write_bytes(b"kept")
    fsync_path(root / "sub" / "kept")
    fsync_path(root / "sub")
    assert reboot(disk)["files"] >= 1
    # Names made durable by no directory fsync are gone, even for a synced file and a directory.
    assert os.listdir(root) == []

    (root / "sub").mkdir()
    (root / "sub" / "kept").write_bytes(b"kept")
    fsync_path(root / "sub" / "kept")
    fsync_path(root / "sub")
    fsync_path(root)
    with open(root / "sub" / "kept", "r+b") as handle:
        handle.write(b"LOST")  # overwritten, never synced
    (root / "sub" / "unsynced-name").write_bytes(b"")
    reboot(disk)
    assert os.listdir(root / "sub") == ["kept"]
    assert (root / "sub" / "kept").read_bytes() == b"kept"

    os.replace(root / "sub" / "kept", root / "renamed")  # a rename not made durable is undone
    reboot(disk)
    assert (root / "sub" / "kept").read_bytes() == b"kept"
    assert not (root / "renamed").exists()


def test_sqlite_keeps_full_sync_commits_and_loses_unsynced_ones(disk: PowerDisk) -> None:
    path = disk.mountpoint / "test.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    with conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    for value in range(50):
        with conn:
            conn.execute("INSERT INTO t VALUES (?)", (value,))
    conn.execute("PRAGMA synchronous=OFF")
    for value in range(50, 60):
        with conn:
            conn.execute("INSERT INTO t VALUES (?)", (value,))
    lost = reboot(disk)
    conn.close()  # its file handles died with the old mount
    assert lost["wal"] == 1
    with sqlite3.connect(path) as again:
        assert again.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert again.execute("SELECT count(*), max(x) FROM t").fetchone() == (50, 49)


def test_write_atomically_survives_a_cut_in_a_new_directory(disk: PowerDisk) -> None:
    """The store writes images under images/<day>/, a directory made on the day's first image:
    the file is durable only if the new directories' own names are."""
    target = disk.mountpoint / "edge" / "images" / "2026-01-01" / "image.png"
    write_atomically(target, b"pixels")
    reboot(disk)
    assert target.read_bytes() == b"pixels"


def test_a_drop_folder_input_moved_into_a_new_day_survives_a_cut(disk: PowerDisk) -> None:
    """The drop folder moves each input to processed/<day>/ or quarantine/<day>/: the move is
    durable only if the new day directory's name is (found by the campaign; fixed with
    make_dirs)."""
    from edge.config import load_settings
    from edge.ingest.watch import DropFolder

    settings = load_settings(data_dir=disk.mountpoint / "data", watch={"inbox": disk.mountpoint / "inbox"})
    folder = DropFolder(settings, None, lambda data, name: None)  # type: ignore[arg-type]
    dropped = folder.inbox / "scan.png"
    write_atomically(dropped, b"pixels")  # a complete, durable input, as a modality leaves it
    folder._move_now(dropped, folder.processed, None)
    reboot(disk)
    [moved] = list(folder.processed.rglob("scan.png"))
    assert moved.read_bytes() == b"pixels"
    assert not dropped.exists()


def test_power_cuts_during_ingest_and_sync_lose_nothing_acknowledged(disk: PowerDisk, tmp_path: Path) -> None:
    if not shutil.which("storescu"):
        pytest.fail("dcmtk's storescu is missing (.ci/run installs dcmtk)")
    disk.close()  # the campaign mounts its own
    work = tmp_path / "campaign"
    work.mkdir()
    report = run(cuts=10, seed=7, work=work)
    assert not failed(report), json.dumps(report, indent=1)
    assert report["cuts"] == 10
    # both clients got through: the listener accepts storescu's AE title (it once refused every send)
    assert min(report["acknowledged_by"].values()) > 0, report["acknowledged_by"]
    assert report["cuts_losing_unsynced"]["any"] > 0, report  # the cuts threw something away
    assert report["final"]["hub_results"] == report["final"]["device_results"] > 0
