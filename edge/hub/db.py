"""The hub's tables (SQLAlchemy Core) and the engine, on SQLite by default or PostgreSQL by URL.

Every device-facing write is idempotent: records are unique per (device, uuid), uploads per
(device, record, kind), nonces per (device, nonce). A unique-key race between two requests is
resolved by retrying the transaction, after which the row is simply there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    case,
    create_engine,
    event,
    func,
    inspect,
    literal_column,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.schema import CreateIndex
from sqlalchemy.sql.elements import Grouping

from edge.clock import utc_now
from edge.hub import legacy_json, quota_triggers

metadata = MetaData()

devices = Table(
    "devices",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("site", String(64), nullable=False, default=""),
    Column("programme", String(64), nullable=False, default="default"),
    # Protocol 1's sha256 of a shared secret; "" since protocol 2 (no device secret exists any
    # more), kept because older databases declare it NOT NULL.
    Column("credential_hash", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("last_seen_at", String(32)),
    Column("revoked_at", String(32)),
    Column("public_key", String(64)),  # hex ed25519: checks every request; NULL: protocol 1, refused
)

enroll_codes = Table(
    "enroll_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("programme", String(64), nullable=False, default="default"),
    Column("created_at", String(32), nullable=False),
    Column("expires_at", String(32), nullable=False),
    Column("used_at", String(32)),
    Column("device_id", String(36)),
    Column("revoked_at", String(32)),  # an unused code withdrawn: it enrols nothing
)

records = Table(
    "records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(36), nullable=False, index=True),
    Column("uuid", String(36), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("received_at", String(32), nullable=False),
    # When the hub learnt the result was deleted on the device (a tombstone): hidden from then
    # on (no worklist row, 410 on its page), purged after `[hub] tombstone_purge_after_days`.
    Column("deleted_at", String(32)),
    UniqueConstraint("device_id", "uuid", name="records_device_uuid"),
)

# Deletions devices sent (edge/hub/tombstones.py), one per (device, result): kept after the
# purge, so a re-sent tombstone is a duplicate and a result arriving after its tombstone (out
# of order) is stored hidden. Only uuids and times: no patient data.
tombstones = Table(
    "tombstones",
    metadata,
    Column("device_id", String(36), primary_key=True),
    Column("result_uuid", String(36), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("deleted_at", String(32), nullable=False),  # the device's clock
    Column("received_at", String(32), nullable=False, index=True),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(36), nullable=False),
    Column("uuid", String(36), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("received_at", String(32), nullable=False),
    Column("reason", Text, nullable=False),
)

nonces = Table(
    "nonces",
    metadata,
    Column("device_id", String(36), primary_key=True),
    Column("nonce", String(64), primary_key=True),
    Column("seen_at", Float, nullable=False, index=True),
)

uploads = Table(
    "uploads",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("device_id", String(36), nullable=False),
    Column("record_uuid", String(36), nullable=False),
    Column("result_uuid", String(36), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("media_type", String(64), nullable=False),
    Column("offset", Integer, nullable=False, default=0),
    Column("path", Text, nullable=False),
    Column("complete", Boolean, nullable=False, default=False),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("device_id", "record_uuid", "kind", name="uploads_device_record_kind"),
)

# Each device's uploads counted, for its quota (`intake._check_quotas`): kept by triggers on
# `uploads` (`quota_triggers`), so a new upload reads one row, not the device's whole history
# (at 100,000 uploads the sum was a 26 ms scan on PostgreSQL, per start).
upload_totals = Table(
    "upload_totals",
    metadata,
    Column("device_id", String(36), primary_key=True),
    Column("files", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
)

# The bytes of uploads on PostgreSQL (edge/hub/blobs.py): any hub node resumes any upload. One
# row per acknowledged chunk; on SQLite (one node) the bytes stay files and this table is empty.
upload_chunks = Table(
    "upload_chunks",
    metadata,
    Column("upload_id", String(36), primary_key=True),
    Column("offset", BigInteger, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
)

reviews = Table(
    "reviews",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # the devices' pull cursor
    Column("id", String(36), nullable=False, unique=True),
    Column("device_id", String(36), nullable=False, index=True),
    Column("result_uuid", String(36), nullable=False, index=True),
    Column("verdict", String(16), nullable=False),
    Column("finding", String(64)),
    Column("note", Text),
    Column("reviewer", String(64)),
    Column("reviewer_role", String(32)),
    Column("reviewed_at", String(32), nullable=False),
)

# A specialist opened a study that has no diagnostic rendition (issue 20): the device pulls these
# (GET /v1/renditions/requested) and sends the rendition. Only uuids, a time and who asked.
rendition_requests = Table(
    "rendition_requests",
    metadata,
    Column("device_id", String(36), primary_key=True),
    Column("result_uuid", String(36), primary_key=True),
    Column("requested_at", String(32), nullable=False, index=True),
    Column("requested_by", String(64)),
)

releases = Table(
    "releases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("version", String(32), primary_key=True),
    Column("programme", String(64), nullable=False, default="default"),
    Column("release", JSON, nullable=False),  # the signed ModelRelease
    Column("created_at", String(32), nullable=False),
)

# Signed site profiles (edge/hub/site_profiles.py), offered to the devices of one programme's site.
site_profiles = Table(
    "site_profiles",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("profile_id", String(128), nullable=False),
    Column("programme", String(64), nullable=False),
    Column("site", String(64), nullable=False),
    Column("model", String(64), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("created_at", String(32), nullable=False),  # the profile's own (signed) time
    Column("temperature", Float, nullable=False),
    Column("release", JSON, nullable=False),  # the signed ProfileRelease
    Column("published_at", String(32), nullable=False),
    Column("published_by", String(64), nullable=False),
    UniqueConstraint("programme", "site", "profile_id", name="site_profiles_site_id"),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", String(32), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("device_id", String(36)),
    Column("detail", JSON, nullable=False),
)


# ------------------------------------------------------------------ the specialists' web pages

users = Table(
    "users",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),  # the login name, lower case
    Column("password_hash", String(255), nullable=False),  # argon2id, parameters in the string
    Column("role", String(16), nullable=False),  # specialist | administrator
    Column("programmes", JSON, nullable=False),  # programme names, or ["*"] for all of them
    Column("created_at", String(32), nullable=False),
    Column("password_changed_at", String(32), nullable=False),
    Column("last_login_at", String(32)),
    Column("disabled_at", String(32)),
    Column("failed_logins", Integer, nullable=False, default=0),  # consecutive, reset on success
    Column("locked_until", Float),  # epoch seconds
)

# Login attempts since the last success, per account and client address, and per account over
# every address ("*"); counted before the password is checked (edge/hub/accounts.py).
login_failures = Table(
    "login_failures",
    metadata,
    Column("name", String(64), primary_key=True),  # the name as typed, known account or not
    Column("address", String(64), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("locked_until", Float),  # epoch seconds
    Column("last_at", Float, nullable=False, index=True),
)

sessions = Table(
    "sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # sha256 of the cookie value
    Column("user_id", String(36), nullable=False, index=True),
    Column("csrf_secret", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
)

# One row per stored result with the columns the worklist filters and sorts on, written in the
# same transaction as the record (the JSON payload stays the source of truth for everything else).
worklist = Table(
    "worklist",
    metadata,
    Column("record_id", Integer, primary_key=True, autoincrement=False),
    Column("device_id", String(36), nullable=False, index=True),
    Column("result_uuid", String(36), nullable=False, index=True),
    Column("received_at", String(32), nullable=False, index=True),
    Column("urgent", Boolean, nullable=False, default=False),
    Column("modality", String(16)),
    Column("body_part", String(32)),
    Column("view", String(16)),
    Column("age_years", Float),
    Column("sex", String(1)),
    Column("finding", String(64)),
    Column("model", String(64)),
    Column("model_version", String(32)),
    Column("probability", Float),
    Column("threshold", Float),
    Column("patient", String(40), index=True),  # the device's keyed pseudonym
    Column("study_date", String(32)),
    # The applicability word the device sent ("in scope", "borderline"); "" when it sent none
    # (an older device, a model without the check); NULL only in a row indexed before the
    # column existed, until `worklist_index.backfill` fills it from the payload.
    Column("scope", String(16)),
)


def _worklist_order() -> tuple[ColumnElement[int], ColumnElement[float], ColumnElement[int]]:
    """The readers' order (edge/hub/worklist.py `ORDER`): 0 flagged urgent, 1 positive,
    2 the rest; minus the probability; minus the record id, ascending. Its constants are written
    into the SQL, not bound: the databases use an index on expressions only for the same
    expressions, and a bound constant is not one (PostgreSQL's generic plans, SQLite's planner)."""
    c = worklist.c
    positive = c.probability.is_not(None) & c.threshold.is_not(None) & (c.probability >= c.threshold)
    return (
        case(
            (c.urgent.is_(True), literal_column("0")),
            (positive, literal_column("1")),
            else_=literal_column("2"),
        ),
        -func.coalesce(c.probability, literal_column("-1.0")),
        -c.record_id,
    )


WORKLIST_ORDER = _worklist_order()
# A page of the worklist is read along this index instead of sorting every row a reader may see:
# at 200,000 results the first page took 446 ms, most of it that sort (a measurement, see
# docs/install.md "The review pages at scale").
Index("ix_worklist_order", Grouping(WORKLIST_ORDER[0]), *WORKLIST_ORDER[1:])  # PostgreSQL: (CASE ...)
# The worklist's review columns (latest verdict, reviewer, count) and its unreviewed filter look
# a result's reviews up by device and uuid in the order they came.
Index("ix_reviews_device_result_seq", reviews.c.device_id, reviews.c.result_uuid, reviews.c.seq)
# A device pulls its reviews after its cursor (`reviews.reviews_since`): without this index
# PostgreSQL walked the primary key past every other device's reviews (30 ms at 100,000 of them).
Index("ix_reviews_device_seq", reviews.c.device_id, reviews.c.seq)


# Bearer tokens of health information systems reading /fhir (edge/hub/fhir_tokens.py).
fhir_tokens = Table(
    "fhir_tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(64), nullable=False, index=True),  # the client, e.g. "dhis2-north"
    Column("token_hash", String(64), nullable=False, unique=True),  # sha256 of the token
    Column("programmes", JSON, nullable=False),  # programme names, or ["*"] for all of them
    Column("sites", JSON, nullable=False),  # site names within them; [] for every site
    Column("created_at", String(32), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("last_used_at", Float),  # epoch seconds, written at most once a minute
    Column("revoked_at", String(32)),
)

MAX_INT = 2**31 - 1  # an Integer column on PostgreSQL (SQLite's are 64-bit)

now = utc_now  # the one time format, shared with the device store


def make_engine(url: str) -> Engine:
    """SQLite in WAL mode with a busy timeout, or PostgreSQL (psycopg 3) by URL."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            connection.isolation_level = None  # transactions are begun below, not by pysqlite
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            # A writer takes the write lock up front (see edge/store/store.py: stale read
            # snapshots); a reader does not, or one slow read (a FHIR search, the agreement
            # scan) held every writer off: devices' batches and logins failed after 30 s.
            writes = connection.get_execution_options().get(WRITES, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

        _writes_through_begin(engine)

    else:
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), pool_pre_ping=True)
    with schema_lock(engine):
        metadata.create_all(engine)
        add_new_columns(engine)
        add_new_indexes(engine)
        quota_triggers.install(engine)
        legacy_json.repair(engine, [("records", "payload")])
    return engine


