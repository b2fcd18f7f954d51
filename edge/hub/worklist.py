"""What a reader may see: the worklist (filters, order, paging), one study in full, and its
neighbours for next/previous.

Every query is scoped by the reader's programmes, joined through the device that sent the
result: a result outside them does not exist for that reader (404, never 403).

Order: unreviewed before reviewed; within each, urgent first; unreviewed results oldest first
(the clinic that has waited longest), reviewed ones newest first. The three keys are plain
integer expressions, so "next" and "previous" are row-value comparisons on the same keys
(SQLite and PostgreSQL alike), and the order is total (the record id breaks every tie).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    case,
    exists,
    func,
    insert,
    literal,
    select,
    tuple_,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from edge.hub import db
from edge.hub.identities import User

PAGE_SIZE = 50
STATES = ("all", "unreviewed", "reviewed")
UNKNOWN = "unknown"  # the modality filter's value for results that carry none (PNG/JPEG inputs)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

w, d, r = db.worklist, db.devices, db.reviews


# ------------------------------------------------------------------ the projection


def _text(value: Any, limit: int) -> str | None:
    return None if value is None or value == "" or isinstance(value, (dict, list)) else str(value)[:limit]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def index_values(record_id: int, device_id: str, uuid: str, payload: Any, received_at: str) -> dict[str, Any]:
    """The worklist row for one stored record (a payload from a device is read defensively)."""
    payload = payload if isinstance(payload, dict) else {}
    result = payload.get("result") if isinstance(payload.get("result"), dict) else {}
    study = payload.get("study") if isinstance(payload.get("study"), dict) else {}
    return {
        "record_id": record_id,
        "device_id": device_id,
        "result_uuid": uuid,
        "received_at": received_at,
        "urgent": study.get("urgent") is True,
        "modality": _text(study.get("modality"), 16),
        "body_part": _text(study.get("body_part"), 32),
        "view": _text(study.get("view"), 16),
        "age_years": _number(study.get("age_years")),
        "sex": study.get("sex") if study.get("sex") in ("M", "F", "O") else None,
        "finding": _text(result.get("finding"), 64),
        "model": _text(result.get("model"), 64),
        "model_version": _text(result.get("version"), 32),
        "probability": _number(result.get("probability")),
        "threshold": _number(result.get("threshold")),
        "patient": _text(study.get("patient"), 40),
        "study_date": _text(study.get("study_date"), 32),
    }


def index_record(
    conn: Connection, record_id: int, device_id: str, uuid: str, payload: Any, received: str
) -> None:
    """Called in the transaction that stores the record."""
    conn.execute(insert(w).values(**index_values(record_id, device_id, uuid, payload, received)))


def backfill(engine: Engine, batch: int = 500) -> int:
    """Index records stored before the worklist existed (run when the hub starts)."""
    added, collisions = 0, 0
    while True:
        try:
            rows = _backfill_batch(engine, batch)
        except IntegrityError:  # another hub process indexed the same records first: look again
            collisions += 1
            if collisions > 5:
                raise
            continue
        added += len(rows)
        if len(rows) < batch:
            return added


def _backfill_batch(engine: Engine, batch: int) -> list[Any]:
    with engine.begin() as conn:
        rows = conn.execute(
            select(
                db.records.c.id,
                db.records.c.device_id,
                db.records.c.uuid,
                db.records.c.payload,
                db.records.c.received_at,
            )
            .outerjoin(w, w.c.record_id == db.records.c.id)
            .where(w.c.record_id.is_(None))
            .order_by(db.records.c.id)
            .limit(batch)
        ).all()
        for row in rows:
            index_record(conn, row.id, row.device_id, row.uuid, row.payload, row.received_at)
    return list(rows)


# ------------------------------------------------------------------ filters


@dataclass(frozen=True)
class Filters:
    site: str = ""
    device: str = ""
    modality: str = ""
    finding: str = ""
    state: str = "all"
    urgent: bool = False
    since: str = ""  # YYYY-MM-DD, on the day the hub received the result (UTC)
    until: str = ""
    page: int = 1

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> Filters:
        """From a query string; anything malformed falls back to its default, never an error."""

        def text(key: str) -> str:
            return str(params.get(key) or "").strip()[:64]

        def day(key: str) -> str:
            value = text(key)
            try:
                return value if _DATE.match(value) and date.fromisoformat(value) else ""
            except ValueError:
                return ""

        try:
            page = min(max(int(params.get("page") or 1), 1), 100_000)
        except ValueError:
            page = 1
        state = text("state")
        return cls(
            site=text("site"),
            device=text("device"),
            modality=text("modality"),
            finding=text("finding"),
            state=state if state in STATES else "all",
            urgent=text("urgent") in ("1", "on", "true"),
            since=day("since"),
            until=day("until"),
            page=page,
        )

    def query(self, page: int | None = None) -> str:
        """The query string for these filters (defaults left out); `page=None` leaves it out."""
        values = {k: v for k, v in asdict(self).items() if k != "page" and v not in ("", False, "all")}
        if values.get("urgent"):
            values["urgent"] = "1"
        if page is not None and page > 1:
            values["page"] = page
        return urlencode(values)

    @property
    def active(self) -> bool:
        return replace(self, page=1) != Filters()


def _reviewed() -> ColumnElement[bool]:
    return exists().where(r.c.result_uuid == w.c.result_uuid, r.c.device_id == w.c.device_id)


def _order_keys() -> tuple[ColumnElement[int], ColumnElement[int], ColumnElement[int]]:
    reviewed = _reviewed()
    return (
        case((reviewed, 1), else_=0),
        case((w.c.urgent.is_(True), 0), else_=1),
        case((reviewed, -w.c.record_id), else_=w.c.record_id),
    )


def _scope(user: User) -> list[ColumnElement[bool]]:
    return [] if user.sees_all else [d.c.programme.in_(user.programmes)]


def _conditions(user: User, filters: Filters) -> list[ColumnElement[bool]]:
    conditions = _scope(user)
    if filters.site:
        conditions.append(d.c.site == filters.site)
    if filters.device:
        conditions.append(w.c.device_id == filters.device)
    if filters.modality == UNKNOWN:
        conditions.append(w.c.modality.is_(None))
    elif filters.modality:
        conditions.append(w.c.modality == filters.modality)
    if filters.finding:
        conditions.append(w.c.finding == filters.finding)
    if filters.state == "unreviewed":
        conditions.append(~_reviewed())
    elif filters.state == "reviewed":
        conditions.append(_reviewed())
    if filters.urgent:
        conditions.append(w.c.urgent.is_(True))
    if filters.since:
        conditions.append(w.c.received_at >= filters.since)
    if filters.until:
        after = (date.fromisoformat(filters.until) + timedelta(days=1)).isoformat()
        conditions.append(w.c.received_at < after)
    return conditions


def _latest(column: Any) -> Any:
    return (
        select(column)
        .where(r.c.result_uuid == w.c.result_uuid, r.c.device_id == w.c.device_id)
        .order_by(r.c.seq.desc())
        .limit(1)
        .scalar_subquery()
    )


def _rows(user: User, filters: Filters) -> Select[Any]:
    reviews = (
        select(func.count())
        .where(r.c.result_uuid == w.c.result_uuid, r.c.device_id == w.c.device_id)
        .scalar_subquery()
    )
    return (
        select(
            w,
            d.c.name.label("device_name"),
            d.c.site,
            _latest(r.c.verdict).label("verdict"),
            _latest(r.c.reviewer).label("reviewer"),
            reviews.label("reviews"),
        )
        .select_from(w.join(d, d.c.id == w.c.device_id))
        .where(*_conditions(user, filters))
    )


# ------------------------------------------------------------------ the worklist


@dataclass
class Page:
    rows: list[dict[str, Any]]
    total: int
    page: int
    pages: int
    filters: Filters


def worklist_page(engine: Engine, user: User, filters: Filters) -> Page:
    with engine.connect() as conn:
        total = conn.execute(
            select(func.count())
            .select_from(w.join(d, d.c.id == w.c.device_id))
            .where(*_conditions(user, filters))
        ).scalar_one()
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(filters.page, pages)
        rows = conn.execute(
            _rows(user, filters).order_by(*_order_keys()).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
        ).all()
    return Page([dict(row._mapping) for row in rows], total, page, pages, replace(filters, page=page))


@dataclass
class Options:
    sites: list[str]
    devices: list[dict[str, str]]
    modalities: list[str]
    findings: list[str]


def filter_options(engine: Engine, user: User) -> Options:
    """The values the filters offer: only what this reader can see."""
    scoped = w.join(d, d.c.id == w.c.device_id)
    conditions = _scope(user)
    with engine.connect() as conn:
        devices = conn.execute(
            select(d.c.id, d.c.name, d.c.site).where(*conditions).order_by(d.c.site, d.c.name)
        ).all()
        modalities = conn.execute(
            select(w.c.modality).select_from(scoped).where(*conditions).distinct().order_by(w.c.modality)
        ).all()
        findings = conn.execute(
            select(w.c.finding)
            .select_from(scoped)
            .where(*conditions, w.c.finding.is_not(None))
            .distinct()
            .order_by(w.c.finding)
        ).all()
    return Options(
        sites=sorted({row.site for row in devices if row.site}),
        devices=[{"id": row.id, "name": row.name, "site": row.site} for row in devices],
        modalities=[row.modality or UNKNOWN for row in modalities],
        findings=[row.finding for row in findings],
    )


# ------------------------------------------------------------------ one study


@dataclass
class Study:
    record_id: int
    uuid: str
    device_id: str
    device_name: str
    site: str
    programme: str
    received_at: str
    payload: dict[str, Any]
    reviews: list[dict[str, Any]] = field(default_factory=list)
    uploads: dict[str, Any] = field(default_factory=dict)
    others: list[dict[str, Any]] = field(default_factory=list)

    def part(self, name: str) -> dict[str, Any]:
        value = self.payload.get(name)
        return value if isinstance(value, dict) else {}


def find_study(engine: Engine, user: User, uuid: str) -> Study | None:
    """The result with its device, uploads, reviews and this patient's other results; None when
    it does not exist or lies outside the reader's programmes."""
    with engine.connect() as conn:
        row = conn.execute(
            select(db.records, d.c.name.label("device_name"), d.c.site, d.c.programme)
            .join(d, d.c.id == db.records.c.device_id)
            .where(db.records.c.uuid == uuid, *_scope(user))
            .order_by(db.records.c.id)
            .limit(1)
        ).first()
        if row is None:
            return None
        study = Study(
            row.id,
            row.uuid,
            row.device_id,
            row.device_name,
            row.site,
            row.programme,
            row.received_at,
            row.payload if isinstance(row.payload, dict) else {},
        )
        study.reviews = [
            dict(review._mapping)
            for review in conn.execute(
                select(r)
                .where(r.c.result_uuid == uuid, r.c.device_id == row.device_id)
                .order_by(r.c.seq.desc())
            )
        ]
        image_uuid = str(study.part("image").get("uuid") or "")
        for upload in conn.execute(
            select(db.uploads).where(
                db.uploads.c.device_id == row.device_id,
                db.uploads.c.complete.is_(True),
                (db.uploads.c.result_uuid == uuid) | (db.uploads.c.record_uuid == image_uuid),
            )
        ):
            study.uploads.setdefault(upload.kind, upload)
        patient = study.part("study").get("patient")
        if patient:
            study.others = [
                dict(other._mapping)
                for other in conn.execute(
                    _rows(user, Filters())
                    .where(
                        w.c.patient == str(patient),
                        w.c.device_id == row.device_id,
                        w.c.record_id != row.id,
                    )
                    .order_by(w.c.record_id.desc())
                    .limit(20)
                )
            ]
    return study


