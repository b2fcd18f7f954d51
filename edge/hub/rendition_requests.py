"""The hub asking a device for a study's diagnostic rendition (issue 20 item 2).

A device sends the 1024-px rendition by itself for positive and flagged results ([sync]
diagnostic = "positive"); for any other result, a specialist opening its study is the request.
The row is kept until the rendition is on the hub: the device pulls the open requests each
round (`GET /v1/renditions/requested`) and queues the rendition once (its outbox task is unique
per result), so a rendition the device withheld (burned-in text) is not asked for in a loop.
"""

from __future__ import annotations

from sqlalchemy import Engine, and_, exists, insert, select
from sqlalchemy.exc import IntegrityError

from edge.hub import db
from edge.hub.audit import record_audit
from edge.hub.identities import Device
from edge.sync import protocol


def ask(engine: Engine, device_id: str, result_uuid: str, reader: str) -> bool:
    """Record that `reader` asked for this result's rendition; False when it was already asked."""
    with engine.begin() as conn:
        asked = conn.execute(
            select(db.rendition_requests.c.requested_at).where(
                db.rendition_requests.c.device_id == device_id,
                db.rendition_requests.c.result_uuid == result_uuid,
            )
        ).first()
        if asked is not None:
            return False
        try:
            conn.execute(
                insert(db.rendition_requests).values(
                    device_id=device_id, result_uuid=result_uuid, requested_at=db.now(), requested_by=reader
                )
            )
        except IntegrityError:  # two readers opened it at once: the other's row stands
            return False
    record_audit(engine, reader, "rendition.requested", device_id, result_uuid=result_uuid)
    return True


def was_asked(engine: Engine, device_id: str, result_uuid: str) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                select(db.rendition_requests.c.result_uuid).where(
                    db.rendition_requests.c.device_id == device_id,
                    db.rendition_requests.c.result_uuid == result_uuid,
                )
            ).first()
            is not None
        )


def open_requests(engine: Engine, device: Device) -> protocol.RenditionRequests:
    """This device's requests whose rendition has not (completely) arrived, oldest first."""
    r, u = db.rendition_requests, db.uploads
    arrived = exists().where(
        and_(
            u.c.device_id == r.c.device_id,
            u.c.result_uuid == r.c.result_uuid,
            u.c.kind == "rendition",
            u.c.complete,
        )
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(r.c.result_uuid)
            .where(r.c.device_id == device.id, ~arrived)
            .order_by(r.c.requested_at, r.c.result_uuid)
            .limit(protocol.MAX_RENDITION_REQUESTS)
        ).all()
    return protocol.RenditionRequests(results=[row.result_uuid for row in rows])
