"""What a reader may see: the worklist (filters, order, paging) and a result's neighbours for
next/previous (one study in full: edge/hub/study.py).

Every query is scoped by the reader's programmes, joined through the device that sent the
result: a result outside them does not exist for that reader (404, never 403).

Order: urgent first (flagged at the clinic, then the model's probability at or over its
threshold), then the highest probability, then the newest. The order does not depend on whether
a result has been reviewed: a verdict marks its row and never moves it, so the reader's next
`j` lands where they expect (a list that re-sorted after every verdict sent a verdict to the
wrong patient). The list is also pinned to the results the hub held when it was loaded (`upto`,
the highest record id then, carried in every link): results that arrive while the reader works
wait for a reload instead of pushing rows down. The keys are plain expressions, so "next" and
"previous" are row-value comparisons on the same keys (SQLite and PostgreSQL alike), and the
order is total (the record id breaks every tie).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode
from weakref import WeakKeyDictionary

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    exists,
    func,
    literal,
    select,
    tuple_,
)

from edge.hub import db
from edge.hub.identities import User

PAGE_SIZE = 50
STATES = ("all", "unreviewed", "reviewed")
UNKNOWN = "unknown"  # the modality filter's value for results that carry none (PNG/JPEG inputs)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# The order's keys, ascending (the module's docstring says why): the expressions of the index the
# page is read along, so the two cannot drift apart.
ORDER = db.WORKLIST_ORDER

w, d, r = db.worklist, db.devices, db.reviews


# ------------------------------------------------------------------ what the pages receive


@dataclass(frozen=True)
class WorklistRow:
    """One result as the worklist (and a study's "other results") lists it: the projection's
    columns (`worklist_index`), its device, and its latest review."""

    record_id: int
    device_id: str
    result_uuid: str
    received_at: str
    urgent: bool
    modality: str | None
    body_part: str | None
    view: str | None
    age_years: float | None
    sex: str | None
    finding: str | None
    model: str | None
    model_version: str | None
    probability: float | None
    threshold: float | None
    patient: str | None  # the device's keyed pseudonym
    study_date: str | None
    scope: str | None  # the applicability word: "in scope", "borderline"; "" when none was sent
    device_name: str
    site: str
    verdict: str | None  # the latest review's; None while unreviewed
    reviewer: str | None  # the latest review's
    reviews: int  # how many reviews the result has
    # From the record's payload and uploads (`with_details`), for the worklist page only.
    analysed: str | None = None  # result.created: the device's time (date-shifted like dates)
    acquired: str | None = None  # image.acquired: from the DICOM header (date-shifted like dates)
    acquired_from: str | None = None  # "file": a PNG/JPEG's file time on the device, not a header's
    study_key: str | None = None  # the device's keyed study pseudonym ("S-...")
    thumbnail: bool = False  # a synced thumbnail is on the hub

    @classmethod
    def from_row(cls, row: Any) -> WorklistRow:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls) if hasattr(row, f.name)})

    @property
    def positive(self) -> bool:
        return (
            self.probability is not None and self.threshold is not None and self.probability >= self.threshold
        )

    @property
    def superseded(self) -> int:
        """Earlier verdicts on this result: only the latest counts."""
        return max(0, self.reviews - 1)


@dataclass(frozen=True)
class ReviewRow:
    """One specialist's review of a study."""

    seq: int
    id: str
    verdict: str
    finding: str | None
    note: str | None
    reviewer: str | None
    reviewer_role: str | None
    reviewed_at: str

    @classmethod
    def from_row(cls, row: Any) -> ReviewRow:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


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
    upto: int = 0  # the highest record id when the list was loaded; 0: not pinned yet
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
        try:
            upto = min(max(int(params.get("upto") or 0), 0), 2**62)  # a bigint, never an overflow
        except ValueError:
            upto = 0
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
            upto=upto,
            page=page,
        )

    def query(self, page: int | None = None) -> str:
        """The query string for these filters (defaults left out); `page=None` leaves it out."""
        values = {k: v for k, v in asdict(self).items() if k != "page" and v not in ("", False, "all", 0)}
        if values.get("urgent"):
            values["urgent"] = "1"
        if page is not None and page > 1:
            values["page"] = page
        return urlencode(values)

    @property
    def active(self) -> bool:
        return replace(self, page=1, upto=0) != Filters()


def _reviewed() -> ColumnElement[bool]:
    return exists().where(r.c.result_uuid == w.c.result_uuid, r.c.device_id == w.c.device_id)


