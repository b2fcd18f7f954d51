"""Opening the device database: the one path every process takes, and what it refuses.

Every `Store` (the agent's threads, `edge infer`, `edge status`, the TUI, the sync agent, the
doctor) opens `edge.db` here. The directory and files are checked with stat() (never by opening
the database file: see `connect`), the file's size against the page count in its header, and
whatever SQLite says is turned into a coded refusal whose sentence names the next step, never a
traceback:

- damaged (`STORE_CORRUPT`): random bytes, a truncated file (its header counts more pages than
  the file holds), "file is not a database", "database disk image is malformed";
- read-only (`STORE_READ_ONLY`): the data directory, the database or its -wal/-shm may not be
  written (a read-only mount, permissions);
- unopenable (`STORE_UNOPENABLE`): not a regular file, unreadable, an I/O error, or a filesystem
  on which write-ahead logging does not work;
- written by newer software (`STORE_SCHEMA_NEWER`): a migration this version does not know. A
  writer refuses it; a pure reader (`reader=True`: `edge status`, `edge doctor`) may open it,
  read-only (`PRAGMA query_only`), and says so (`Store.schema.newer`).

`verify` is the one answer to "is the store healthy" (quick_check, or integrity_check when
thorough): the agent runs it when it starts, `edge doctor` and the backups use it.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlite_utils import Database

from edge.errors import Code, EdgeError
from edge.store import schema
from edge.store.files import DIR_MODE

T = TypeVar("T")

DB_NAME = "edge.db"
SIDECARS = ("-wal", "-shm")
BACKUP_DIR = "backups"
_MAGIC = b"SQLite format 3\x00"
_WAL_HEADER = 32


@dataclass(frozen=True)
class SchemaState:
    """The migrations a database records, against the ones this software knows."""

    applied: tuple[str, ...]
    known: tuple[str, ...]

    @property
    def unknown(self) -> tuple[str, ...]:
        """Applied by newer software: this version does not know what they changed."""
        return tuple(name for name in self.applied if name not in self.known)

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(name for name in self.known if name not in self.applied)

    @property
    def newer(self) -> bool:
        return bool(self.unknown)

    @property
    def version(self) -> int:
        return len(self.applied)

    @property
    def latest(self) -> int:
        return len(self.known)


def schema_state(db: Database) -> SchemaState:
    return SchemaState(
        tuple(m.name for m in schema.migrations.applied(db)),
        tuple(m.name for m in schema.migrations._migrations),
    )


def open_database(
    path: Path,
    busy_timeout_ms: int = 10_000,
    *,
    migrate: bool = True,
    reader: bool = False,
    check: bool = False,
) -> Database:
    """Open (creating if needed) the SQLite file with the pragmas the store relies on, or refuse
    with a code. `migrate` False for a reader that opens often (the TUI's refresh) once the schema
    is known current; `reader` True for one that writes nothing and may show a newer schema;
    `check` runs quick_check (the agent, once at start)."""
    return connect(path, busy_timeout_ms, migrate=migrate, reader=reader, check=check)[0]


def connect(
    path: Path,
    busy_timeout_ms: int = 10_000,
    *,
    migrate: bool = True,
    reader: bool = False,
    check: bool = False,
) -> tuple[Database, SchemaState]:
    """`open_database`, with the schema as found (before any migration).

    Nothing here opens the database file itself: closing any descriptor of it would drop the
    POSIX locks every SQLite connection of this process holds on it (the agent's threads each
    have one), and another process could then checkpoint and delete the WAL under them.
    Only stat() and SQLite look at it; `preflight` reads the header where no connection is open."""
    _refuse_by_stat(path)
    try:
        conn = sqlite3.connect(str(path), timeout=busy_timeout_ms / 1000)
    except sqlite3.Error as exc:
        coded = refusal(exc, path)
        if coded is None:
            raise
        raise coded from exc
    try:
        conn.row_factory = sqlite3.Row
        db = Database(conn)
        # A brand-new file: switching it to WAL needs a lock SQLite's busy handler does not wait
        # for, so a process opening it at the same moment as another waits here instead.
        mode = str(
            _while_locked(busy_timeout_ms, lambda: db.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        ).lower()
        if mode != "wal":  # e.g. a network filesystem without shared memory: crash safety is gone
            raise unopenable(path, f"SQLite cannot use write-ahead logging there (journal mode {mode})")
        db.execute("PRAGMA synchronous=FULL")  # a committed result survives a power cut
        db.execute("PRAGMA foreign_keys=ON")
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        damage = _truncation(db, path)
        if damage is not None:
            raise corrupt(path, damage)
        state = schema_state(db)
        if state.newer:
            if not reader:
                raise schema_newer(path, state)
            db.execute("PRAGMA query_only=ON")  # nothing this version writes goes into it
        elif migrate:
            _migrate(db, busy_timeout_ms)
        if check and (found := verify(db)) is not None:
            raise corrupt(path, found)
    except sqlite3.Error as exc:
        conn.close()
        coded = refusal(exc, path)
        if coded is None:
            raise
        raise coded from exc
    except BaseException:
        conn.close()
        raise
    return db, state


def _refuse_by_stat(path: Path) -> None:
    problem = _access_problem(path)
    if problem is not None:
        raise problem
    damage = _size_problem(path)
    if damage is not None:
        raise corrupt(path, damage)


def preflight(path: Path) -> None:
    """Refuse, without asking SQLite, a database (and data directory) that cannot be used: not
    writable, not a regular file, or damaged by its header. It reads the file, so only where this
    process has no connection to it: `edge run` does it first, before the agent's lock."""
    problem = _access_problem(path)
    if problem is not None:
        raise problem
    damage = header_problem(path)
    if damage is not None:
        raise corrupt(path, damage)


def _while_locked(
    busy_timeout_ms: int,
    action: Callable[[], T],
    signs: tuple[str, ...] = ("locked",),
    before_retry: Callable[[], object] = lambda: None,
) -> T:
    """`action`, tried again while it fails with one of `signs` (another process at work on the
    same file), until the busy timeout has passed."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            return action()
        except (sqlite3.OperationalError, sqlite3.IntegrityError) as exc:
            if not any(sign in str(exc) for sign in signs) or time.monotonic() > deadline:
                raise
            before_retry()
            time.sleep(0.05)


# What SQLite says when another process applied the same migration between our reading which are
# pending and our applying it: every migration is one transaction, so ours rolled back whole.
_RACED = ("locked", "already exists", "duplicate column name", "UNIQUE constraint failed: _sqlite_migrations")


def _migrate(db: Database, busy_timeout_ms: int) -> None:
    """Apply pending migrations. Processes or threads opening a new database at the same moment
    race: one may find it locked (creating the migrations table is not covered by the busy
    handler), or find that a migration it read as pending was applied by the other meanwhile
    ("table already exists"). Either way it rolls back and reads again, within the busy timeout."""
    _while_locked(busy_timeout_ms, lambda: _migrations_table(db), ("locked",), db.conn.rollback)
    _while_locked(busy_timeout_ms, lambda: schema.migrations.apply(db), _RACED, db.conn.rollback)


# sqlite-utils' name for the unique index on its migrations table (`create_index`'s default).
MIGRATIONS_INDEX = "idx__sqlite_migrations_migration_set_name"


def _migrations_table(db: Database) -> None:
    """The migrations table with its unique index, made in one transaction. sqlite-utils makes
    them in two steps: a process that found the database locked between them retried with the
    table there, and the index was never made; two processes could then both record a migration
    that ran twice without error (CI once: 14 recorded of 13). A database an older open left so is
    healed here: its first record of each migration kept, then the index made. Only reads the
    schema when the index is there (every open)."""
    found = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?"
    if db.execute(found, [MIGRATIONS_INDEX]).fetchone():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS [_sqlite_migrations] ([id] INTEGER PRIMARY KEY,"
            " [migration_set] TEXT, [name] TEXT, [applied_at] TEXT)"
        )
        db.execute(
            "DELETE FROM _sqlite_migrations WHERE rowid NOT IN"
            " (SELECT min(rowid) FROM _sqlite_migrations GROUP BY migration_set, name)"
        )
        db.execute(
            f"CREATE UNIQUE INDEX IF NOT EXISTS [{MIGRATIONS_INDEX}]"
            " ON [_sqlite_migrations] ([migration_set], [name])"
        )
        db.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.execute("ROLLBACK")
        raise


def verify(db: Database, *, thorough: bool = False) -> str | None:
    """None when the database is healthy, else what SQLite found. quick_check reads every page
    (seconds per GB); integrity_check (`thorough`) also checks every index against its table."""
    pragma = "integrity_check" if thorough else "quick_check"
    try:
        rows = [str(row[0]) for row in db.execute(f"PRAGMA {pragma}(5)").fetchall()]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if rows == ["ok"] else "; ".join(rows)


# ---------------------------------------------------------------------- what is refused, and why


def refusal(exc: sqlite3.Error, path: Path) -> EdgeError | None:
    """The coded refusal for an SQLite error about the database at `path`, or None when it says
    nothing about the file itself (a lock, a constraint, a bug: those stay what they are)."""
    name = str(getattr(exc, "sqlite_errorname", ""))  # Python >= 3.11; the text below otherwise
    text = str(exc).lower()
    if name.startswith("SQLITE_NOTADB") or "not a database" in text:
        return corrupt(path, "not an SQLite database")
    if name.startswith("SQLITE_CORRUPT") or "malformed" in text:
        return corrupt(path, "database disk image is malformed")
    if name.startswith("SQLITE_FULL") or "database or disk is full" in text:
        return EdgeError(Code.DISK_FULL, f"no space left for the database {path}: free space (`edge doctor`)")
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return _access_problem(path, create=False) or read_only(path, "SQLite may not write it")
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return _access_problem(path, create=False) or unopenable(
            path, "SQLite cannot open it or its -wal/-shm file"
        )
    if name.startswith("SQLITE_IOERR") or "disk i/o error" in text:
        if _disk_full(path.parent):  # SQLite creating its -shm on a full disk says I/O error
            return EdgeError(
                Code.DISK_FULL, f"no space left for the database {path}: free space (`edge doctor`)"
            )
        return unopenable(path, "a disk I/O error (a failing disk, or a damaged -wal/-shm file)")
    return None


FULL_BELOW_BYTES = 1 << 20
"""A disk with less than this free (1 MB) is full to SQLite: it cannot create its -shm file."""


def _disk_full(folder: Path) -> bool:
    """Whether the file system of `folder` is full: a full disk read as a failing one stopped the
    agent for good (STORE_UNOPENABLE needs a person; DISK_FULL heals when space returns)."""
    try:
        found = os.statvfs(folder)
    except OSError:
        return False
    return found.f_bavail * found.f_frsize < FULL_BELOW_BYTES


def corrupt(path: Path, detail: str) -> EdgeError:
    return EdgeError(
        Code.STORE_CORRUPT,
        f"the database {path.absolute()} is damaged ({detail}); nothing was written to it. "
        f"Run `edge doctor`; {restore_hint(path.parent)}",
    )


def read_only(path: Path, detail: str) -> EdgeError:
    return EdgeError(
        Code.STORE_READ_ONLY,
        f"{path.absolute()} cannot be written ({detail}): nothing can be stored. Remount the data directory "
        "read-write or give the service's user write access to it, then `edge doctor`",
    )


def unopenable(path: Path, detail: str) -> EdgeError:
    return EdgeError(
        Code.STORE_UNOPENABLE,
        f"cannot open the database {path.absolute()}: {detail}. It and its -wal/-shm files must be "
        "regular files on a local filesystem that the service's user may read and write; "
        "`edge doctor` checks it",
    )


def schema_newer(path: Path, state: SchemaState) -> EdgeError:
    return EdgeError(
        Code.STORE_SCHEMA_NEWER,
        f"the database {path.absolute()} was written by newer edge software (schema "
        f"{state.version}, newer than this software's {state.latest}: {', '.join(state.unknown)}); "
        "this version writes nothing into it. Upgrade edge on this device (or restore a backup "
        "this version made)",
    )


def backup_dir(data_dir: Path) -> Path:
    return data_dir / BACKUP_DIR


def newest_backup(data_dir: Path) -> Path | None:
    try:
        found = [p for p in backup_dir(data_dir).glob("*.db") if p.is_file()]
    except OSError:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime, p.name), default=None)


def restore_hint(data_dir: Path) -> str:
    """The exact command that restores the newest backup (the data directory named: under
    systemd it is the service's state directory, not the default of the shell running it)."""
    data_dir = data_dir.absolute()
    newest = newest_backup(data_dir)
    which = "the newest backup" if newest else f"a backup (there is none in {backup_dir(data_dir)})"
    command = f"edge --data-dir {data_dir} store restore {newest or 'BACKUP.db'}"
    return f"stop the agent and restore {which}: `{command}`"


# ---------------------------------------------------------------------- checks before SQLite


def _why_read_only(directory: Path) -> str:
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "a read-only filesystem"
    except OSError:
        pass
    return f"no write permission for uid {os.geteuid()}"


def _access_problem(path: Path, *, create: bool = True) -> EdgeError | None:
    """The data directory, the database and its -wal/-shm as the file system has them."""
    directory = path.parent
    if create and not directory.exists():
        try:
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return read_only(directory, f"cannot create it: {exc.strerror}")
            return unopenable(path, f"cannot create {directory}: {exc.strerror}")
    if not directory.is_dir():
        return unopenable(path, f"{directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        return read_only(directory, _why_read_only(directory))
    for file in (path, *(path.with_name(path.name + suffix) for suffix in SIDECARS)):
        problem = _file_problem(path, file, directory)
        # SQLite removes the -wal/-shm when another process closes the last connection: a file
        # that is gone by the time we looked at it is no problem (seen as "may not be read").
        if problem is not None and os.path.lexists(file):
            return problem
    return None


def _file_problem(path: Path, file: Path, directory: Path) -> EdgeError | None:
    if not os.path.lexists(file):
        return None
    if not file.is_file():
        return unopenable(path, f"{file.name} is not a regular file")
    if not os.access(file, os.R_OK):
        return unopenable(path, f"{file.name} may not be read by uid {os.geteuid()}")
    if not os.access(file, os.W_OK):
        return read_only(file, _why_read_only(directory))
    return None


def _wal_has_frames(path: Path) -> bool:
    wal = path.with_name(path.name + "-wal")
    try:
        return wal.stat().st_size > _WAL_HEADER
    except OSError:
        return False


def _images_beside(path: Path) -> bool:
    """Whether stored files lie beside the database (a file, not only empty day folders): its
    images, or their heatmaps, clips or set-aside files once retention took the images. Hidden
    files are not stored ones (a recording being written, `.recording-*`, before the store is
    first opened; the drop folder's attempts ledger; an interrupted write's `.tmp`)."""
    try:
        for folder in ("images", "heatmaps", "clips", "orphans"):
            root = path.parent / folder
            if root.is_dir() and any(
                entry.is_file() and not entry.name.startswith(".") for entry in root.rglob("*")
            ):
                return True
    except OSError:
        return False
    return False


def missing_problem(path: Path) -> str | None:
    """None for a new device (the database is created now); beside stored images, a database
    deleted: an empty one made in its place took the device for a new one, and the agent then
    swept every stored image as left by an interrupted write (an outside-style check)."""
    if not _images_beside(path):
        return None
    return (
        "missing, though stored images (or their heatmaps) lie beside it; to start an empty store"
        f" on purpose, move {path.parent}'s images, heatmaps, clips and orphans folders away first"
    )


def _size_problem(path: Path) -> str | None:
    """What stat() alone shows: emptied, or shorter than any SQLite header."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return missing_problem(path)
    except OSError:
        return None  # not statable: SQLite and `refusal` say why
    if size == 0:
        # SQLite takes an empty file for a new database; beside stored images it is a truncated
        # one, and opening it would start an empty store (and sweep the images as orphans).
        return "truncated to 0 bytes, though images are stored beside it" if _images_beside(path) else None
    if size < 100:
        return f"truncated: {size} bytes, shorter than an SQLite header"
    return None


def _truncation(db: Database, path: Path) -> str | None:
    """Shorter than its header says (SQLite may open such a file and fail later, mid-command).
    With frames in the -wal the WAL has the last word on the size: then SQLite judges.

    Read inside one read transaction, so that the page count, the WAL and the file's size belong
    to one snapshot: a checkpoint cannot reset the WAL under a reader, and pages another process
    commits meanwhile go to the WAL, not the file (outside a snapshot, a commit between the
    reads made a healthy database look truncated)."""
    if _wal_has_frames(path):
        return None
    db.conn.execute("BEGIN")
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the read snapshot
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        size = path.stat().st_size
        if size >= pages * page_size or _wal_has_frames(path):
            return None
        return f"truncated: {size} of its {pages * page_size} bytes"
    finally:
        db.conn.execute("COMMIT")


def header_problem(path: Path) -> str | None:
    """What is wrong with an SQLite file, from its 100-byte header, before SQLite reads it;
    None if nothing (or it does not exist). It opens the file: never call it where this process
    has a connection to it (see `connect`)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            header = handle.read(100)
    except FileNotFoundError:
        return missing_problem(path)
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    if size < 100:
        return _size_problem(path)
    if not header.startswith(_MAGIC):
        return "not an SQLite database: its first bytes are not an SQLite header"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"its header is damaged (page size {page_size})"
    # The page count in the header is valid when its change counter matches (SQLite >= 3.7.0).
    # With frames in the -wal, the WAL has the last word on the size: then leave it to SQLite.
    if header[24:28] == header[92:96] and not _wal_has_frames(path):
        expected = int.from_bytes(header[28:32], "big") * page_size
        if size < expected and not _wal_has_frames(path):
            return f"truncated: {size} of its {expected} bytes"
    return None
