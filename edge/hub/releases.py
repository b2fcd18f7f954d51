"""Signed model releases: published by an administrator (signed by the publisher, whose key
the hub never holds), offered to each device by its programme. No HTTP.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from edge.hub import db
from edge.hub.audit import record_audit
from edge.hub.devices import fingerprint
from edge.hub.errors import HubError
from edge.hub.identities import Device
from edge.sync import protocol, signatures
from edge.sync.protocol import WireCode
from edge.sync.release_paths import release_path_problem


def require_publisher_signature(document: dict[str, Any], publisher_key: str | None, code: WireCode) -> None:
    """Refuse a release or profile that the devices pinning `publisher_key` would refuse (no key
    configured: nothing to check here, the devices do)."""
    if publisher_key is None or signatures.verify(document, publisher_key):
        return
    raise HubError(
        400,
        code,
        "the signature is not the publisher's ([hub] publisher_public_key, fingerprint "
        f"{fingerprint(publisher_key)}): every device pinning that key would refuse it; "
        "sign it with the publisher's key",
    )


def publish_release(
    engine: Engine,
    files: Path,
    release: protocol.ModelRelease,
    folder: Path,
    programme: str = "default",
    publisher_key: str | None = None,
) -> None:
    """Store a release signed by the publisher (the hub never holds the signing key; it checks
    the signature when it knows the publisher's public key)."""
    require_publisher_signature(release.model_dump(), publisher_key, WireCode.BAD_RELEASE)
    for part in (release.name, release.version):
        if release_path_problem(part) is not None or "/" in part:
            raise HubError(400, WireCode.BAD_RELEASE, f"{part!r} is not a plain release name or version")
    problems = [problem for name in release.files if (problem := release_path_problem(name))]
    if problems:
        raise HubError(400, WireCode.BAD_RELEASE, problems[0])
    if set(release.sizes) != set(release.files):
        raise HubError(400, WireCode.BAD_RELEASE, "the release's sizes and files name different files")
    target = files / "releases" / release.name / release.version
    for name, digest in release.files.items():
        source = folder / name
        if not source.is_file():
            raise HubError(400, WireCode.BAD_RELEASE, f"{name} is listed but not in {folder}")
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)  # a model's samples/ and plots/
        sha, size = _copy_hashed(source, destination)
        if sha != digest or size != release.sizes[name]:
            destination.unlink()
            raise HubError(400, WireCode.BAD_RELEASE, f"{name} does not match the release's sha256 and size")
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
    """The stored file of a release offered to this device; only names the release lists, and
    only safe ones (a release stored by an older hub is not trusted to have checked them)."""
    if release_path_problem(file) is None:
        for release in releases_for(engine, device):
            if release.name == name and release.version == version and file in release.files:
                path = files / "releases" / release.name / release.version / file
                if path.is_file():  # gone from the disk: a 404, not the file server's 500
                    return path
    raise HubError(404, WireCode.NO_SUCH_FILE, "no such release file for this device")


def _copy_hashed(source: Path, destination: Path) -> tuple[str, int]:
    """Copy in pieces (a model file can be hundreds of MB), returning the copy's sha256 and size."""
    digest, size = hashlib.sha256(), 0
    with source.open("rb") as reader, destination.open("wb") as writer:
        while piece := reader.read(1024 * 1024):
            digest.update(piece)
            size += len(piece)
            writer.write(piece)
    return digest.hexdigest(), size
