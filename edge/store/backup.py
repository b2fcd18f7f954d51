"""Backups of the device database, and putting one back.

`backup` copies `edge.db` with SQLite's online backup API while the agent keeps working (a WAL
reader blocks no writer, and the copy is one consistent snapshot), checks the copy with
integrity_check, and only then renames it into place: a backup file that exists is complete and
sound. It is one self-contained file (rollback journal, no -wal/-shm), mode 0600 (it holds
patient data), by default `<data dir>/backups/edge-<UTC time>.db`.

What a backup holds: every row (studies, images' rows, jobs, results, clips' rows, reviews,
technicians' notes and marks, the outbox and sync state, the audit trail). What it does not:
the image, heatmap and clip files beside the database (the modality or PACS is the archive, and
they are large), the sync credential and pseudonym key (`sync/`), TensorRT engines and caches.

`restore` refuses a backup that fails integrity_check, is no edge database or was written by
newer software; it copies the backup next to the database, keeps the file it replaces as
`edge.db.damaged-<UTC time>` (with that file's -wal), removes the old -shm, and renames the copy
into place. Rows whose image file is gone since (retention) stay without their image; files
stored after the backup have no row and are swept as orphans by the agent when it starts.
Refusing while the agent or the sync agent runs is the caller's part (the CLI): the store does
not know about processes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from edge.clock import utc_now
from edge.errors import Code, EdgeError
from edge.ids import uuid7
from edge.store.database import (
    DB_NAME,
    SIDECARS,
    SchemaState,
    backup_dir,
    corrupt,
    header_problem,
    open_database,
    schema_newer,
    schema_state,
    verify,
)
from edge.store.files import DIR_MODE, FILE_MODE, fsync_dir, remove_quietly


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    size: int
    schema_version: int
    results: int


@dataclass(frozen=True)
class RestoreInfo:
    restored_from: Path
    kept_aside: Path | None
    """The database that was in place (None where there was none)."""
    schema_version: int
    results: int


def _stamp() -> str:
    """A UTC time for file names: 20260101T120000.123Z."""
    return utc_now().replace("-", "").replace(":", "")


def default_backup_path(data_dir: Path) -> Path:
    return backup_dir(data_dir) / f"edge-{_stamp()}.db"


def _write_failed(what: str, exc: OSError) -> EdgeError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return EdgeError(Code.DISK_FULL, f"no space left for {what}")
    return EdgeError(Code.STORE_WRITE_FAILED, f"cannot write {what}: {exc.strerror or exc}")


def _new_private_file(path: Path) -> None:
    """An empty file only the owner may read (created before SQLite writes patient data in it)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_and_check(source: sqlite3.Connection, target: Path) -> tuple[str | None, Database]:
    """Copy `source` into the new file `target` as one snapshot, as a single self-contained
    file; what integrity_check found (None: sound) and the copy, still open."""
    _new_private_file(target)
    copy = sqlite3.connect(str(target))
    try:
        source.backup(copy)  # all pages in one step: one consistent snapshot
        copy.execute("PRAGMA journal_mode=DELETE")  # no -wal/-shm: the backup is one file
        db = Database(copy)
        return verify(db, thorough=True), db
    except BaseException:
        copy.close()
        raise


def _results(db: Database) -> int:
    try:
        return int(db.execute("SELECT count(*) FROM results").fetchone()[0])
    except sqlite3.DatabaseError:
        return 0


