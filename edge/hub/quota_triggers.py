"""The triggers that keep each device's upload totals (`db.upload_totals`: files and bytes), which
its quota reads (`intake._check_quotas`) instead of counting the device's whole history: at
100,000 uploads that count was a 26 ms scan per start on PostgreSQL (docs/install.md, "The
device API at scale").

Why triggers, not the intake's own code: every path that adds or removes an upload row (a start,
retention's purge, an administrator's SQL) then moves the totals in its own transaction, and
none can forget to. A count kept by intake alone drifts the first time another path deletes a
row, and a drifted quota refuses a device for good or lets it past. A covering index would still
read every one of the device's uploads per start. An upload's device and size never change (a
different file is another upload), so inserts and deletes are all there is to count.

Below `db` (which calls `install` at every engine start): plain SQL, no table objects.
"""

from __future__ import annotations

from sqlalchemy import Engine

NAMES = ("upload_totals_add", "upload_totals_remove")

_SQLITE = (
    """CREATE TRIGGER IF NOT EXISTS upload_totals_add AFTER INSERT ON uploads BEGIN
    INSERT INTO upload_totals (device_id, files, bytes) VALUES (NEW.device_id, 1, NEW.size)
    ON CONFLICT (device_id) DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes; END""",
    """CREATE TRIGGER IF NOT EXISTS upload_totals_remove AFTER DELETE ON uploads BEGIN
    UPDATE upload_totals SET files = files - 1, bytes = bytes - OLD.size
    WHERE device_id = OLD.device_id; END""",
)

# PostgreSQL: once per statement, over its transition table (a purge deletes thousands of rows
# in one statement). A start holds its device's row lock (`intake._check_quotas`), so two
# starts of one device update its totals one after the other.
_POSTGRES = (
    """CREATE OR REPLACE FUNCTION upload_totals_add() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    INSERT INTO upload_totals (device_id, files, bytes)
    SELECT device_id, count(*), sum(size) FROM added GROUP BY device_id
    ON CONFLICT (device_id) DO UPDATE SET files = upload_totals.files + excluded.files,
    bytes = upload_totals.bytes + excluded.bytes; RETURN NULL; END $$""",
    """CREATE OR REPLACE FUNCTION upload_totals_remove() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    UPDATE upload_totals t SET files = t.files - g.files, bytes = t.bytes - g.bytes
    FROM (SELECT device_id, count(*) AS files, sum(size) AS bytes FROM removed GROUP BY device_id) g
    WHERE t.device_id = g.device_id; RETURN NULL; END $$""",
    "DROP TRIGGER IF EXISTS upload_totals_add ON uploads",
    "DROP TRIGGER IF EXISTS upload_totals_remove ON uploads",
    """CREATE TRIGGER upload_totals_add AFTER INSERT ON uploads REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION upload_totals_add()""",
    """CREATE TRIGGER upload_totals_remove AFTER DELETE ON uploads REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION upload_totals_remove()""",
)


def installed(engine: Engine) -> set[str]:
    """The names of the totals' triggers the database has."""
    postgres = engine.dialect.name == "postgresql"
    names = ", ".join(f"'{name}'" for name in NAMES)
    catalogue = (
        f"SELECT tgname FROM pg_trigger WHERE tgrelid = 'uploads'::regclass AND tgname IN ({names})"
        if postgres
        else f"SELECT name FROM sqlite_master WHERE type = 'trigger' AND name IN ({names})"
    )
    with engine.connect() as conn:
        return {str(name) for name in conn.exec_driver_sql(catalogue).scalars()}


def install(engine: Engine) -> bool:
    """Make the triggers and, when any was missing (a new database, or one an older hub made),
    count every device's uploads into the totals once. One transaction in which no upload row
    comes or goes (SQLite's write lock from BEGIN; on PostgreSQL a lock on the table, against an
    older node still serving), so nothing is counted twice or missed; run again, it counts the
    same. At start, under `db.schema_lock`; afterwards a look at the catalogue. True if counted."""
    if installed(engine) == set(NAMES):
        return False
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        if postgres:
            conn.exec_driver_sql("LOCK TABLE uploads IN SHARE ROW EXCLUSIVE MODE")
        for ddl in _POSTGRES if postgres else _SQLITE:
            conn.exec_driver_sql(ddl)
        conn.exec_driver_sql("DELETE FROM upload_totals")
        conn.exec_driver_sql(
            "INSERT INTO upload_totals (device_id, files, bytes)"
            " SELECT device_id, count(*), coalesce(sum(size), 0) FROM uploads GROUP BY device_id"
        )
    return True
