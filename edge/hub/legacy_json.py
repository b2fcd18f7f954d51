"""JSON an older SQLite hub stored with NaN or Infinity in it, made standard at start.

SQLAlchemy's JSON type writes with Python's `json.dumps`, which writes a non-finite float as the
bare word `NaN` or `Infinity`. That is not JSON: SQLite's JSON functions refuse the whole value
("malformed JSON"), and they are evaluated row by row, so one such result failed every query
that reads a field in SQL, not only its own row: the administrator's agreement page, retention's
check for an image another result still shows, a FHIR search by model. Intake has refused such
payloads since 4e3dd78 (`intake`: "NaN or Infinity in its payload"); PostgreSQL's `json` type
never accepted them. What an older SQLite hub holds is rewritten once, at start, with `null` in
each non-finite number's place: a probability that was not a number says as much, and the
result's page and the device's copy are unchanged. The row's `sha256` stays that of what the
device sent. A value not even Python can read is left as it is and logged.
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


def repair(engine: Engine, columns: Iterable[tuple[str, str]]) -> int:
    """Rewrite the values of these (table, column) pairs that SQLite's `json_valid` refuses and
    Python reads; returns how many. A full scan of each column (about 0.1 s per 200,000
    results); nothing to do on PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return 0
    repaired = 0
    with engine.begin() as conn:
        for table, column in columns:
            rows = conn.exec_driver_sql(
                f'SELECT rowid, "{column}" FROM "{table}" WHERE json_valid("{column}") = 0'
            ).all()
            for rowid, raw in rows:
                try:
                    value = json.dumps(finite(json.loads(raw)), allow_nan=False)
                except (TypeError, ValueError):
                    log.error("%s.%s row %s: its JSON cannot be read; left as it is", table, column, rowid)
                    continue
                conn.exec_driver_sql(
                    f'UPDATE "{table}" SET "{column}" = ? WHERE rowid = ?',
                    (value, rowid),
                )
                repaired += 1
    if repaired:
        log.warning("%d stored JSON value(s) held NaN or Infinity: rewritten with null", repaired)
    return repaired