def reader_scope(user: User) -> list[ColumnElement[bool]]:
    return [] if user.sees_all else [d.c.programme.in_(user.programmes)]


def _conditions(user: User, filters: Filters) -> list[ColumnElement[bool]]:
    conditions = reader_scope(user)
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
    if filters.upto:
        conditions.append(w.c.record_id <= filters.upto)
    return conditions


def _latest(column: Any) -> Any:
    return (
        select(column)
        .where(r.c.result_uuid == w.c.result_uuid, r.c.device_id == w.c.device_id)
        .order_by(r.c.seq.desc())
        .limit(1)
        .scalar_subquery()
    )


def reader_rows(user: User, filters: Filters) -> Select[Any]:
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
    rows: list[WorklistRow]
    total: int
    page: int
    pages: int
    filters: Filters
    newer: int = 0  # results that arrived after the list was pinned (shown on a reload)


def _newest(conn: Any, user: User) -> int:
    # Read backwards along the primary key, not max() over a join (a scan of every row).
    newest = conn.execute(
        select(w.c.record_id)
        .select_from(w.join(d, d.c.id == w.c.device_id))
        .where(*reader_scope(user))
        .order_by(w.c.record_id.desc())
        .limit(1)
    ).scalar()
    return int(newest or 0)


def worklist_page(engine: Engine, user: User, filters: Filters) -> Page:
    with engine.connect() as conn:
        newest = _newest(conn, user)
        if not filters.upto:
            filters = replace(filters, upto=newest)
        total = conn.execute(
            select(func.count())
            .select_from(w.join(d, d.c.id == w.c.device_id))
            .where(*_conditions(user, filters))
        ).scalar_one()
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(filters.page, pages)
        rows = conn.execute(
            reader_rows(user, filters).order_by(*ORDER).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
        ).all()
        listed = with_details(conn, [WorklistRow.from_row(row) for row in rows])
        newer = 0
        if newest > filters.upto:
            newer = conn.execute(
                select(func.count())
                .select_from(w.join(d, d.c.id == w.c.device_id))
                .where(*_conditions(user, replace(filters, upto=0)), w.c.record_id > filters.upto)
            ).scalar_one()
    return Page(listed, total, page, pages, replace(filters, page=page), int(newer))


def _text(value: Any) -> str | None:
    return str(value)[:64] if isinstance(value, (str, int, float)) and value != "" else None


def with_details(conn: Any, rows: list[WorklistRow]) -> list[WorklistRow]:
    """The rows with what only the payloads and uploads hold: the device's own time, the study
    key and whether a thumbnail was synced (one query each for the whole page)."""
    if not rows:
        return rows
    payloads = {
        row.id: row.payload if isinstance(row.payload, dict) else {}
        for row in conn.execute(
            select(db.records.c.id, db.records.c.payload).where(
                db.records.c.id.in_([row.record_id for row in rows])
            )
        )
    }
    u = db.uploads
    images: dict[tuple[str, str], str] = {}
    for row in rows:
        image = payloads.get(row.record_id, {}).get("image")
        if isinstance(image, dict) and image.get("uuid"):
            images[(row.device_id, str(image["uuid"]))] = row.result_uuid
    thumbnails = set()
    for upload in conn.execute(
        select(u.c.device_id, u.c.record_uuid, u.c.result_uuid).where(
            u.c.kind == "thumbnail",
            u.c.complete.is_(True),
            u.c.device_id.in_({row.device_id for row in rows}),
            u.c.result_uuid.in_([row.result_uuid for row in rows])
            | u.c.record_uuid.in_([uuid for _, uuid in images]),
        )
    ):
        thumbnails.add((upload.device_id, upload.result_uuid))
        if (upload.device_id, upload.record_uuid) in images:
            thumbnails.add((upload.device_id, images[(upload.device_id, upload.record_uuid)]))
    out = []
    for row in rows:
        payload = payloads.get(row.record_id, {})
        result, study, image = payload.get("result"), payload.get("study"), payload.get("image")
        out.append(
            replace(
                row,
                analysed=_text(result.get("created")) if isinstance(result, dict) else None,
                acquired=_text(image.get("acquired")) if isinstance(image, dict) else None,
                acquired_from=_text(image.get("acquired_from")) if isinstance(image, dict) else None,
                study_key=_text(study.get("study")) if isinstance(study, dict) else None,
                thumbnail=(row.device_id, row.result_uuid) in thumbnails,
            )
        )
    return out


@dataclass
class Options:
    sites: list[str]
    devices: list[dict[str, str]]
    modalities: list[str]
    findings: list[str]


