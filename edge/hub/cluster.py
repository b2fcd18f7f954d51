"""Several hub processes ("nodes") on one database: what makes them interchangeable.

A node keeps nothing a request needs outside the database: results, uploads (their bytes as
chunk rows on PostgreSQL, `blobs.py`), sessions, login lockouts and device nonces are rows;
what it keeps on its own disk or in memory is a cache (renditions and copies of uploads, keyed
by sha256: a miss recomputes) or a per-node guard (the request rate buckets of `limits.py`: a
device behind N nodes gets at most N times its rate, which still stops a runaway device).
Work one node should do at a time (indexing at start, purges) runs under a PostgreSQL
advisory lock (`one_node_at_a_time`). SQLite cannot be shared by several machines' processes
safely (file locks over a network file system are not reliable), so `[hub] nodes` above one
on SQLite is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text

from edge.errors import Code, EdgeError


def refuse_sqlite_for_several_nodes(database_url: str, nodes: int) -> None:
    """`HUB_NODES_NEED_POSTGRESQL` when `[hub] nodes` > 1 and the database is SQLite."""
    if nodes > 1 and not database_url.startswith("postgresql"):
        raise EdgeError(
            Code.HUB_NODES_NEED_POSTGRESQL,
            f"[hub] nodes = {nodes}, but the hub database is SQLite: several hub processes need "
            'one PostgreSQL ([hub] database_url = "postgresql://...")',
        )


def lock_key(name: str) -> int:
    """A stable 63-bit advisory lock key for a named piece of work."""
    return int.from_bytes(hashlib.sha256(f"edge-hub:{name}".encode()).digest()[:8], "big") >> 1


@contextmanager
def one_node_at_a_time(engine: Engine, name: str) -> Iterator[bool]:
    """Yields True to the one node that holds the lock named `name` (it does the work), False to
    the others while it is held (they skip it: the holder does it for all). A session advisory
    lock: PostgreSQL releases it when the holder's connection ends, so a node killed mid-work
    does not block the next one. On SQLite (one node) always True."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = lock_key(name)
    with engine.connect() as conn:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
