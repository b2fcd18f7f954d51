"""Login lockout against an attacker (issue 17, item 4), on SQLite and on PostgreSQL: parallel
attempts cannot slip past the limit, a locked or unknown account answers as slowly as a wrong
password, the lock is per account and client address, and an administrator lifts it (audited)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from sqlalchemy import Engine, select

from edge.cli import cli
from edge.config import load_settings
from edge.hub import accounts, db
from tests.hubfixtures import REVIEW_PASSWORD, Hub, database_url, postgres_url, reset  # noqa: F401 - a fixture

NAME = "target"


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hub]:
    # argon2 at its lightest: every attempt still verifies, the tests only wait less for it
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    monkeypatch.setattr(accounts, "_dummy_hash", None)
    monkeypatch.setattr(accounts, "ACCOUNT_MAX_FAILURES", 12)
    settings = load_settings(data_dir=tmp_path / "hub-host")
    url = database_url(request, tmp_path)
    running = Hub(settings, url)
    reset(running.engine)
    accounts.create_user(running.engine, NAME, REVIEW_PASSWORD, "specialist", ("north",))
    yield running
    running.client.close()


def attempt(engine: Engine, password: str, address: str = "10.0.0.1", name: str = NAME) -> bool:
    try:
        accounts.authenticate(engine, name, password, address)
    except accounts.AccountError:
        return False
    return True


def actions(engine: Engine, actor: str = NAME) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(db.audit.c.action).where(db.audit.c.actor == actor).order_by(db.audit.c.id)
            ).scalars()
        )


@pytest.mark.security
def test_parallel_attempts_cannot_try_more_passwords_than_the_limit(hub: Hub) -> None:
    """The attack: many wrong passwords at once all passed the lock check before any was counted
    (argon2 takes long); now each attempt is counted before its password is checked."""
    passwords = [f"wrong-password-{index:02d}" for index in range(15)]
    start = threading.Barrier(len(passwords))

    def guess(password: str) -> None:
        start.wait()
        attempt(hub.engine, password)

    threads = [threading.Thread(target=guess, args=(password,)) for password in passwords]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = actions(hub.engine)
    assert done.count("login.failed") == accounts.MAX_FAILURES
    assert done.count("login.refused") == len(passwords) - accounts.MAX_FAILURES
    assert not attempt(hub.engine, REVIEW_PASSWORD)  # and the right one now waits out the lock


def _seconds(engine: Engine, name: str, password: str, address: str) -> float:
    began = time.perf_counter()
    attempt(engine, password, address, name)
    return time.perf_counter() - began


@pytest.mark.security
def test_a_locked_or_unknown_account_costs_as_much_as_a_wrong_password(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts, "_hasher", PasswordHasher())  # the real cost, as on a hub
    monkeypatch.setattr(accounts, "_dummy_hash", None)
    accounts.create_user(hub.engine, "timed", REVIEW_PASSWORD, "specialist", ("north",))
    accounts.create_user(hub.engine, "baseline", REVIEW_PASSWORD, "specialist", ("north",))
    for _ in range(accounts.MAX_FAILURES):
        attempt(hub.engine, "not-the-password", "10.0.0.1", "timed")
    assert accounts.is_locked(hub.engine, "timed")
    # The three kinds of refusal timed in turn, so that a busy moment of the machine falls on
    # all of them alike; the baseline's wrong passwords come from addresses it never locks.
    wrong, locked, unknown = [], [], []
    for round_ in range(5):
        wrong.append(_seconds(hub.engine, "baseline", "not-the-password", f"10.0.1.{round_}"))
        locked.append(_seconds(hub.engine, "timed", "not-the-password", "10.0.0.1"))
        unknown.append(_seconds(hub.engine, "nobody-here", "not-the-password", "10.0.0.1"))
    # argon2 is the cost of every attempt; without it a refusal takes a few milliseconds
    typical = statistics.median(wrong)
    assert statistics.median(locked) > 0.5 * typical, (locked, wrong)
    assert statistics.median(unknown) > 0.5 * typical, (unknown, wrong)


@pytest.mark.security
def test_the_lock_is_per_account_and_address(hub: Hub) -> None:
    for _ in range(accounts.MAX_FAILURES):
        assert not attempt(hub.engine, "not-the-password", "203.0.113.7")
    assert not attempt(hub.engine, REVIEW_PASSWORD, "203.0.113.7")  # locked for that address
    for _ in range(accounts.ACCOUNT_MAX_FAILURES * 2):  # hammering on from there counts no more
        attempt(hub.engine, "not-the-password", "203.0.113.7")
    assert attempt(hub.engine, REVIEW_PASSWORD, "10.0.0.1")  # the reader at the clinic is not
    assert "user.locked" in actions(hub.engine)


@pytest.mark.security
def test_many_addresses_together_lock_the_account_everywhere(hub: Hub) -> None:
    for index in range(accounts.ACCOUNT_MAX_FAILURES):
        attempt(hub.engine, "not-the-password", f"198.51.100.{index}")
    assert not attempt(hub.engine, REVIEW_PASSWORD, "10.0.0.1")


@pytest.mark.security
def test_an_administrator_unlocks_on_the_command_line_and_it_is_audited(hub: Hub) -> None:
    for _ in range(accounts.MAX_FAILURES):
        attempt(hub.engine, "not-the-password")
    assert not attempt(hub.engine, REVIEW_PASSWORD)
    assert [user["locked"] for user in accounts.list_users(hub.engine)] == [True]
    settings = hub.settings
    result = CliRunner().invoke(
        cli,
        ["--data-dir", str(settings.data_dir), "hub", "user", "unlock", NAME],
        env={"EDGE_HUB__DATABASE_URL": settings.hub.database_url or ""},
    )
    assert result.exit_code == 0, result.output
    assert attempt(hub.engine, REVIEW_PASSWORD)
    with hub.engine.connect() as conn:
        unlocked = conn.execute(select(db.audit).where(db.audit.c.action == "user.unlocked")).one()
    assert (unlocked.actor, unlocked.detail["user"]) == ("cli", NAME)