def backup(data_dir: Path, dest: Path | None = None, *, busy_timeout_ms: int = 10_000) -> BackupInfo:
    """A verified copy of the database at `dest` (a new file, or a directory to put one in;
    default `<data dir>/backups/`). Refuses a damaged database: its copy would be damaged too."""
    source_path = data_dir / DB_NAME
    target = dest if dest is not None else default_backup_path(data_dir)
    if target.is_dir():
        target = target / default_backup_path(data_dir).name
    if os.path.lexists(target):
        raise EdgeError(
            Code.STORE_WRITE_FAILED, f"{target} exists: a backup never overwrites a file; name a new one"
        )
    try:
        target.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_failed(f"the backup folder {target.parent}", exc) from exc
    tmp = target.with_name(f".{target.name}.{uuid7()}.tmp")
    # Opened as a reader: a database of newer software may be backed up; a damaged one refuses.
    source = open_database(source_path, busy_timeout_ms, reader=True)
    try:
        problem, copy = _copy_and_check(source.conn, tmp)
        try:
            if problem is not None:
                raise corrupt(source_path, problem)
            state, results = schema_state(copy), _results(copy)
        finally:
            copy.close()
        _fsync(tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        raise _write_failed(f"the backup {target}", exc) from exc
    except sqlite3.Error as exc:
        if "full" in str(exc).lower():
            raise EdgeError(Code.DISK_FULL, f"no space left for the backup {target}") from exc
        raise EdgeError(Code.STORE_WRITE_FAILED, f"cannot write the backup {target}: {exc}") from exc
    finally:
        source.close()
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return BackupInfo(target, target.stat().st_size, state.version, results)


def _invalid(src: Path, why: str) -> EdgeError:
    return EdgeError(
        Code.BACKUP_INVALID,
        f"the backup {src} cannot be restored: {why}; nothing was changed. Choose another",
    )


def restore(data_dir: Path, src: Path, *, busy_timeout_ms: int = 10_000) -> RestoreInfo:
    """Put the backup `src` in place of the database (nothing may have the database open)."""
    if not src.is_file():
        raise _invalid(src, "no such file")
    damage = header_problem(src)
    if damage is not None:
        raise _invalid(src, damage)
    current = data_dir / DB_NAME
    try:
        data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_failed(f"the data directory {data_dir}", exc) from exc
    tmp = data_dir / f".{DB_NAME}.restore-{uuid7()}.tmp"
    try:
        state, results = _verified_copy(src, tmp)
        _fsync(tmp)
        kept = _set_aside(current)
        os.replace(tmp, current)
        fsync_dir(data_dir)
    except OSError as exc:
        raise _write_failed(f"the restored database {current}", exc) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    # Back to WAL with the store's pragmas, and an older backup brought up to this schema.
    open_database(current, busy_timeout_ms).close()
    return RestoreInfo(src, kept, state.version, results)


def _verified_copy(src: Path, tmp: Path) -> tuple[SchemaState, int]:
    """Copy the backup to `tmp`; refused unless sound, an edge database, and not newer."""
    # Read-only, and immutable unless a -wal came with it: nothing is written beside the
    # backup (a USB stick may be read-only; `backup` makes one self-contained file).
    has_wal = os.path.lexists(src.with_name(src.name + "-wal"))
    uri = f"{src.absolute().as_uri()}?mode=ro" + ("" if has_wal else "&immutable=1")
    try:
        source = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise _invalid(src, str(exc)) from exc
    try:
        problem, copy = _copy_and_check(source, tmp)
    except sqlite3.Error as exc:
        if "full" in str(exc).lower():
            raise EdgeError(Code.DISK_FULL, f"no space left to restore into {tmp.parent}") from exc
        raise _invalid(src, str(exc)) from exc
    finally:
        source.close()
    try:
        if problem is not None:
            raise _invalid(src, f"integrity_check found {problem}")
        state, results = schema_state(copy), _results(copy)
    finally:
        copy.close()
    if not state.applied:
        raise _invalid(src, "it is not an edge database (no edge migration recorded)")
    if state.newer:
        raise schema_newer(src, state)
    return state, results


def _set_aside(current: Path) -> Path | None:
    """Keep the database in place as edge.db.damaged-<time> (its -wal with it: it may hold the
    last committed rows) and take its -wal/-shm away, so none is applied to the restored file."""
    aside = current.with_name(f"{current.name}.damaged-{_stamp()}")
    wal, shm = (current.with_name(current.name + suffix) for suffix in SIDECARS)
    if os.path.lexists(wal):
        os.replace(wal, aside.with_name(aside.name + "-wal"))
    if os.path.lexists(shm):
        remove_quietly(shm)
    if not os.path.lexists(current):
        return None
    try:
        os.link(current, aside)  # edge.db stays in place until the restored file replaces it
    except OSError:
        os.replace(current, aside)  # no hard links here (or not a file): a moment without edge.db
    if aside.is_file():
        with contextlib.suppress(OSError):
            os.chmod(aside, FILE_MODE)  # patient data
    return aside
