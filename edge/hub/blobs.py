"""Where the bytes of device uploads live: one small interface, two homes.

`FileBlobs` (SQLite, the single-node default): each upload is a file under the hub's data
folder (`uploads.path`), written at the acknowledged offset and fsynced, as before.

`PostgresBlobs` (PostgreSQL, one or several nodes): each acknowledged chunk is a `bytea` row of
`upload_chunks` (upload id, offset), so a device whose node died resumes on any other node. The
page-serving node copies a complete upload into its own cache folder the first time it needs a
path (`local`): that copy is a cache (verified by sha256, made again when missing), never the
truth. Chunks are at most `protocol.CHUNK_BYTES` (256 KB): rows, not large objects, because a
row is written, replaced and deleted in the same transaction as everything else, is dumped by
`pg_dump` with the table, and needs no `lo_unlink` housekeeping (large objects leak when the row
pointing at them goes); PostgreSQL stores such values out of line (TOAST), compressed when that
helps.

An upload started before its hub moved to PostgreSQL keeps its file: `local` returns that file
while it exists.
"""

from __future__ import annotations

import hashlib
import os
import types
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from edge.hub import db
from edge.hub.errors import HubError
from edge.inference.registry import sha256_file
from edge.sync.protocol import WireCode

CACHE_FOLDER = "blob-cache"  # under the hub's files folder: this node's copies (PostgreSQL)


class UploadBlobs(Protocol):
    """The bytes of one upload row (`db.uploads`)."""

    def write(self, row: Any, offset: int, chunk: bytes) -> None:
        """Store `chunk` at `offset`, forgetting anything at or after it (a chunk written but
        never acknowledged is overwritten by its resend)."""

    def digest(self, row: Any) -> str:
        """sha256 (hex) of the bytes stored so far."""

    def discard(self, row: Any) -> None:
        """Forget every byte (the assembled file failed its checksum: the device starts again)."""

    def local(self, row: Any) -> Path | None:
        """A file on this node holding the complete upload; None when its bytes are missing."""


class FileBlobs:
    """Uploads as files at `uploads.path` (one node: SQLite)."""

    def write(self, row: Any, offset: int, chunk: bytes) -> None:
        path = Path(row.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("r+b" if path.exists() else "wb") as handle:
            handle.truncate(offset)
            handle.seek(offset)
            handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())

    def digest(self, row: Any) -> str:
        return sha256_file(Path(row.path))

    def discard(self, row: Any) -> None:
        Path(row.path).unlink(missing_ok=True)

    def local(self, row: Any) -> Path | None:
        path = Path(row.path)
        return path if path.exists() else None


class PostgresBlobs:
    """Uploads as chunk rows in PostgreSQL; complete ones copied into `cache` on first use."""

    def __init__(self, engine: Engine, cache: Path | None) -> None:
        self.engine, self.cache = engine, cache

    def write(self, row: Any, offset: int, chunk: bytes) -> None:
        c, u = db.upload_chunks.c, db.uploads.c
        try:
            with self.engine.begin() as conn:
                # Nodes serve one upload's requests at once: under the row's lock, a late copy of
                # an older request (its offset behind the upload's now) cannot erase later chunks.
                current = conn.execute(
                    select(u.offset, u.complete).where(u.id == row.id).with_for_update()
                ).one()
                if current.complete or current.offset != offset:
                    raise HubError(
                        409, WireCode.WRONG_OFFSET, f"the upload is at byte {current.offset}, not {offset}"
                    )
                conn.execute(delete(db.upload_chunks).where(c.upload_id == row.id, c.offset >= offset))
                conn.execute(insert(db.upload_chunks).values(upload_id=row.id, offset=offset, data=chunk))
        except IntegrityError:
            # The same chunk, resent through another node at the same instant, went in first. If
            # its bytes differed, the sha256 of the whole upload says so and it starts again.
            pass

    def _chunks(self, upload_id: str) -> Any:
        c = db.upload_chunks.c
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=16).execute(
                select(c.data).where(c.upload_id == upload_id).order_by(c.offset)
            )
            for (data,) in result:
                yield bytes(data)

    def digest(self, row: Any) -> str:
        hashed = hashlib.sha256()
        for data in self._chunks(row.id):
            hashed.update(data)
        return hashed.hexdigest()

    def discard(self, row: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(db.upload_chunks).where(db.upload_chunks.c.upload_id == row.id))

    def local(self, row: Any) -> Path | None:
        legacy = Path(row.path)
        if legacy.exists():  # written as a file before the hub moved to PostgreSQL
            return legacy
        if self.cache is None:
            raise ValueError("PostgresBlobs.local needs this node's cache folder")
        path = self.cache / row.sha256[:2] / row.sha256  # content-addressed: never stale
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        hashed, size = hashlib.sha256(), 0
        with temporary.open("wb") as handle:
            for data in self._chunks(row.id):
                hashed.update(data)
                size += len(data)
                handle.write(data)
        if size != row.size or hashed.hexdigest() != row.sha256:
            temporary.unlink(missing_ok=True)
            return None
        os.replace(temporary, path)
        return path


def for_engine(engine: Engine, cache: Path | None = None) -> UploadBlobs:
    """The home of upload bytes for this hub database. `cache`: this node's folder for copies
    of complete uploads (PostgreSQL; needed only by `local`, i.e. by whoever reads files)."""
    if engine.dialect.name == "postgresql":
        return PostgresBlobs(engine, cache)
    return FileBlobs()


def readable(engine: Engine, cache: Path, uploads: dict[str, Any]) -> dict[str, Any]:
    """The study's upload rows (kind -> row) with `path` naming a file on this node, which is
    what the renditions and presenters open; an upload whose bytes are missing is left out (the
    page shows the next best picture)."""
    store = for_engine(engine, cache)
    if isinstance(store, FileBlobs):
        return uploads  # the rows' paths are this node's files already
    out = {}
    for kind, row in uploads.items():
        path = store.local(row)
        if path is not None:
            out[kind] = types.SimpleNamespace(**{**row._asdict(), "path": str(path)})
    return out