WRITES = "edge_writes"
"""The execution option that marks a SQLite connection's transaction as a writer's."""


def _writes_through_begin(engine: Engine) -> None:
    """`engine.begin()` is how the hub writes (a block under `engine.connect()` is never
    committed on SQLite): its transactions are marked as writers' before they begin. SQLAlchemy
    fires one "begin" event for both, so the engine's `begin` is this one."""

    @contextmanager
    def begin() -> Iterator[Connection]:
        with engine.connect() as conn:
            conn.execution_options(**{WRITES: True})
            with conn.begin():
                yield conn

    engine.begin = begin  # type: ignore[method-assign]


SCHEMA_LOCK_KEY = 0x6564676501  # "edge" + 1: the advisory lock of schema changes


@contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """Hub nodes starting together on one PostgreSQL change the schema one at a time: two
    concurrent CREATE TABLE of one name fail in PostgreSQL's catalogue (pg_type's unique key),
    not with "already exists". A session advisory lock, released however the holder ends. On
    SQLite (one node) there is nothing to order."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_lock({SCHEMA_LOCK_KEY})")
        conn.commit()
        try:
            yield
        finally:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({SCHEMA_LOCK_KEY})")
            conn.commit()


def add_new_columns(engine: Engine) -> list[str]:
    """Add the columns a newer hub declares to the tables an older hub made: `create_all` makes
    missing tables, never missing columns. The one way the hub's schema grows: a new column is
    nullable with no default (ALTER TABLE ... ADD COLUMN is then the same, and cheap, on SQLite
    and PostgreSQL), existing rows read NULL, and whoever added the column fills it from what is
    stored (the worklist's `scope`: `worklist_index.backfill`). Another hub process adding the
    same column first is no error. Returns "table.column" for each column added."""
    added = []
    quote = engine.dialect.identifier_preparer.quote
    for table in metadata.sorted_tables:
        present = _column_names(engine, table.name)
        if present is None:  # made just now by create_all, with every column
            continue
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable or column.default is not None or column.server_default is not None:
                raise RuntimeError(
                    f"{table.name}.{column.name}: a column added later must be nullable, no default"
                )
            ddl = (
                f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)}"
                f" {column.type.compile(dialect=engine.dialect)}"
            )
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(ddl)
            except DBAPIError:
                if column.name not in (_column_names(engine, table.name) or set()):
                    raise
                continue  # another hub process added it first
            added.append(f"{table.name}.{column.name}")
    return added


def add_new_indexes(engine: Engine) -> None:
    """Make the indexes a newer hub declares on the tables an older hub made (`create_all`
    makes a missing table's indexes only). IF NOT EXISTS: the same on SQLite and PostgreSQL,
    and neither reflects an index on expressions for a check first. Under the schema lock at
    start; on PostgreSQL the first CREATE INDEX holds the table's writes while it is built
    (about a second per 200,000 rows); afterwards each is a no-op."""
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            for index in table.indexes:
                conn.execute(CreateIndex(index, if_not_exists=True))


def _column_names(engine: Engine, table: str) -> set[str] | None:
    inspector = inspect(engine)
    if not inspector.has_table(table):
        return None
    return {column["name"] for column in inspector.get_columns(table)}


Answer = TypeVar("Answer")


def despite_races(attempt: Callable[[], Answer], tries: int = 3) -> Answer:
    """`attempt()` again when a concurrent copy of the same request won the race for a unique
    row (the second look sees that row and answers "duplicate")."""
    for left in range(tries - 1, -1, -1):
        try:
            return attempt()
        except IntegrityError:
            if not left:
                raise
    raise AssertionError("unreachable")
