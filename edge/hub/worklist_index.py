"""The worklist's projection: one `worklist` row per stored result, with the columns the
worklist filters and sorts on (urgent, modality, finding, age, sex, pseudonym, ...), written in
the transaction that stores the record, so filters and order are indexed columns on SQLite and
PostgreSQL alike. The JSON payload stays the source; records stored before the table existed
are indexed when the hub starts (`backfill`).
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from edge.hub import db
from edge.inference.scope import MEANINGS


def _text(value: Any, limit: int) -> str | None:
    return None if value is None or value == "" or isinstance(value, (dict, list)) else str(value)[:limit]


def _number(value: Any) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # a device's 400-digit integer is no age or probability
        return None
    return number if math.isfinite(number) else None


def index_values(record_id: int, device_id: str, uuid: str, payload: Any, received_at: str) -> dict[str, Any]:
    """The worklist row for one stored record (a payload from a device is read defensively)."""
    payload = payload if isinstance(payload, dict) else {}
    result = payload.get("result") if isinstance(payload.get("result"), dict) else {}
    study = payload.get("study") if isinstance(payload.get("study"), dict) else {}
    return {
        "record_id": record_id,
        "device_id": device_id,
        "result_uuid": uuid,
        "received_at": received_at,
        "urgent": study.get("urgent") is True,
        "modality": _text(study.get("modality"), 16),
        "body_part": _text(study.get("body_part"), 32),
        "view": _text(study.get("view"), 16),
        "age_years": _number(study.get("age_years")),
        "sex": study.get("sex") if study.get("sex") in ("M", "F", "O") else None,
        "finding": _text(result.get("finding"), 64),
        "model": _text(result.get("model"), 64),
        "model_version": _text(result.get("version"), 32),
        "probability": _number(result.get("probability")),
        "threshold": _number(result.get("threshold")),
        "patient": _text(study.get("patient"), 40),
        "study_date": _text(study.get("study_date"), 32),
        "scope": scope_word(result),
    }


def scope_word(result: Any) -> str:
    """The applicability word of a result's payload; "" when it carries none (an older device,
    a model without the check) or an unknown one."""
    scope = result.get("applicability") if isinstance(result, dict) else None
    state = scope.get("state") if isinstance(scope, dict) else None
    return state if state in MEANINGS else ""


def index_record(
    conn: Connection, record_id: int, device_id: str, uuid: str, payload: Any, received: str
) -> None:
    """Called in the transaction that stores the record."""
    conn.execute(insert(db.worklist).values(**index_values(record_id, device_id, uuid, payload, received)))


def backfill(engine: Engine, batch: int = 500) -> int:
    """Index records stored before the worklist existed, and fill the columns added to it since
    in rows indexed before them (run when the hub starts)."""
    added, collisions = 0, 0
    while True:
        try:
            rows = _backfill_batch(engine, batch)
        except IntegrityError:  # another hub process indexed the same records first: look again
            collisions += 1
            if collisions > 5:
                raise
            continue
        added += len(rows)
        if len(rows) < batch:
            break
    while _fill_scope(engine, batch) == batch:
        pass
    return added


def _fill_scope(engine: Engine, batch: int) -> int:
    """The `scope` column (added to the worklist later: NULL in older rows) from the payloads."""
    w = db.worklist
    with engine.begin() as conn:
        rows = conn.execute(
            select(w.c.record_id, db.records.c.payload)
            .join(db.records, db.records.c.id == w.c.record_id)
            .where(w.c.scope.is_(None))
            .order_by(w.c.record_id)
            .limit(batch)
        ).all()
        for row in rows:
            payload = row.payload if isinstance(row.payload, dict) else {}
            result = payload.get("result")
            conn.execute(update(w).where(w.c.record_id == row.record_id).values(scope=scope_word(result)))
    return len(rows)


def _backfill_batch(engine: Engine, batch: int) -> list[Any]:
    with engine.begin() as conn:
        rows = conn.execute(
            select(
                db.records.c.id,
                db.records.c.device_id,
                db.records.c.uuid,
                db.records.c.payload,
                db.records.c.received_at,
            )
            .outerjoin(db.worklist, db.worklist.c.record_id == db.records.c.id)
            .where(db.worklist.c.record_id.is_(None), db.records.c.deleted_at.is_(None))
            .order_by(db.records.c.id)
            .limit(batch)
        ).all()
        for row in rows:
            index_record(conn, row.id, row.device_id, row.uuid, row.payload, row.received_at)
    return list(rows)