def neighbours(engine: Engine, user: User, filters: Filters, record_id: int) -> tuple[str | None, str | None]:
    """(previous, next) result uuids around this record in the filtered worklist order."""
    keys = _order_keys()
    with engine.connect() as conn:
        current = conn.execute(select(*keys).where(w.c.record_id == record_id)).first()
        if current is None:
            return None, None
        here = tuple_(*(literal(int(value)) for value in current))
        base = _rows(user, filters)
        before = conn.execute(
            base.where(tuple_(*keys) < here).order_by(*(key.desc() for key in keys)).limit(1)
        ).first()
        after = conn.execute(base.where(tuple_(*keys) > here).order_by(*keys).limit(1)).first()
    return (before.result_uuid if before else None, after.result_uuid if after else None)


def next_unreviewed(engine: Engine, user: User, filters: Filters, exclude: int) -> str | None:
    """Where a reader goes after a verdict: the first unreviewed result in their filtered list."""
    with engine.connect() as conn:
        row = conn.execute(
            _rows(user, replace(filters, state="unreviewed", page=1))
            .where(w.c.record_id != exclude)
            .order_by(*_order_keys())
            .limit(1)
        ).first()
    return row.result_uuid if row else None


def programmes(engine: Engine) -> list[str]:
    """Every programme the hub knows of (devices and enrolment codes)."""
    with engine.connect() as conn:
        names = {row[0] for row in conn.execute(select(d.c.programme).distinct())}
        names |= {row[0] for row in conn.execute(select(db.enroll_codes.c.programme).distinct())}
    return sorted(names | {"default"})
