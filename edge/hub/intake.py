"""What devices send: result batches, stored once per (device, uuid) and indexed for the
worklist in the same transaction, and files by resumable (tus-style) uploads. No HTTP.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from edge.hub import db, worklist_index
from edge.hub.audit import record_audit
from edge.hub.errors import HubError
from edge.hub.identities import Device
from edge.inference.registry import sha256_file
from edge.sync import protocol
from edge.sync.protocol import WireCode

# ------------------------------------------------------------------ results


def store_batch(engine: Engine, device: Device, batch: protocol.Batch) -> protocol.BatchReply:
    """Store each (device, uuid) once. Same content again: a duplicate. Different content under
    a known uuid: quarantined, never overwriting what is stored."""
    for record in batch.records:
        if protocol.payload_hash(record.payload) != record.sha256:
            raise HubError(
                400, WireCode.BAD_RECORD, f"record {record.uuid}: sha256 does not match its payload"
            )
    for attempt in range(3):
        try:
            return _store_batch_once(engine, device, batch)
        except IntegrityError:  # a concurrent copy of the same batch won the race: look again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _store_batch_once(engine: Engine, device: Device, batch: protocol.Batch) -> protocol.BatchReply:
    stored, duplicates, quarantined = [], [], []
    uuids = [r.uuid for r in batch.records]
    with engine.begin() as conn:
        known = {
            row.uuid: row.sha256
            for row in conn.execute(
                select(db.records.c.uuid, db.records.c.sha256).where(
                    db.records.c.device_id == device.id, db.records.c.uuid.in_(uuids)
                )
            )
        }
        received = db.now()
        for record in batch.records:
            if record.uuid in known:
                if known[record.uuid] == record.sha256:
                    duplicates.append(record.uuid)
                else:
                    conn.execute(
                        insert(db.quarantine).values(
                            device_id=device.id,
                            uuid=record.uuid,
                            sha256=record.sha256,
                            payload=record.payload,
                            received_at=received,
                            reason="the same uuid arrived with different content",
                        )
                    )
                    quarantined.append(record.uuid)
                continue
            inserted = conn.execute(
                insert(db.records).values(
                    device_id=device.id,
                    uuid=record.uuid,
                    seq=record.seq,
                    kind=record.kind,
                    sha256=record.sha256,
                    payload=record.payload,
                    received_at=received,
                )
            )
            record_id = inserted.inserted_primary_key[0]  # type: ignore[index]
            worklist_index.index_record(conn, record_id, device.id, record.uuid, record.payload, received)
            known[record.uuid] = record.sha256
            stored.append(record.uuid)
    if quarantined:
        record_audit(engine, "device", "records.quarantined", device.id, uuids=quarantined)
    return protocol.BatchReply(
        stored=stored, duplicates=duplicates, quarantined=quarantined, hub_time=time.time()
    )


# ------------------------------------------------------------------ uploads (tus-style offsets)


def start_upload(
    engine: Engine, files: Path, device: Device, start: protocol.UploadStart
) -> protocol.UploadState:
    with engine.connect() as conn:
        owned = conn.execute(
            select(db.records.c.id).where(
                db.records.c.device_id == device.id, db.records.c.uuid == start.result_uuid
            )
        ).first()
    if owned is None:
        raise HubError(
            409, WireCode.RESULT_FIRST, "results travel first: this file's result is not on the hub yet"
        )
    upload_id = str(uuid.uuid4())
    path = files / device.id / f"{start.record_uuid}.{start.kind}"
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(db.uploads).values(
                    id=upload_id,
                    device_id=device.id,
                    record_uuid=start.record_uuid,
                    result_uuid=start.result_uuid,
                    kind=start.kind,
                    size=start.size,
                    sha256=start.sha256,
                    media_type=start.media_type,
                    offset=0,
                    path=str(path),
                    complete=False,
                    created_at=db.now(),
                )
            )
    except IntegrityError:
        pass  # resumed: the same file was started before
    with engine.connect() as conn:
        row = conn.execute(
            select(db.uploads).where(
                db.uploads.c.device_id == device.id,
                db.uploads.c.record_uuid == start.record_uuid,
                db.uploads.c.kind == start.kind,
            )
        ).one()
    if row.sha256 != start.sha256 or row.size != start.size:
        raise HubError(
            409, WireCode.UPLOAD_CONFLICT, "a different file was started under this record and kind"
        )
    return protocol.UploadState(upload_id=row.id, offset=row.offset, complete=row.complete)


def upload_state(engine: Engine, device: Device, upload_id: str) -> Any:
    with engine.connect() as conn:
        row = conn.execute(select(db.uploads).where(db.uploads.c.id == upload_id)).first()
    if row is None or row.device_id != device.id:  # another device's upload does not exist for you
        raise HubError(404, WireCode.NO_SUCH_UPLOAD, "no such upload")
    return row


def append_chunk(
    engine: Engine, device: Device, upload_id: str, offset: int, chunk: bytes
) -> protocol.UploadState:
    row = upload_state(engine, device, upload_id)
    if row.complete:
        return protocol.UploadState(upload_id=upload_id, offset=row.size, complete=True)
    if offset != row.offset:
        raise HubError(409, WireCode.WRONG_OFFSET, f"the upload is at byte {row.offset}, not {offset}")
    if offset + len(chunk) > row.size:
        raise HubError(400, WireCode.TOO_LONG, "more bytes than announced")
    path = Path(row.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("r+b" if path.exists() else "wb") as handle:
        handle.truncate(offset)  # a chunk written but never acknowledged is overwritten
        handle.seek(offset)
        handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    new_offset = offset + len(chunk)
    complete = new_offset == row.size
    if complete and sha256_file(path) != row.sha256:
        path.unlink(missing_ok=True)
        with engine.begin() as conn:
            conn.execute(update(db.uploads).where(db.uploads.c.id == upload_id).values(offset=0))
        raise HubError(
            422, WireCode.CHECKSUM_MISMATCH, "the assembled file does not match its sha256: start again"
        )
    with engine.begin() as conn:
        conn.execute(
            update(db.uploads)
            .where(db.uploads.c.id == upload_id)
            .values(offset=new_offset, complete=complete)
        )
    return protocol.UploadState(upload_id=upload_id, offset=new_offset, complete=complete)
