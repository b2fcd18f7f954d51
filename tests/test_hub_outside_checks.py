"""What an outside check of the hub's pages found: a SQLite hub's readers held its writers off
(one slow FHIR search held the write lock 44 s, and devices' batches, verdicts and logins failed
after 30 s), and an administrator given a programme read as scoped to it, which it never was."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import func, insert, select

from edge.hub import db


def test_a_reader_in_a_transaction_does_not_stop_a_writer(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    row = {"code_hash": "a" * 64, "programme": "default", "created_at": "x", "expires_at": "y"}
    with engine.connect() as reader:
        assert reader.execute(select(func.count()).select_from(db.enroll_codes)).scalar() == 0
        done = threading.Event()

        def write() -> None:
            with engine.begin() as writer:  # took the write lock up front, as before
                writer.execute(insert(db.enroll_codes).values(**row))
            done.set()

        started = time.monotonic()
        thread = threading.Thread(target=write)
        thread.start()
        assert done.wait(10), "the writer waited on a reader's open transaction"
        thread.join()
        assert time.monotonic() - started < 10
        # The reader's snapshot is its own until it ends
        assert reader.execute(select(func.count()).select_from(db.enroll_codes)).scalar() == 0
    with engine.connect() as later:
        assert later.execute(select(func.count()).select_from(db.enroll_codes)).scalar() == 1
    engine.dispose()


def test_an_administrator_is_every_programmes_and_says_so(tmp_path: Path) -> None:
    """An administrator manages every programme; `--programme north` on one read as a scope it
    never had (an outside check saw the south sites on its pages)."""
    from edge.hub import accounts

    engine = db.make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    password = "correct horse battery staple"
    admin = accounts.create_user(engine, "chief", password, "administrator", ("north",))
    assert admin.programmes == ("*",)
    reader = accounts.create_user(engine, "dr-north", password, "specialist", ("north",))
    assert reader.programmes == ("north",)
    accounts.update_user(engine, reader.id, "chief", role="administrator")
    accounts.update_user(engine, admin.id, "chief", programmes=("south",))
    stored = {row.name: tuple(row.programmes) for row in _users(engine)}
    assert stored == {"chief": ("*",), "dr-north": ("*",)}
    engine.dispose()


def _users(engine: object) -> list:
    from sqlalchemy import Engine

    assert isinstance(engine, Engine)
    with engine.connect() as conn:
        return list(conn.execute(select(db.users.c.name, db.users.c.programmes)))
