"""The worklist is read along an index, on SQLite and PostgreSQL, and a hub made before the
index gets it when it starts.

At 200,000 results the first page of the worklist took 446 ms, most of it a sort of every row a
reader may see (a measurement on PostgreSQL: docs/install.md, "The review pages at scale"). The
index is on the order's expressions, which a database uses only when the query has the very
same expressions: this fails if the order and the index drift apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from edge.hub import db, worklist
from edge.hub.identities import User
from tests.hubfixtures import postgres_url  # noqa: F401 - a fixture

READER = User("u1", "dr-a", "specialist", ("north",))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    found: str = request.getfixturevalue("postgres_url")
    return found


def _plan(engine: Engine) -> str:
    query = worklist.reader_rows(READER, worklist.Filters()).order_by(*worklist.ORDER).limit(50)
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))  # an empty table: ask what it could use
            conn.execute(text("SET enable_sort = off"))
        return "\n".join(str(row[-1]) for row in conn.execute(text(explain + str(compiled))))


def _index_names(engine: Engine) -> set[str]:
    catalogue = (
        "SELECT name FROM sqlite_master WHERE type = 'index'"
        if engine.dialect.name == "sqlite"
        else "SELECT indexname FROM pg_indexes"
    )
    with engine.connect() as conn:
        return {row[0] for row in conn.execute(text(catalogue))}


def test_the_worklist_is_read_along_its_index_and_an_older_hub_gets_it(url: str) -> None:
    engine = db.make_engine(url)
    try:
        plan = _plan(engine)
        assert "ix_worklist_order" in plan, plan
        with engine.begin() as conn:  # a hub made before the index
            conn.execute(text("DROP INDEX ix_worklist_order"))
            conn.execute(text("DROP INDEX ix_reviews_device_result_seq"))
        assert "ix_worklist_order" not in _index_names(engine)
    finally:
        engine.dispose()
    engine = db.make_engine(url)  # it starts again: the index is made
    try:
        assert {"ix_worklist_order", "ix_reviews_device_result_seq"} <= _index_names(engine)
        assert "ix_worklist_order" in _plan(engine)
        db.add_new_indexes(engine)  # and every later start makes nothing twice
    finally:
        engine.dispose()


def test_the_filters_offer_what_arrived_and_only_to_its_readers(tmp_path: Path) -> None:
    """The modalities and findings offered are kept per reader scope and topped up with what
    arrived since the last page, not read from every row at every page load."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    device = {"credential_hash": "", "created_at": "2026-12-05T06:00:00Z"}
    row = {"device_id": "d1", "received_at": "2026-12-05T06:00:00Z", "urgent": False}
    with engine.begin() as conn:
        conn.execute(db.devices.insert(), [{**device, "id": "d1", "name": "a", "programme": "north"}])
        conn.execute(db.devices.insert(), [{**device, "id": "d2", "name": "b", "programme": "south"}])
        conn.execute(
            db.worklist.insert(),
            [{**row, "record_id": 1, "result_uuid": "r1", "modality": "CR", "finding": "pneumonia"}],
        )
    options = worklist.filter_options(engine, READER)
    assert (options.modalities, options.findings) == (["CR"], ["pneumonia"])
    with engine.begin() as conn:
        conn.execute(
            db.worklist.insert(),
            [{**row, "record_id": 2, "result_uuid": "r2", "modality": None, "finding": "normal"}],
        )
        conn.execute(
            db.worklist.insert(),
            [
                {
                    **row,
                    "record_id": 3,
                    "result_uuid": "r3",
                    "device_id": "d2",
                    "modality": "US",
                    "finding": "malignant",
                }
            ],
        )
    options = worklist.filter_options(engine, READER)
    assert (options.modalities, options.findings) == (["CR", worklist.UNKNOWN], ["normal", "pneumonia"])
    south = User("u2", "dr-b", "specialist", ("south",))
    assert worklist.filter_options(engine, south).findings == ["malignant"]
    engine.dispose()
