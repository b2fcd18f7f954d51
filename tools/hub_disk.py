"""How much disk the hub uses per 1,000 results (docs/install.md, "Retention on the hub").

    python -m tools.hub_disk --results 1000 [--database-url postgresql://...]

One real result is made first (the shipped chest X-ray model on one of its samples, analysed
and synced to a throwaway hub by the real pipeline and sync client), then its de-identified
payload, thumbnail and heatmap are stored again under new uuids through the hub's own intake
(`store_batch`, `start_upload`, `append_chunk`), N times, and the hub's database and files
folder are measured. `fill` and `enrol_device` serve tests/test_hub_retention.py too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, text

from edge.hub import db, devices, intake
from edge.hub.identities import Device
from edge.sync import protocol, signatures


def enrol_device(engine: Engine, name: str = "clinic", site: str = "clinic-1") -> Device:
    """A device enrolled with a one-time code and its own key, as `edge sync enroll` does."""
    code = devices.create_enroll_code(engine)
    key = signatures.new_device_key()
    request: dict[str, Any] = {"code": code, "device_name": name, "site": site}
    request["public_key"] = signatures.public_hex(key)
    request["proof"] = key.sign(protocol.enrollment_to_sign(request)).hex()
    reply = devices.enroll(engine, protocol.EnrollRequest(**request))
    with engine.connect() as conn:
        row = conn.execute(select(db.devices).where(db.devices.c.id == reply.device_id)).one()
    return Device(row.id, row.name, row.site, row.programme)


def fill(
    engine: Engine,
    files: Path,
    device: Device,
    payload: dict[str, Any],
    uploads: dict[str, tuple[bytes, str]],
    count: int,
    first_seq: int = 1,
) -> list[str]:
    """Store `count` copies of `payload` (new result and image uuids) with `uploads` (kind ->
    (bytes, media type)) through the hub's intake; their result uuids."""
    made = []
    for start in range(0, count, protocol.MAX_BATCH_RECORDS):
        records = []
        for offset in range(min(protocol.MAX_BATCH_RECORDS, count - start)):
            copy = json.loads(json.dumps(payload))
            copy.setdefault("image", {})["uuid"] = str(uuid.uuid4())
            result_uuid = str(uuid.uuid4())
            records.append(
                protocol.Record(
                    uuid=result_uuid,
                    seq=first_seq + start + offset,
                    kind="result",
                    sha256=protocol.payload_hash(copy),
                    payload=copy,
                )
            )
        intake.store_batch(engine, device, protocol.Batch(batch_id=str(uuid.uuid4()), records=records))
        for record in records:
            for kind, (data, media_type) in uploads.items():
                image_uuid = record.payload["image"]["uuid"]
                started = intake.start_upload(
                    engine,
                    files,
                    device,
                    protocol.UploadStart(
                        record_uuid=image_uuid if kind == "image" else record.uuid,  # type: ignore[arg-type]
                        kind=kind,  # type: ignore[arg-type]
                        result_uuid=record.uuid,  # type: ignore[arg-type]
                        size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(),
                        media_type=media_type,
                    ),
                )
                intake.append_chunk(engine, device, started.upload_id, 0, data)
            made.append(record.uuid)
    return made


def database_bytes(engine: Engine, sqlite_path: Path | None) -> int:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    assert sqlite_path is not None
    engine.dispose()  # the last connection to close checkpoints the WAL into the database file
    return sum(p.stat().st_size for p in sqlite_path.parent.glob(sqlite_path.name + "*"))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def real_result(work: Path) -> tuple[dict[str, Any], dict[str, tuple[bytes, str]]]:
    """One result as a device sends it: its payload and its upload files, by the real pipeline
    and sync client against a throwaway SQLite hub."""
    from fastapi.testclient import TestClient

    from edge.config import load_settings
    from edge.hub.app import create_app
    from edge.pipeline import Pipeline
    from edge.store import Store
    from edge.sync.client import SyncClient
    from edge.sync.credential import enroll
    from edge.sync.runner import exchange

    models = Path(__file__).resolve().parents[1] / "models"
    sample = sorted((models / "cxr-pneumonia" / "samples").glob("*.png"))[0]
    hub_settings = load_settings(data_dir=work / "hub")
    engine = db.make_engine(f"sqlite:///{work / 'sample-hub.db'}")
    client = TestClient(create_app(hub_settings, engine), base_url="http://testserver")
    settings = load_settings(data_dir=work / "device", models={"dir": models}, sync={"images": "thumbnails"})
    credential = enroll(
        settings, "http://testserver", devices.create_enroll_code(engine), "d", client, insecure=True
    )
    with Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store)
        pipeline.analyse_file(sample)
        pipeline.close()
        exchange(SyncClient(settings, store, client, credential))
    with engine.connect() as conn:
        payload = conn.execute(select(db.records.c.payload)).scalar_one()
        files = {
            row.kind: (Path(row.path).read_bytes(), row.media_type)
            for row in conn.execute(select(db.uploads))
        }
    return payload, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=1000)
    parser.add_argument("--database-url", help="PostgreSQL URL (an empty database); default SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        payload, uploads = real_result(work)
        sqlite_path = work / "measured" / "hub.db"
        engine = db.make_engine(args.database_url or f"sqlite:///{sqlite_path}")
        files = work / "measured" / "files"
        before = database_bytes(engine, None if args.database_url else sqlite_path)
        fill(engine, files, enrol_device(engine), payload, uploads, args.results)
        rows = database_bytes(engine, None if args.database_url else sqlite_path) - before
        stored = folder_bytes(files)
        per = 1000 / args.results
        print(f"{engine.dialect.name}: {args.results} results; per 1,000 results:")
        print(f"  rows (records, worklist, uploads; indexes): {rows * per / 1e6:.2f} MB")
        for kind, (data, media_type) in sorted(uploads.items()):
            print(f"  files: {kind} ({media_type}): {len(data) * 1000 / 1e6:.2f} MB")
        print(f"  files in all: {stored * per / 1e6:.2f} MB; total {(rows + stored) * per / 1e6:.2f} MB")
        print(f"  payload: {len(protocol.canonical(payload))} bytes as JSON")


if __name__ == "__main__":
    main()
