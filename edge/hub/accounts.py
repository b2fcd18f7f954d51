"""Specialists' accounts on the hub: argon2id passwords and lockout.

- Passwords are hashed with argon2-cffi's `PasswordHasher` (argon2id, the library's RFC 9106
  defaults); a hash made with older parameters is replaced at the next successful login. A name
  that does not exist costs the same verification as one that does (no account discovery by time).
- `MAX_FAILURES` attempts without a success from one client address lock the account for that
  address for `LOCK_S` (`ACCOUNT_MAX_FAILURES` from all addresses together lock it for all). An
  attempt is counted before its password is checked, in one transaction holding the counter's
  row, so parallel attempts cannot slip past the limit; a locked account still costs an argon2
  verification (its refusal takes as long as a wrong password's). An administrator unlocks an
  account (`edge hub user unlock`, the admin page). Every attempt leaves an audit row.
- Sessions and their CSRF secrets: `sessions.py`; a password change or a disabled account ends
  every session of the account.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from edge.hub import db
from edge.hub.audit import record_audit
from edge.hub.identities import ALL_PROGRAMMES, ROLES, User
from edge.hub.sessions import revoke_sessions

MIN_PASSWORD = 12
MAX_PASSWORD = 256  # argon2 takes any length; a megabyte "password" should not cost us a hash
MAX_FAILURES = 5  # per account and client address
ACCOUNT_MAX_FAILURES = 50  # per account over every address: a guess spread over many machines
ANY_ADDRESS = "*"
LOCK_S = 15 * 60
_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
_PROGRAMME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_hasher = PasswordHasher()
_dummy_hash: str | None = None


class AccountError(Exception):
    """A refusal worded for the person at the form."""


def _user(row: Any) -> User:
    return User(row.id, row.name, row.role, tuple(row.programmes or ()))


def normalise_name(name: str) -> str:
    cleaned = name.strip().lower()
    if not _NAME.match(cleaned):
        raise AccountError(
            "a name is 1-64 characters (letters, digits, '.', '_', '@', '-'), starting with a letter or digit"
        )
    return cleaned


def parse_programmes(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'north, south' or ['north'] -> ('north', 'south'); '*' alone means every programme."""
    items = text.replace(";", ",").split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not names:
        raise AccountError("give at least one programme (or * for all of them)")
    if ALL_PROGRAMMES in names:
        return (ALL_PROGRAMMES,)
    bad = [name for name in names if not _PROGRAMME.match(name)]
    if bad:
        raise AccountError(f"not a programme name: {bad[0]!r}")
    return names


def check_password(password: str, name: str = "") -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"a password has at most {MAX_PASSWORD} characters")
    if name and password.strip().lower() == name.lower():
        raise AccountError("the password cannot be the account name")


def generate_password() -> str:
    """A password an administrator can read out over a bad phone line (no 0/O, 1/l)."""
    alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    groups = ["".join(secrets.choice(alphabet) for _ in range(5)) for _ in range(4)]
    return "-".join(groups)


# ------------------------------------------------------------------ accounts


def create_user(
    engine: Engine,
    name: str,
    password: str,
    role: str = "specialist",
    programmes: tuple[str, ...] = ("default",),
    actor: str = "admin",
) -> User:
    name = normalise_name(name)
    if role not in ROLES:
        raise AccountError(f"the role is one of {', '.join(ROLES)}")
    # An administrator manages every programme (the agreement page, profiles, FHIR, accounts):
    # programmes scope specialists and FHIR clients. Stored as such, so no page suggests
    # otherwise (`--programme north` on an administrator read as a scope it never had).
    programmes = (ALL_PROGRAMMES,) if role == "administrator" else parse_programmes(programmes)
    check_password(password, name)
    with engine.begin() as conn:
        if conn.execute(select(db.users.c.id).where(db.users.c.name == name)).first() is not None:
            raise AccountError(f"there is already an account called {name}")
        user_id = str(uuid.uuid4())
        conn.execute(
            insert(db.users).values(
                id=user_id,
                name=name,
                password_hash=_hasher.hash(password),
                role=role,
                programmes=list(programmes),
                created_at=db.now(),
                password_changed_at=db.now(),
                failed_logins=0,
            )
        )
    record_audit(engine, actor, "user.created", name=name, role=role, programmes=list(programmes))
    return User(user_id, name, role, programmes)


def list_users(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(db.users).order_by(db.users.c.name)).all()
        locked = set(
            conn.execute(
                select(db.login_failures.c.name).where(db.login_failures.c.locked_until > time.time())
            ).scalars()
        )
    return [
        {
            "id": row.id,
            "name": row.name,
            "role": row.role,
            "programmes": list(row.programmes or ()),
            "created_at": row.created_at,
            "last_login_at": row.last_login_at,
            "disabled": row.disabled_at is not None,
            "locked": row.name in locked,
            "failed_logins": row.failed_logins,
        }
        for row in rows
    ]


