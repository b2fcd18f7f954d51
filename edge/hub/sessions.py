"""Server-side sessions of the review pages and their CSRF tokens.

- A session is a random token in an HttpOnly, SameSite=Strict cookie; the hub stores only its
  sha256, with an idle and an absolute expiry. Logging out deletes the row, so a copied cookie
  is worthless afterwards; a password change or a disabled account ends every session
  (`accounts.py` calls `revoke_sessions`).
- Each session has its own CSRF secret. Pages carry it masked with a fresh one-time pad (so the
  token bytes differ in every response and a compressed page leaks nothing about it), and every
  form post and script post must send it back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine, delete, insert, select, update

from edge.hub import db
from edge.hub.identities import User

SESSION_IDLE_S = 2 * 3600
SESSION_MAX_S = 12 * 3600
TOUCH_EVERY_S = 60  # last_seen is written at most this often (not on every image request)


@dataclass(frozen=True)
class Session:
    token_hash: str
    user: User
    csrf_secret: str
    expires_at: float


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------ sessions


def open_session(engine: Engine, user: User) -> tuple[str, Session]:
    """A new session (a new token at every login: a planted cookie is never promoted)."""
    token = secrets.token_urlsafe(32)
    now = time.time()
    session = Session(_sha(token), user, secrets.token_hex(32), now + SESSION_MAX_S)
    with engine.begin() as conn:
        conn.execute(delete(db.sessions).where(db.sessions.c.expires_at < now))
        conn.execute(
            insert(db.sessions).values(
                token_hash=session.token_hash,
                user_id=user.id,
                csrf_secret=session.csrf_secret,
                created_at=now,
                last_seen_at=now,
                expires_at=session.expires_at,
            )
        )
    return token, session


def session_for(engine: Engine, token: str | None) -> Session | None:
    """The live session behind a cookie value, or None (unknown, expired, idle, disabled)."""
    if not token or len(token) > 128:
        return None
    token_hash = _sha(token)
    now = time.time()
    with engine.connect() as conn:
        row = conn.execute(
            select(db.sessions, db.users)
            .join(db.users, db.users.c.id == db.sessions.c.user_id)
            .where(db.sessions.c.token_hash == token_hash)
        ).first()
    if row is None:
        return None
    if row.expires_at < now or row.last_seen_at + SESSION_IDLE_S < now or row.disabled_at is not None:
        close_session(engine, token_hash)
        return None
    if now - row.last_seen_at > TOUCH_EVERY_S:
        with engine.begin() as conn:
            conn.execute(
                update(db.sessions).where(db.sessions.c.token_hash == token_hash).values(last_seen_at=now)
            )
    user = User(row.user_id, row.name, row.role, tuple(row.programmes or ()))
    return Session(token_hash, user, row.csrf_secret, row.expires_at)


def close_session(engine: Engine, token_hash: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(db.sessions).where(db.sessions.c.token_hash == token_hash))


def revoke_sessions(engine: Engine, user_id: str, keep: str | None = None) -> None:
    condition = db.sessions.c.user_id == user_id
    if keep is not None:
        condition = condition & (db.sessions.c.token_hash != keep)
    with engine.begin() as conn:
        conn.execute(delete(db.sessions).where(condition))


# ------------------------------------------------------------------ CSRF tokens


def mask_token(secret: str) -> str:
    """The secret XORed with a fresh pad, pad first: different bytes in every page."""
    raw = bytes.fromhex(secret)
    pad = secrets.token_bytes(len(raw))
    return (
        base64.urlsafe_b64encode(pad + bytes(a ^ b for a, b in zip(pad, raw, strict=True)))
        .decode()
        .rstrip("=")
    )


def token_matches(secret: str, presented: str | None) -> bool:
    if not presented or len(presented) > 256:
        return False
    try:
        blob = base64.urlsafe_b64decode(presented + "=" * (-len(presented) % 4))
    except (binascii.Error, ValueError):
        return False
    raw = bytes.fromhex(secret)
    if len(blob) != 2 * len(raw):
        return False
    pad, masked = blob[: len(raw)], blob[len(raw) :]
    return hmac.compare_digest(bytes(a ^ b for a, b in zip(pad, masked, strict=True)), raw)
