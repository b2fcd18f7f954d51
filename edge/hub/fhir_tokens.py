"""Who may read /fhir, and what: bearer tokens for health information systems, and `Access`, the
scope every FHIR query is limited by (a token's, or a logged-in reader's). No HTTP.

- An administrator makes one token per client system (`edge hub fhir-token create`), scoped
  like a reader's account: programmes (or `*`), and optionally some sites within them. The
  token is shown once; the hub stores only its sha256 (the token is 256 random bits, so a fast
  hash loses nothing against guessing, and lookups stay one indexed equality).
- A revoked token is refused at its next request; revocation and creation leave audit rows.
- `last_used_at` is written at most once a minute, so a polling client does not turn every
  read into a write.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select, update

from edge.hub import db
from edge.hub.accounts import AccountError, parse_programmes
from edge.hub.audit import record_audit
from edge.hub.identities import ALL_PROGRAMMES, User

PREFIX = "edgefhir_"  # recognisable in a leaked configuration file or a secret scanner
TOUCH_EVERY_S = 60
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_SITE = re.compile(r"^[^\x00-\x1f]{1,64}$")


@dataclass(frozen=True)
class Access:
    """What one request may read: results of devices in these programmes (and these sites)."""

    actor: str  # "token:<name>" or "user:<name>", for logs and audit rows
    programmes: tuple[str, ...]  # ("*",) for every programme
    sites: tuple[str, ...] = ()  # () for every site of those programmes

    @property
    def all_programmes(self) -> bool:
        return ALL_PROGRAMMES in self.programmes

    @classmethod
    def for_user(cls, user: User) -> Access:
        """A reader of the review pages reads FHIR with the same programmes."""
        return cls(f"user:{user.name}", (ALL_PROGRAMMES,) if user.sees_all else user.programmes)


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _sites(sites: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(site.strip() for site in sites if site.strip()))
    bad = [name for name in names if not _SITE.match(name)]
    if bad:
        raise AccountError(f"not a site name: {bad[0]!r}")
    return names


def create_token(
    engine: Engine,
    name: str,
    programmes: tuple[str, ...] | list[str],
    sites: tuple[str, ...] | list[str] = (),
    actor: str = "admin",
) -> tuple[str, str]:
    """(token id, token): the token is shown once and never stored."""
    name = name.strip()
    if not _NAME.match(name):
        raise AccountError("a client name is 1-64 letters, digits, '.', '_', '@' or '-'")
    scope = parse_programmes(tuple(programmes))
    site_names = _sites(sites)
    token = PREFIX + secrets.token_urlsafe(32)
    token_id = str(uuid.uuid4())
    t = db.fhir_tokens
    with engine.begin() as conn:
        active = conn.execute(select(t.c.id).where(t.c.name == name, t.c.revoked_at.is_(None))).first()
        if active is not None:
            raise AccountError(f"there is already an active token called {name}: revoke it first")
        conn.execute(
            insert(t).values(
                id=token_id,
                name=name,
                token_hash=_sha(token),
                programmes=list(scope),
                sites=list(site_names),
                created_at=db.now(),
                created_by=actor,
            )
        )
    record_audit(
        engine,
        actor,
        "fhir_token.created",
        token=token_id,
        name=name,
        programmes=list(scope),
        sites=list(site_names),
    )
    return token_id, token


def revoke_token(engine: Engine, name_or_id: str, actor: str = "admin") -> list[str]:
    """Revoke the active token with this id or client name; the ids revoked (none: no such)."""
    t = db.fhir_tokens
    with engine.begin() as conn:
        ids = [
            row.id
            for row in conn.execute(
                select(t.c.id).where(
                    (t.c.id == name_or_id) | (t.c.name == name_or_id), t.c.revoked_at.is_(None)
                )
            )
        ]
        if ids:
            conn.execute(update(t).where(t.c.id.in_(ids)).values(revoked_at=db.now()))
    for token_id in ids:
        record_audit(engine, actor, "fhir_token.revoked", token=token_id)
    return ids


def list_tokens(engine: Engine) -> list[dict[str, Any]]:
    """Every token, newest first, without its hash."""
    t = db.fhir_tokens
    with engine.connect() as conn:
        rows = conn.execute(select(t).order_by(t.c.created_at.desc(), t.c.id)).all()
    return [
        {
            "id": row.id,
            "name": row.name,
            "programmes": list(row.programmes or ()),
            "sites": list(row.sites or ()),
            "created_at": row.created_at,
            "created_by": row.created_by,
            "last_used_at": row.last_used_at,
            "revoked": row.revoked_at is not None,
            "revoked_at": row.revoked_at,
        }
        for row in rows
    ]


def access_for_token(engine: Engine, token: str) -> Access | None:
    """The scope of a live token, or None (unknown, malformed or revoked)."""
    if not token.startswith(PREFIX) or len(token) > 128:
        return None
    t = db.fhir_tokens
    with engine.connect() as conn:
        row = conn.execute(select(t).where(t.c.token_hash == _sha(token))).first()
    if row is None or row.revoked_at is not None:
        return None
    now = time.time()
    if row.last_used_at is None or now - row.last_used_at > TOUCH_EVERY_S:
        with engine.begin() as conn:
            conn.execute(update(t).where(t.c.id == row.id).values(last_used_at=now))
    return Access(f"token:{row.name}", tuple(row.programmes or ()), tuple(row.sites or ()))