def find_user(engine: Engine, name_or_id: str) -> User | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(db.users).where(
                (db.users.c.id == name_or_id) | (db.users.c.name == name_or_id.strip().lower())
            )
        ).first()
    return None if row is None else _user(row)


def update_user(
    engine: Engine,
    user_id: str,
    actor: str,
    *,
    role: str | None = None,
    programmes: tuple[str, ...] | None = None,
    disabled: bool | None = None,
    unlock: bool = False,
) -> None:
    values = _changes(role, programmes, disabled, unlock)
    if not values:
        return
    if unlock:
        current_name = find_user(engine, user_id)
        if current_name is not None:
            _forget_failures(engine, current_name.name)
    active_admins = select(db.users.c.id).where(
        db.users.c.role == "administrator", db.users.c.disabled_at.is_(None)
    )
    with engine.begin() as conn:
        current = conn.execute(select(db.users).where(db.users.c.id == user_id)).first()
        if current is None:
            raise AccountError("no such account")
        if values.get("role", current.role) == "administrator" and (
            "programmes" in values or "role" in values
        ):
            values["programmes"] = [ALL_PROGRAMMES]  # every programme, as `create_user` says
        before = len(conn.execute(active_admins).all())
        conn.execute(update(db.users).where(db.users.c.id == user_id).values(**values))
        if before and not conn.execute(active_admins).all():  # raising rolls the change back
            raise AccountError("the hub needs at least one active administrator")
    changed = (role is not None and role != current.role) or (
        programmes is not None and values["programmes"] != list(current.programmes or ())
    )
    if disabled or changed:
        revoke_sessions(engine, user_id)  # a changed right takes effect now, not at next login
    detail = {k: v for k, v in values.items() if k != "disabled_at"}
    if disabled is not None:
        detail["disabled"] = disabled
    record_audit(engine, actor, "user.updated", user=user_id, **detail)


def _changes(
    role: str | None, programmes: tuple[str, ...] | None, disabled: bool | None, unlock: bool
) -> dict[str, Any]:
    """The columns `update_user` sets, checked."""
    values: dict[str, Any] = {}
    if role is not None:
        if role not in ROLES:
            raise AccountError(f"the role is one of {', '.join(ROLES)}")
        values["role"] = role
    if programmes is not None:
        values["programmes"] = list(parse_programmes(programmes))
    if disabled is not None:
        values["disabled_at"] = db.now() if disabled else None
    if unlock:
        values.update(failed_logins=0, locked_until=None)
    return values


def set_password(
    engine: Engine, user_id: str, password: str, actor: str, keep_session: str | None = None
) -> None:
    """New password; every session of the account ends except `keep_session` (a token hash)."""
    with engine.connect() as conn:
        row = conn.execute(select(db.users.c.name).where(db.users.c.id == user_id)).first()
    if row is None:
        raise AccountError("no such account")
    check_password(password, row.name)
    with engine.begin() as conn:
        conn.execute(
            update(db.users)
            .where(db.users.c.id == user_id)
            .values(
                password_hash=_hasher.hash(password),
                password_changed_at=db.now(),
                failed_logins=0,
                locked_until=None,
            )
        )
    _forget_failures(engine, row.name)  # a new password lifts the locks too
    revoke_sessions(engine, user_id, keep=keep_session)
    record_audit(engine, actor, "user.password_set", user=row.name)


# ------------------------------------------------------------------ logging in


def _dummy() -> str:
    global _dummy_hash  # noqa: PLW0603 - made once, lazily: hashing at import time would slow every CLI start
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash(secrets.token_hex(16))
    return _dummy_hash


