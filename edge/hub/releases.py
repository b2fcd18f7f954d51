"""Signed model releases: published by an administrator (signed by the publisher, whose key
the hub never holds), offered to each device by its programme. No HTTP.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import Engine, delete, insert, select

from edge.hub import db
from edge.hub.audit import record_audit
from edge.hub.errors import HubError
from edge.hub.identities import Device
from edge.sync import protocol
from edge.sync.protocol import WireCode


def publish_release(
    engine: Engine, files: Path, release: protocol.ModelRelease, folder: Path, programme: str = "default"
) -> None:
    """Store a release signed by the publisher (the hub never holds the signing key)."""
    target = files / "releases" / release.name / release.version
    target.mkdir(parents=True, exist_ok=True)
    for name, digest in release.files.items():
        destination = (target / name).resolve()
        if not destination.is_relative_to(target.resolve()):  # "../x" or "/x": not inside the release
            raise HubError(400, WireCode.BAD_RELEASE, f"{name} is not a path inside the release")
        data = (folder / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise HubError(400, WireCode.BAD_RELEASE, f"{name} does not match the release's sha256")
        destination.parent.mkdir(parents=True, exist_ok=True)  # a model's samples/ folder
        destination.write_bytes(data)
    with engine.begin() as conn:
        conn.execute(
            delete(db.releases).where(
                db.releases.c.name == release.name, db.releases.c.version == release.version
            )
        )
        conn.execute(
            insert(db.releases).values(
                name=release.name,
                version=release.version,
                programme=programme,
                release=release.model_dump(),
                created_at=db.now(),
            )
        )
    record_audit(engine, "admin", "release.published", name=release.name, version=release.version)


def releases_for(engine: Engine, device: Device) -> list[protocol.ModelRelease]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(db.releases.c.release).where(db.releases.c.programme == device.programme)
        ).all()
    return [protocol.ModelRelease(**row.release) for row in rows]


def release_file(files: Path, engine: Engine, device: Device, name: str, version: str, file: str) -> Path:
    for release in releases_for(engine, device):
        if release.name == name and release.version == version and file in release.files:
            return files / "releases" / name / version / file
    raise HubError(404, WireCode.NO_SUCH_FILE, "no such release file for this device")
