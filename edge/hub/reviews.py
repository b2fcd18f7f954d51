"""Specialists' reviews of synced results: recorded here (from the review pages or the CLI),
pulled by each device by cursor. No HTTP.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import Engine, Select, insert, select

from edge.hub import db
from edge.hub.audit import record_audit
from edge.hub.errors import HubError
from edge.hub.identities import Device
from edge.sync import protocol
from edge.sync.protocol import WireCode

VERDICTS = ("agree", "disagree", "uncertain")  # what protocol.Review accepts


def add_review(
    engine: Engine,
    result_uuid: str,
    verdict: str,
    *,
    finding: str | None = None,
    note: str | None = None,
    reviewer: str = "",
    reviewer_role: str = "specialist",
    device_id: str | None = None,
) -> str:
    """A specialist's review of a synced result; it reaches the device on its next pull."""
    if verdict not in VERDICTS:
        raise HubError(400, WireCode.BAD_VERDICT, f"the verdict is one of {', '.join(VERDICTS)}")
    where = [db.records.c.uuid == result_uuid]
    if device_id is not None:  # the web page knows which device's result the reader opened
        where.append(db.records.c.device_id == device_id)
    with engine.connect() as conn:
        record = conn.execute(select(db.records.c.device_id, db.records.c.deleted_at).where(*where)).first()
    if record is None:
        raise HubError(404, WireCode.NO_SUCH_RESULT, "no synced result with that id")
    if record.deleted_at is not None:
        raise HubError(410, WireCode.NO_SUCH_RESULT, "the result was deleted on the device")
    review_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            insert(db.reviews).values(
                id=review_id,
                device_id=record.device_id,
                result_uuid=result_uuid,
                verdict=verdict,
                finding=finding,
                note=note,
                reviewer=reviewer,
                reviewer_role=reviewer_role,
                reviewed_at=db.now(),
            )
        )
    record_audit(
        engine,
        reviewer or "specialist",
        "review.added",
        record.device_id,
        result=result_uuid,
        review=review_id,
        verdict=verdict,
        finding=finding,
    )
    return review_id


def pull_query(device_id: str, cursor: int, limit: int) -> Select[Any]:
    """A device's reviews after its cursor: its next seqs read from `ix_reviews_device_seq`
    alone (an index-only scan), then their rows. Asked in one query, PostgreSQL walked the
    primary key from the cursor past every other device's reviews whenever this device held
    many of them (it expects them spread evenly after the cursor): 30 ms at 100,000 others'."""
    r = db.reviews.c
    mine = select(r.seq).where(r.device_id == device_id, r.seq > cursor).order_by(r.seq).limit(limit)
    return select(db.reviews).where(r.seq.in_(mine.scalar_subquery())).order_by(r.seq)


def reviews_since(engine: Engine, device: Device, cursor: int, limit: int = 200) -> protocol.ReviewPage:
    with engine.connect() as conn:
        rows = conn.execute(pull_query(device.id, cursor, limit)).all()
    reviews = [
        protocol.Review(
            id=r.id,
            result_uuid=r.result_uuid,
            verdict=r.verdict,
            finding=r.finding,
            note=r.note,
            reviewer_role=r.reviewer_role,
            reviewed_at=r.reviewed_at,
        )
        for r in rows
    ]
    return protocol.ReviewPage(reviews=reviews, cursor=rows[-1].seq if rows else cursor, hub_time=time.time())
