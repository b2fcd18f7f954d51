"""A SQLite hub's readers do not hold its writers off (an outside check: one slow FHIR search
held the write lock for 44 s, and devices' batches, verdicts and logins failed after 30 s)."""

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
