"""Deletions made on a device reach the hub: a tombstone hides its result at once (its worklist
row goes, so the worklist, the patient's priors and FHIR no longer list it; its page answers
410) and the purge (`edge.hub.retention`) removes its rows and files after
`[hub] tombstone_purge_after_days`. No HTTP.

Exactly once: one `tombstones` row per (device, result uuid); a re-send is a duplicate. Out of
order: a tombstone whose result is not on the hub yet is kept, and `hide_if_tombstoned` stores
that result hidden when it arrives. A specialist's verdict already written for the result is
copied into the audit row (verdict, finding, who, when; not the free-text note) and no longer
shown.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update

from edge.hub import db
from edge.hub.identities import Device
from edge.sync import protocol


def apply_tombstones(
    engine: Engine, device: Device, batch: protocol.TombstoneBatch
) -> protocol.TombstoneReply:
    return db.despite_races(lambda: _apply_once(engine, device, batch))


def _apply_once(engine: Engine, device: Device, batch: protocol.TombstoneBatch) -> protocol.TombstoneReply:
    applied: list[str] = []
    duplicates: list[str] = []
    uuids = [str(t.result_uuid) for t in batch.tombstones]
    with engine.begin() as conn:
        known = set(
            conn.execute(
                select(db.tombstones.c.result_uuid).where(
                    db.tombstones.c.device_id == device.id, db.tombstones.c.result_uuid.in_(uuids)
                )
            ).scalars()
        )
        received = db.now()
        for tombstone in batch.tombstones:
            result_uuid = str(tombstone.result_uuid)
            if result_uuid in known:
                duplicates.append(result_uuid)
                continue
            conn.execute(
                insert(db.tombstones).values(
                    device_id=device.id,
                    result_uuid=result_uuid,
                    seq=min(tombstone.seq, db.MAX_INT),
                    deleted_at=tombstone.deleted_at,
                    received_at=received,
                )
            )
            known.add(result_uuid)
            hidden = _hide(conn, device.id, result_uuid, received)
            _audit(conn, device.id, result_uuid, tombstone.deleted_at, hidden)
            applied.append(result_uuid)
    return protocol.TombstoneReply(applied=applied, duplicates=duplicates, hub_time=time.time())


def hide_if_tombstoned(conn: Connection, device_id: str, uuid: str, record_id: int, received: str) -> bool:
    """Called where a result is stored: True (and the record hidden, not indexed) when its
    tombstone came first."""
    tombstone = conn.execute(
        select(db.tombstones.c.deleted_at).where(
            db.tombstones.c.device_id == device_id, db.tombstones.c.result_uuid == uuid
        )
    ).first()
    if tombstone is None:
        return False
    conn.execute(update(db.records).where(db.records.c.id == record_id).values(deleted_at=received))
    _audit(conn, device_id, uuid, tombstone.deleted_at, {"arrived_after_tombstone": True, "reviews": []})
    return True


def _hide(conn: Connection, device_id: str, result_uuid: str, now: str) -> dict[str, Any]:
    """Hide the stored result (if it is here yet); what the audit keeps of it."""
    record = conn.execute(
        select(db.records.c.id).where(
            db.records.c.device_id == device_id,
            db.records.c.uuid == result_uuid,
            db.records.c.deleted_at.is_(None),
        )
    ).first()
    if record is None:
        return {"result_on_hub": False, "reviews": []}
    conn.execute(update(db.records).where(db.records.c.id == record.id).values(deleted_at=now))
    conn.execute(delete(db.worklist).where(db.worklist.c.record_id == record.id))
    reviews = [
        {
            "id": row.id,
            "verdict": row.verdict,
            "finding": row.finding,
            "reviewer": row.reviewer,
            "reviewed_at": row.reviewed_at,
        }
        for row in conn.execute(
            select(db.reviews)
            .where(db.reviews.c.device_id == device_id, db.reviews.c.result_uuid == result_uuid)
            .order_by(db.reviews.c.seq)
        )
    ]
    return {"result_on_hub": True, "reviews": reviews}


def _audit(
    conn: Connection, device_id: str, result_uuid: str, deleted_at: str, detail: dict[str, Any]
) -> None:
    conn.execute(
        insert(db.audit).values(
            at=db.now(),
            actor="device",
            action="result.deleted_on_device",
            device_id=device_id,
            detail={"result": result_uuid, "deleted_on_device_at": deleted_at, **detail},
        )
    )
