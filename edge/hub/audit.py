"""The hub's audit trail: one row per thing done (enrolments, reviews, logins, account changes,
releases), with who did it and a JSON detail (never a password or a secret)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, insert

from edge.hub import db


def record_audit(
    engine: Engine, actor: str, action: str, device_id: str | None = None, **detail: Any
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(db.audit).values(
                at=db.now(), actor=actor, action=action, device_id=device_id, detail=detail
            )
        )
