"""One result in full for its study page: its device, uploads (complete and still arriving),
the specialists' verdicts and this patient's other results, scoped like the worklist (a result
outside the reader's programmes does not exist for them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from edge.hub import db
from edge.hub.identities import User
from edge.hub.worklist import Filters, ReviewRow, WorklistRow, reader_rows, reader_scope, with_details

w, d, r = db.worklist, db.devices, db.reviews


@dataclass
class Study:
    record_id: int
    uuid: str
    device_id: str
    device_name: str
    site: str
    programme: str
    received_at: str
    payload: dict[str, Any]
    reviews: list[ReviewRow] = field(default_factory=list)  # newest first
    uploads: dict[str, Any] = field(default_factory=dict)  # kind -> its `uploads` row
    others: list[WorklistRow] = field(default_factory=list)  # this patient's other results
    pending: set[str] = field(default_factory=set)  # upload kinds begun but not complete yet
    deleted_at: str | None = None  # deleted on the device (a tombstone): the page answers 410

    def part(self, name: str) -> dict[str, Any]:
        value = self.payload.get(name)
        return value if isinstance(value, dict) else {}


def find_study(engine: Engine, user: User, uuid: str) -> Study | None:
    """The result with its device, uploads, reviews and this patient's other results; None when
    it does not exist or lies outside the reader's programmes."""
    with engine.connect() as conn:
        row = conn.execute(
            select(db.records, d.c.name.label("device_name"), d.c.site, d.c.programme)
            .join(d, d.c.id == db.records.c.device_id)
            .where(db.records.c.uuid == uuid, *reader_scope(user))
            .order_by(db.records.c.id)
            .limit(1)
        ).first()
        if row is None:
            return None
        study = Study(
            row.id,
            row.uuid,
            row.device_id,
            row.device_name,
            row.site,
            row.programme,
            row.received_at,
            row.payload if isinstance(row.payload, dict) else {},
        )
        if row.deleted_at is not None:  # hidden: nothing of it is read, its verdicts included
            study.deleted_at = row.deleted_at
            return study
        study.reviews = [
            ReviewRow.from_row(review)
            for review in conn.execute(
                select(r)
                .where(r.c.result_uuid == uuid, r.c.device_id == row.device_id)
                .order_by(r.c.seq.desc())
            )
        ]
        image_uuid = str(study.part("image").get("uuid") or "")
        for upload in conn.execute(
            select(db.uploads).where(
                db.uploads.c.device_id == row.device_id,
                db.uploads.c.complete.is_(True),
                (db.uploads.c.result_uuid == uuid) | (db.uploads.c.record_uuid == image_uuid),
            )
        ):
            study.uploads.setdefault(upload.kind, upload)
        study.pending = {
            upload.kind
            for upload in conn.execute(
                select(db.uploads.c.kind).where(
                    db.uploads.c.device_id == row.device_id,
                    db.uploads.c.complete.is_(False),
                    (db.uploads.c.result_uuid == uuid) | (db.uploads.c.record_uuid == image_uuid),
                )
            )
        }
        patient = study.part("study").get("patient")
        if patient:
            study.others = with_details(
                conn,
                [
                    WorklistRow.from_row(other)
                    for other in conn.execute(
                        reader_rows(user, Filters())
                        .where(
                            w.c.patient == str(patient),
                            w.c.device_id == row.device_id,
                            w.c.record_id != row.id,
                        )
                        .order_by(w.c.record_id.desc())
                        .limit(20)
                    )
                ],
            )
    return study