def _verifies(password_hash: str, password: str) -> bool:
    try:
        return bool(_hasher.verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class _Attempt:
    allowed: bool  # neither the (account, address) pair nor the account is locked
    locks: bool  # this attempt reached a limit: if it fails, the account is now locked


def _reserve_attempt(engine: Engine, name: str, address: str, now: float) -> _Attempt:
    """Count this attempt as a failure before the password is looked at, in one transaction that
    holds the counters' rows (SQLite: BEGIN IMMEDIATE; PostgreSQL: SELECT ... FOR UPDATE). A burst
    of parallel attempts is then serialised here: only the first `MAX_FAILURES` of a pair are
    ever verified, whichever of them carries the right password."""
    upsert = postgresql_insert if engine.dialect.name == "postgresql" else sqlite_insert
    table = db.login_failures
    allowed, locks = True, False
    with engine.begin() as conn:
        # Quiet for LOCK_S and not locked: forgotten (the table stays as small as the attacks).
        conn.execute(
            delete(table).where(
                table.c.last_at < now - LOCK_S,
                table.c.locked_until.is_(None) | (table.c.locked_until < now),
            )
        )
        for key, limit in ((address, MAX_FAILURES), (ANY_ADDRESS, ACCOUNT_MAX_FAILURES)):
            conn.execute(
                upsert(table)
                .values(name=name, address=key, failures=0, locked_until=None, last_at=now)
                .on_conflict_do_nothing()
            )
            where = (table.c.name == name) & (table.c.address == key)
            row = conn.execute(select(table).where(where).with_for_update()).one()
            failures, locked_until = row.failures, row.locked_until
            if locked_until is not None and locked_until <= now:  # the lock ran out
                failures, locked_until = 0, None
            if locked_until is not None:
                # Locked for this pair: refused, and not counted against the account as a whole
                # (one address hammering on must not lock the reader out everywhere).
                allowed = False
                conn.execute(update(table).where(where).values(last_at=now))
                break
            else:
                failures += 1
                if failures >= limit:  # this attempt is the last one verified
                    locked_until, locks = now + LOCK_S, True
            conn.execute(
                update(table).where(where).values(failures=failures, locked_until=locked_until, last_at=now)
            )
    return _Attempt(allowed, locks and allowed)


def _forget_failures(engine: Engine, name: str, address: str | None = None) -> None:
    """After a success: this pair's and the account's counters. An unlock: every address's."""
    condition = db.login_failures.c.name == name
    if address is not None:
        condition &= db.login_failures.c.address.in_([address, ANY_ADDRESS])
    with engine.begin() as conn:
        conn.execute(delete(db.login_failures).where(condition))


def is_locked(engine: Engine, name: str, now: float | None = None) -> bool:
    """Whether some address (or the account as a whole) is locked out of `name`."""
    with engine.connect() as conn:
        row = conn.execute(
            select(db.login_failures.c.name).where(
                db.login_failures.c.name == name, db.login_failures.c.locked_until > (now or time.time())
            )
        ).first()
    return row is not None


def unlock_user(engine: Engine, name_or_id: str, actor: str) -> User:
    """An administrator lifts every lock on an account (all addresses); audited."""
    user = find_user(engine, name_or_id)
    if user is None:
        raise AccountError("no such account")
    _forget_failures(engine, user.name)
    with engine.begin() as conn:  # the columns older hubs locked with
        conn.execute(
            update(db.users).where(db.users.c.id == user.id).values(failed_logins=0, locked_until=None)
        )
    record_audit(engine, actor, "user.unlocked", user=user.name)
    return user


def authenticate(engine: Engine, name: str, password: str, address: str = "", purpose: str = "login") -> User:
    """The user, or AccountError with one sentence for every kind of refusal. `purpose` names
    the audit rows ("login", or "password_check" when a logged-in reader confirms theirs).

    Every attempt costs one argon2 verification, whether the name exists, the account is locked
    or the password is too long: the time of a refusal says nothing about the account."""
    refused = AccountError(
        f"Wrong name or password. After {MAX_FAILURES} failed attempts an account is locked for "
        f"{LOCK_S // 60} minutes."
    )
    cleaned = name.strip().lower()[:64]
    address = (address or "-")[:64]
    attempt = _reserve_attempt(engine, cleaned, address, time.time())
    with engine.connect() as conn:
        row = conn.execute(select(db.users).where(db.users.c.name == cleaned)).first()
    usable = row is not None and len(password) <= MAX_PASSWORD
    stored = row.password_hash if row is not None and usable else _dummy()
    verified = _verifies(stored, password[:MAX_PASSWORD]) and usable
    actor = cleaned or "-"
    if not attempt.allowed:
        record_audit(engine, actor, f"{purpose}.refused", reason="locked", address=address)
        raise refused
    if not verified:
        reason = "wrong password" if row is not None else "unknown name"
        record_audit(engine, actor, f"{purpose}.failed", reason=reason, address=address)
        if attempt.locks:
            record_audit(engine, actor, "user.locked", seconds=LOCK_S, address=address)
        raise refused
    assert row is not None
    _forget_failures(engine, cleaned, address)
    if row.disabled_at is not None:
        record_audit(engine, row.name, f"{purpose}.refused", reason="disabled", address=address)
        raise AccountError("This account is disabled. Ask the hub's administrator.")
    values: dict[str, Any] = {"failed_logins": 0, "locked_until": None}
    if purpose == "login":
        values["last_login_at"] = db.now()
    if _hasher.check_needs_rehash(row.password_hash):
        values["password_hash"] = _hasher.hash(password)
    with engine.begin() as conn:
        conn.execute(update(db.users).where(db.users.c.id == row.id).values(**values))
    record_audit(engine, row.name, f"{purpose}.ok", address=address)
    return _user(row)
