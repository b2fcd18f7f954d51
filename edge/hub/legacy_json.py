"""JSON an older SQLite hub stored with NaN or Infinity in it, made standard at start.

SQLAlchemy's JSON type writes with Python's `json.dumps`, which writes a non-finite float as the
bare word `NaN` or `Infinity`. That is not JSON: SQLite's JSON functions refuse the whole value
("malformed JSON"), and they are evaluated row by row, so one such result failed every query
that reads a field in SQL, not only its own row: the administrator's agreement page, retention's
check for an image another result still shows, a FHIR search by model. Intake has refused such
payloads since 4e3dd78 (`intake`: "NaN or Infinity in its payload"); PostgreSQL's `json` type
never accepted them. What an older SQLite hub holds in its results is rewritten once, at start,
with `null` in each non-finite number's place: a probability that was not a number says as much
(the result's page shows "-" where it showed "nan%"), and the device's copy is unchanged. The
row's `sha256` stays that of what the device sent. The quarantine and the audit log are evidence
and stay as they are (no query reads their fields in SQL). A value not even Python can read is
left as it is and logged.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine

log = logging.getLogger(__name__)


def finite(value: Any) -> Any:
    """`value` with each NaN or infinite float replaced by None, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


REPAIRED = 1
"""SQLite's `user_version` once the repair has run: later starts (and every `edge hub` command,
which makes an engine too) skip the scan. A database restored from an older backup has 0 again."""


def repair(engine: Engine, columns: Iterable[tuple[str, str]]) -> int:
    """Rewrite the values of these (table, column) pairs that SQLite's `json_valid` refuses and
    Python reads; returns how many. Once per database: a full scan of each column (0.2-0.5 s per
    200,000 results), read without the write lock, which is taken only to rewrite and to mark
    the database done. Nothing to do on PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return 0
    raw = engine.raw_connection()  # plain reads: no BEGIN IMMEDIATE, the hub may be serving
    try:
        cursor = raw.cursor()
        if cursor.execute("PRAGMA user_version").fetchone()[0] >= REPAIRED:
            return 0
        found = [
            (table, column, rowid, text)
            for table, column in columns
            for rowid, text in cursor.execute(
                f'SELECT rowid, "{column}" FROM "{table}" WHERE json_valid("{column}") = 0'
            ).fetchall()
        ]
    finally:
        raw.close()
    repaired = 0
    with engine.begin() as conn:
        for table, column, rowid, text in found:
            try:
                value = json.dumps(finite(json.loads(text)), allow_nan=False)
            except (TypeError, ValueError):
                log.error("%s.%s row %s: its JSON cannot be read; left as it is", table, column, rowid)
                continue
            conn.exec_driver_sql(f'UPDATE "{table}" SET "{column}" = ? WHERE rowid = ?', (value, rowid))
            repaired += 1
        conn.exec_driver_sql(f"PRAGMA user_version = {REPAIRED}")
    if repaired:
        log.warning("%d stored result(s) held NaN or Infinity: rewritten with null", repaired)
    return repaired