@dataclass
class _Seen:
    """The modalities and findings among a scope's records up to `upto` (record id)."""

    upto: int = 0
    modalities: set[str | None] = field(default_factory=set)
    findings: set[str] = field(default_factory=set)


# Per database and reader scope (the programmes, or all), in this process. Each page load reads
# only the records that arrived since: a DISTINCT over the whole worklist on every load took
# 126 ms of the first page's 446 at 200,000 results. A value whose records were all deleted
# since stays offered until the hub restarts (the filter then finds nothing).
_seen: WeakKeyDictionary[Engine, dict[tuple[str, ...], _Seen]] = WeakKeyDictionary()
IN_FLIGHT_IDS = 1000
_seen_lock = threading.Lock()


def filter_options(engine: Engine, user: User) -> Options:
    """The values the filters offer: only what this reader can see."""
    scoped = w.join(d, d.c.id == w.c.device_id)
    conditions = reader_scope(user)
    key = ("*",) if user.sees_all else tuple(sorted(user.programmes))
    with engine.connect() as conn:
        devices = conn.execute(
            select(d.c.id, d.c.name, d.c.site).where(*conditions).order_by(d.c.site, d.c.name)
        ).all()
        newest = _newest(conn, user)
        with _seen_lock:
            scopes = _seen.setdefault(engine, {})
            if key not in scopes or scopes[key].upto > newest:  # new, or the database was emptied
                scopes[key] = _Seen()
            seen = scopes[key]
            since = seen.upto
        if newest > since:
            arrived = conn.execute(
                select(w.c.modality, w.c.finding)
                .select_from(scoped)
                # Some ids back too: on PostgreSQL a record may commit after one with a higher id.
                .where(*conditions, w.c.record_id > since - IN_FLIGHT_IDS, w.c.record_id <= newest)
                .distinct()
            ).all()
            with _seen_lock:
                if seen.upto == since:  # another request did not get there first
                    seen.modalities.update(row.modality for row in arrived)
                    seen.findings.update(row.finding for row in arrived if row.finding is not None)
                    seen.upto = newest
        with _seen_lock:
            modalities, findings = set(seen.modalities), set(seen.findings)
    return Options(
        sites=sorted({row.site for row in devices if row.site}),
        devices=[{"id": row.id, "name": row.name, "site": row.site} for row in devices],
        modalities=sorted(modality or UNKNOWN for modality in modalities),
        findings=sorted(findings),
    )


def _position(conn: Any, record_id: int) -> Any:
    """This record's order keys as literals, for the row-value comparisons."""
    current = conn.execute(select(*ORDER).where(w.c.record_id == record_id)).first()
    if current is None:
        return None
    return tuple_(*(literal(value) for value in current))


def neighbours(engine: Engine, user: User, filters: Filters, record_id: int) -> tuple[str | None, str | None]:
    """(previous, next) result uuids around this record in the filtered worklist order."""
    with engine.connect() as conn:
        here = _position(conn, record_id)
        if here is None:
            return None, None
        base = reader_rows(user, filters)
        before = conn.execute(
            base.where(tuple_(*ORDER) < here).order_by(*(key.desc() for key in ORDER)).limit(1)
        ).first()
        after = conn.execute(base.where(tuple_(*ORDER) > here).order_by(*ORDER).limit(1)).first()
    return (before.result_uuid if before else None, after.result_uuid if after else None)


def next_unreviewed(engine: Engine, user: User, filters: Filters, record_id: int) -> str | None:
    """Where a reader goes after a verdict: the first unreviewed result after this one in their
    filtered list (the order never changes, so this is the row below), else the first
    unreviewed one above it; None when none is left."""
    unreviewed = reader_rows(user, replace(filters, state="unreviewed", page=1)).where(
        w.c.record_id != record_id
    )
    with engine.connect() as conn:
        here = _position(conn, record_id)
        row = None
        if here is not None:
            row = conn.execute(unreviewed.where(tuple_(*ORDER) > here).order_by(*ORDER).limit(1)).first()
        if row is None:
            row = conn.execute(unreviewed.order_by(*ORDER).limit(1)).first()
    return row.result_uuid if row else None


def programmes(engine: Engine) -> list[str]:
    """Every programme the hub knows of (devices and enrolment codes)."""
    with engine.connect() as conn:
        names = {row[0] for row in conn.execute(select(d.c.programme).distinct())}
        names |= {row[0] for row in conn.execute(select(db.enroll_codes.c.programme).distinct())}
    return sorted(names | {"default"})
