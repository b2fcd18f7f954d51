"""Damaged and foreign databases: every command refuses with a code, never a traceback, and
nothing writes into a database of newer software; backups and restores (edge store)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edge.cli import cli
from edge.cli.base import EXIT_NEEDS_A_PERSON
from edge.config import Settings, load_settings
from edge.errors import NEEDS_A_PERSON, Code, EdgeError
from edge.operations.doctor import run_checks
from edge.processes import InstanceLock
from edge.store import Store
from edge.store.schema import latest_version, schema_version
from tests.conftest import MODELS

RUN_TIMEOUT_S = 90  # `edge run` must refuse at start, long before this


# ---------------------------------------------------------------------- helpers


def cli_run(data: Path, *args: str) -> tuple[int, str, str]:
    """In-process; any exception but SystemExit (a traceback) fails the test."""
    result = CliRunner().invoke(cli, ["--data-dir", str(data), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def subprocess_run(data: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_MODELS__DIR": str(MODELS), "EDGE_STORE__RESERVE_MB": "0"}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "edge", "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_TEMPLATE: list[Path] = []  # made once per test process, inside a test's isolated environment


@pytest.fixture
def data(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, sample_png: Path) -> Path:
    """A data directory with one analysed image, closed cleanly (no -wal left)."""
    if not _TEMPLATE:
        template = tmp_path_factory.mktemp("template") / "data"
        code, _, err = cli_run(template, "infer", str(sample_png))
        assert code == 0, err
        assert not (template / "edge.db-wal").exists()
        _TEMPLATE.append(template)
    folder = tmp_path / "data"
    shutil.copytree(_TEMPLATE[0], folder)
    return folder


def truncate(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def random_bytes(db: Path) -> None:
    db.write_bytes(os.urandom(db.stat().st_size))


def index_overwritten(db: Path) -> None:
    """Damage that opening does not read (an index's page): only quick_check finds it."""
    with sqlite3.connect(db) as conn:
        page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'images_study'").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with db.open("r+b") as handle:
        handle.seek((page - 1) * size)
        handle.write(os.urandom(size))


def pages_overwritten(db: Path) -> None:
    """The header and first page intact, every table's pages garbage: opens, then fails reading."""
    raw = bytearray(db.read_bytes())
    raw[4096:] = os.urandom(len(raw) - 4096)
    db.write_bytes(bytes(raw))


def newer_schema(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
            " VALUES ('edge', 'm999_future', 'now')"
        )
    conn.close()


DAMAGE: dict[str, tuple[Callable[[Path], None], Code]] = {
    "truncated": (truncate, Code.STORE_CORRUPT),
    "random bytes": (random_bytes, Code.STORE_CORRUPT),
    "pages overwritten": (pages_overwritten, Code.STORE_CORRUPT),
    "newer schema": (newer_schema, Code.STORE_SCHEMA_NEWER),
}


def read_only_prefix(data: Path) -> Iterator[tuple[str, ...]]:
    """Run a command with `data` read-only: a read-only bind mount as root (permissions do not
    stop root), else the directory's write bit taken away."""
    if os.geteuid() != 0:
        data.chmod(0o555)
        try:
            yield ()
        finally:
            data.chmod(0o700)
        return
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here: {probe.stderr.decode().strip()}")
    yield ("unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(data))


# ---------------------------------------------------------------------- every command refuses


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", ["status", "infer"])
def test_status_and_infer_refuse_a_bad_database_with_its_code(
    data: Path, sample_dcm: Path, damage: str, command: str
) -> None:
    mutate, code = DAMAGE[damage]
    db = data / "edge.db"
    mutate(db)
    before = digest(db)
    args = ["status"] if command == "status" else ["infer", str(sample_dcm)]
    exit_code, out, err = cli_run(data, *args)
    assert exit_code == 1
    [line] = [line for line in err.splitlines() if line.startswith(code.value)]
    assert line.startswith(f"{code.value}: ")
    assert digest(db) == before, "nothing may be written into it"
    if code is Code.STORE_CORRUPT:
        assert "edge doctor" in line
        assert f"edge --data-dir {data.absolute()} store restore " in line
    else:
        assert "Upgrade edge" in line
        assert "newer than this software" in line
        if command == "status":  # a pure reader still reports what it can
            assert "results 1" in out


def test_damage_found_in_the_middle_of_a_command_is_still_coded(data: Path) -> None:
    """The database opens (its damage is in an index), and a read fails later: no traceback."""
    index_overwritten(data / "edge.db")
    code, _, err = cli_run(data, "status")
    assert code == 1
    assert err.startswith("STORE_CORRUPT: ")
    assert "malformed" in err


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "index overwritten", "newer schema"])
def test_run_refuses_at_start_with_its_code_in_the_log(
    data: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At once, before any thread starts, and under systemd at error priority in the journal."""
    mutate, code = DAMAGE.get(damage, (index_overwritten, Code.STORE_CORRUPT))
    db = data / "edge.db"
    mutate(db)
    before = digest(db)
    monkeypatch.setenv("JOURNAL_STREAM", "8:1")  # journald's marker: lines carry their priority
    result = subprocess_run(data, "run", "--no-dicom", "--no-watch")
    # 78: systemd does not restart it (RestartPreventExitStatus=), a restart cannot mend it
    assert result.returncode == EXIT_NEEDS_A_PERSON, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"<3>edge.service: {code.value}: " in result.stderr
    assert digest(db) == before
    assert not (data / "agent.json").exists()  # it never looked like a running agent


def test_a_read_only_data_directory_is_refused_by_every_command(data: Path, sample_dcm: Path) -> None:
    before = digest(data / "edge.db")
    for prefix in read_only_prefix(data):
        for args in (["status"], ["infer", str(sample_dcm)], ["run", "--no-dicom", "--no-watch"]):
            result = subprocess_run(data, *args, prefix=prefix)
            status = EXIT_NEEDS_A_PERSON if args[0] == "run" else 1  # a service is not restarted
            assert result.returncode == status, (args, result.stderr[-2000:])
            assert "Traceback" not in result.stderr, result.stderr[-3000:]
            assert "STORE_READ_ONLY: " in result.stderr, (args, result.stderr[-2000:])
            assert "read-write" in result.stderr
        doctor = subprocess_run(data, "doctor", prefix=prefix)
        assert doctor.returncode == 2
        assert "database: STORE_READ_ONLY" in doctor.stdout.replace("\n", " ")
    assert digest(data / "edge.db") == before


def test_an_unopenable_database_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "edge.db").mkdir(parents=True)
    code, _, err = cli_run(data, "status")
    assert code == 1
    assert err.startswith("STORE_UNOPENABLE: ")
    (data / "edge.db").rmdir()
    Store(data).close()
    (data / "edge.db-wal").mkdir()  # a WAL that cannot work
    with pytest.raises(EdgeError) as refused:
        Store(data)
    assert refused.value.code is Code.STORE_UNOPENABLE
    assert "edge.db-wal" in refused.value.message


def test_an_emptied_database_beside_stored_images_is_truncated_not_new(data: Path) -> None:
    """SQLite would take a 0-byte file for a new database: an empty store, and the agent would
    then sweep every stored image as an orphan."""
    os.truncate(data / "edge.db", 0)
    with pytest.raises(EdgeError) as refused:
        Store(data)
    assert refused.value.code is Code.STORE_CORRUPT
    assert "0 bytes" in refused.value.message


def test_a_deleted_database_beside_stored_images_is_refused_and_restorable(data: Path) -> None:
    """A deleted edge.db was taken for a new device: an empty store was made in its place and
    the agent swept every stored image as an orphan two minutes later (an outside-style check)."""
    assert cli_run(data, "store", "backup")[0] == 0
    backup = newest_backup(data)
    for name in ("edge.db", "edge.db-wal", "edge.db-shm"):
        (data / name).unlink(missing_ok=True)
    code, _, err = cli_run(data, "status")
    assert code == 1
    assert "STORE_CORRUPT" in err
    assert "missing, though stored images (or their heatmaps) lie beside it" in err
    assert not (data / "edge.db").exists()  # nothing made in its place
    _, out, _ = cli_run(data, "doctor", "--json")
    [check] = [c for c in json.loads(out) if c["name"] == "database"]
    assert (check["level"], "STORE_CORRUPT" in check["message"]) == ("fail", True)  # as status says
    # Meanwhile the sweep set its image aside (a store without its rows): restoring puts it back
    # at once, before a sync could withdraw it from the hub.
    [image] = [p for p in (data / "images").rglob("*") if p.is_file()]
    aside = data / "orphans" / image.relative_to(data)
    aside.parent.mkdir(parents=True)
    image.rename(aside)
    code, out, err = cli_run(data, "store", "restore", str(backup))
    assert code == 0, err
    assert "1 file(s) put back from orphans/" in out
    assert image.exists()
    with Store(data) as store:
        assert store.db.execute("SELECT count(*) FROM results").fetchone()[0] == 1


def test_the_tui_and_the_sync_agent_refuse_a_newer_schema(data: Path) -> None:
    from edge.tui.app import create_app

    newer_schema(data / "edge.db")
    settings = load_settings(data_dir=data, models={"dir": MODELS})
    with pytest.raises(EdgeError) as refused:
        create_app(settings)  # the technician's marks would write into it
    assert refused.value.code is Code.STORE_SCHEMA_NEWER
    with pytest.raises(EdgeError) as refused:
        Store(data)  # every writer's way in: the agent, infer, sync
    assert refused.value.code is Code.STORE_SCHEMA_NEWER
    with Store(data, reader=True) as reader:  # status and doctor: read, never written
        assert reader.schema.newer
        assert reader.schema.unknown == ("m999_future",)
        assert reader.counts()["results"] == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.audit("test", "x", None, {})


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "index overwritten"])
def test_doctor_names_a_damaged_database(data: Path, damage: str) -> None:
    DAMAGE.get(damage, (index_overwritten,))[0](data / "edge.db")
    settings = load_settings(data_dir=data, models={"dir": MODELS})
    check = next(c for c in run_checks(settings) if c.name == "database")
    assert check.level == "fail"
    assert check.message.startswith("STORE_CORRUPT: ")
    assert "store restore" in check.message


# ---------------------------------------------------------------------- backup and restore


def newest_backup(data: Path) -> Path:
    [backup] = sorted((data / "backups").glob("*.db"))
    return backup


def test_backup_and_restore_round_trip(data: Path, sample_dcm: Path) -> None:
    code, out, err = cli_run(data, "store", "backup")
    assert code == 0, err
    backup = newest_backup(data)
    assert str(backup) in out
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600  # patient data
    assert not list((data / "backups").glob("*-wal"))
    assert not list((data / "backups").glob(".*"))
    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 1
    conn.close()

    assert cli_run(data, "infer", str(sample_dcm))[0] == 0  # a second result, after the backup
    with sqlite3.connect(data / "edge.db") as conn:  # a WAL with frames of its own, saved
        conn.execute("CREATE TABLE scratch (x)")
        shutil.copy(data / "edge.db-wal", data / "saved-wal")
    conn.close()
    truncate(data / "edge.db")
    code, _, err = cli_run(data, "status")
    assert code == 1
    assert f"`edge --data-dir {data.absolute()} store restore {backup}`" in err  # the exact command
    shutil.copy(data / "saved-wal", data / "edge.db-wal")  # the old database's -wal and -shm
    (data / "edge.db-shm").write_bytes(b"\0" * 32768)

    code, out, err = cli_run(data, "store", "restore", str(backup))
    assert code == 0, err
    [aside] = [path for path in data.glob("edge.db.damaged-*") if not path.name.endswith("-wal")]
    assert str(aside) in out
    assert aside.stat().st_size < backup.stat().st_size  # the damaged file, kept
    assert (aside.parent / (aside.name + "-wal")).read_bytes() == (data / "saved-wal").read_bytes()
    assert not (data / "edge.db-shm").exists()
    assert not (data / "edge.db-wal").exists()
    code, out, _ = cli_run(data, "status", "--json")
    assert code == 0
    assert json.loads(out)["counts"]["results"] == 1  # the backup's state
    with Store(data) as store:
        assert store.integrity() == "ok"
        assert "scratch" not in store.db.table_names()  # the old WAL was not replayed onto it


def test_backup_is_consistent_while_a_writer_holds_a_transaction(data: Path, tmp_path: Path) -> None:
    """The agent keeps writing during a backup: the copy is the last committed state."""
    (tmp_path / "copies").mkdir()  # DEST a folder: a new file in it
    with Store(data) as agent:
        agent.db.conn.execute("BEGIN IMMEDIATE")
        agent.writer.audit("agent", "uncommitted", None, {})
        code, _out, err = cli_run(data, "store", "backup", str(tmp_path / "copies"))
        agent.db.conn.execute("ROLLBACK")
    assert code == 0, err
    [copy] = (tmp_path / "copies").glob("edge-*.db")
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT count(*) FROM audit WHERE action = 'uncommitted'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 1
    conn.close()
    code, _, err = cli_run(data, "store", "backup", str(copy))
    assert code == 1
    assert err.startswith("STORE_WRITE_FAILED: ")  # never overwrites


def test_backup_refuses_a_damaged_database(data: Path) -> None:
    pages_overwritten(data / "edge.db")
    code, _, err = cli_run(data, "store", "backup")
    assert code == 1
    assert err.startswith("STORE_CORRUPT: ")
    assert not list((data / "backups").glob("*"))


@pytest.fixture
def backup(data: Path) -> Path:
    assert cli_run(data, "store", "backup")[0] == 0
    return newest_backup(data)


def settings_for(data: Path) -> Settings:
    return load_settings(data_dir=data, models={"dir": MODELS})


def test_restore_is_refused_while_the_agent_runs(data: Path, backup: Path) -> None:
    from edge.operations.health import agent_lock

    before = digest(data / "edge.db")
    with InstanceLock(agent_lock(settings_for(data)), "agent"):  # what a running `edge run` holds
        code, _, err = cli_run(data, "store", "restore", str(backup))
    assert code == 1
    assert err.startswith(f"STORE_IN_USE: the agent is running (pid {os.getpid()})")
    assert "systemctl stop edge-agent" in err
    assert digest(data / "edge.db") == before
    assert not list(data.glob("edge.db.damaged-*"))


def test_restore_is_refused_while_the_sync_agent_runs(data: Path, backup: Path) -> None:
    from edge.sync import sync_lock

    with InstanceLock(sync_lock(settings_for(data)), "sync agent"):
        code, _, err = cli_run(data, "store", "restore", str(backup))
    assert code == 1
    assert err.startswith("STORE_IN_USE: the sync agent is running")


def test_no_agent_starts_while_a_restore_holds_the_store(data: Path, backup: Path) -> None:
    """The restore holds both instance locks while the files change."""
    from edge.operations.health import agent_lock
    from edge.store import backup as backups

    settings = settings_for(data)
    seen: list[str] = []

    def restore_and_try_an_agent(*args: object, **kwargs: object) -> object:
        try:
            InstanceLock(agent_lock(settings), "agent").acquire()
        except EdgeError as error:
            seen.append(error.code.value)
        return real(*args, **kwargs)

    real = backups.restore
    backups.restore = restore_and_try_an_agent  # type: ignore[assignment]
    try:
        assert cli_run(data, "store", "restore", str(backup))[0] == 0
    finally:
        backups.restore = real
    assert seen == ["ALREADY_RUNNING"]


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "pages overwritten", "not edge", "missing"])
def test_restore_refuses_a_corrupt_backup_and_changes_nothing(
    data: Path, backup: Path, tmp_path: Path, damage: str
) -> None:
    if damage == "not edge":
        backup = tmp_path / "other.db"
        with sqlite3.connect(backup) as conn:
            conn.execute("CREATE TABLE t (x)")
        conn.close()
    elif damage == "missing":
        backup = tmp_path / "missing.db"
    else:
        DAMAGE[damage][0](backup)
    before = digest(data / "edge.db")
    code, _, err = cli_run(data, "store", "restore", str(backup))
    assert code == 1
    assert err.startswith("BACKUP_INVALID: "), err
    assert "nothing was changed" in err
    assert digest(data / "edge.db") == before
    assert not list(data.glob("edge.db.damaged-*"))
    assert not list(data.glob(".*.tmp"))


def test_restore_refuses_a_backup_of_newer_software(data: Path, backup: Path) -> None:
    newer_schema(backup)
    before = digest(data / "edge.db")
    code, _, err = cli_run(data, "store", "restore", str(backup))
    assert code == 1
    assert err.startswith("STORE_SCHEMA_NEWER: ")
    assert digest(data / "edge.db") == before


def _open_at_once(path: str, barrier: Any, out: Any) -> None:
    barrier.wait()
    try:
        with Store(Path(path)):
            out.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the parent as text
        out.put(f"{type(exc).__name__}: {exc}")


def test_processes_creating_a_new_database_at_once_all_open_it(tmp_path: Path) -> None:
    """Each reads which migrations are pending, then applies them: one may find a migration the
    other applied meanwhile ("table studies already exists", "duplicate column name"). Before
    the retry, 15 of 20 rounds of six processes had such a failure."""
    context = multiprocessing.get_context("fork")
    for round_ in range(5):
        folder = tmp_path / f"round-{round_}"
        barrier, out = context.Barrier(6), context.Queue()
        workers = [context.Process(target=_open_at_once, args=(str(folder), barrier, out)) for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [out.get(timeout=5) for _ in workers] == ["ok"] * 6
        with Store(folder) as store:
            assert schema_version(store.db) == latest_version()


def test_a_migrations_table_left_without_its_unique_index_is_healed(tmp_path: Path) -> None:
    """sqlite-utils makes the migrations table, then its unique index: a process that found the
    database locked in between retried with the table there and never made the index, and two
    processes then both recorded a migration (CI once: 14 recorded of 13). Opening heals it."""
    from edge.store.database import MIGRATIONS_INDEX

    with Store(tmp_path) as store:
        store.db.execute(f"DROP INDEX [{MIGRATIONS_INDEX}]")
        first = store.db.execute(
            "SELECT migration_set, name, applied_at FROM _sqlite_migrations LIMIT 1"
        ).fetchone()
        store.db.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES (?, ?, ?)", list(first)
        )
        store.db.conn.commit()
        assert schema_version(store.db) == latest_version() + 1  # the raced state
    with Store(tmp_path) as store:
        assert schema_version(store.db) == latest_version()
        index = "SELECT sql FROM sqlite_master WHERE name = ?"
        assert "UNIQUE" in store.db.execute(index, [MIGRATIONS_INDEX]).fetchone()[0]


def test_a_full_disk_read_as_an_io_error_is_disk_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite creating its -shm file on a full disk says "disk I/O error": read as a failing disk
    (STORE_UNOPENABLE, which needs a person) the agent stayed down after space came back."""
    from edge.store import database

    error = sqlite3.OperationalError("disk I/O error")
    assert database.refusal(error, tmp_path / "edge.db").code is Code.STORE_UNOPENABLE  # space here

    class Full:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(os, "statvfs", lambda _: Full())
    refused = database.refusal(error, tmp_path / "edge.db")
    assert refused is not None
    assert refused.code is Code.DISK_FULL
    assert Code.DISK_FULL not in NEEDS_A_PERSON


def test_a_recording_being_written_before_the_store_is_opened_is_no_stored_file(tmp_path: Path) -> None:
    """A live clip writes its `.recording-*` before a fresh device's store is first opened: that
    is no stored file, and the new store is made (a deleted database beside stored files is not)."""
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    (data / "clips" / ".recording-abc.mp4").write_bytes(b"being written")
    (data / "clips" / ".dropped-attempts.json").write_text("{}")
    with Store(data) as store:
        assert store.counts()["results"] == 0
