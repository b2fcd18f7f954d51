"""The FHIR endpoint's queries: search parameters parsed and checked, results found within an
`Access` scope, pages that stay put. No HTTP, no FHIR models (`fhir` builds those).

- Scope: every query joins the sending device and keeps only the access's programmes (and
  sites); a result outside them does not exist for that client (an empty search, a 404 read).
- Dates: `date` is when the hub received the result (the report's `effectiveDateTime` and
  `issued`): device-side dates may be shifted by the device's de-identification policy, the
  hub's own clock is not. Precision as in FHIR: `2026-03` is the whole month (UTC).
- Paging: results in the order the hub stored them (the record id); `page` is the last id of
  the previous page (keyset, opaque to the client), so results arriving meanwhile land at the
  end and never shift a page; `_count` is capped at `MAX_COUNT`.
- Unknown parameters and modifiers are refused (400), not ignored: a client whose filter is
  mistyped must not silently receive, and count, every result.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, case, exists, false, func, or_, select

from edge.hub import db, fhir_codes
from edge.hub.fhir_tokens import Access
from edge.hub.worklist import ReviewRow
from edge.interop.finding_codes import labels_for_snomed

DEFAULT_COUNT = 20
MAX_COUNT = 100
MAX_REPEATS = 4  # occurrences of one search parameter (FHIR's AND)
MAX_VALUES = 32  # values of all occurrences of all parameters together (FHIR's OR, and AND)
"""Each value of a search is a condition on every report the reader may see (status and
conclusion each a subquery per row): one GET repeating `status` 400 times (15 KB of URL) took a
SQLite hub 44 s, during which every other request, devices' batches and logins too, waited
and failed. Searches beyond these are refused (400), as nothing a reader asks needs them."""
MAX_PAGE = 2**31 - 1  # a page past this is no page (the position is an INTEGER column)
MAX_REVIEWS = 20  # per report, the newest
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
STATUSES = ("preliminary", "final", "amended")
INCLUDES = {
    "*",
    "DiagnosticReport:result",
    "DiagnosticReport:subject",
    "DiagnosticReport:patient",
    "DiagnosticReport:performer",
    "Observation:device",
}
SEARCH_PARAMS = ("_id", "date", "performer", "site", "conclusion", "patient", "subject", "status")
CONTROL_PARAMS = ("_count", "page", "_include", "_format")
_DATE = re.compile(
    r"^(?P<prefix>eq|ne|gt|lt|ge|le|sa|eb)?"
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d{1,9})?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)

w, d, r, rec = db.worklist, db.devices, db.reviews, db.records


class FhirError(Exception):
    """A refusal: HTTP status, FHIR issue type (invalid, not-found, login, ...), a sentence."""

    def __init__(self, status: int, issue: str, message: str) -> None:
        super().__init__(message)
        self.status, self.issue, self.message = status, issue, message


def organization_id(programme: str, site: str) -> str:
    """A site's Organization id: stable, and the same site name in two programmes is two sites."""
    return "site-" + hashlib.sha256(f"{programme}\n{site}".encode()).hexdigest()[:20]


# ------------------------------------------------------------------ parameters


def _bounds(value: str) -> tuple[str, str, str]:
    """'ge2026-03' -> ('ge', start, end): the value's range [start, end) in the hub's format."""
    match = _DATE.match(value)
    if match is None:
        raise FhirError(400, "invalid", f"not a FHIR date: {value!r} (e.g. ge2026-03-01 or 2026-03)")
    g = match.groupdict()
    try:
        year, month, day = int(g["year"]), int(g["month"] or 1), int(g["day"] or 1)
        hour, minute, second = int(g["hour"] or 0), int(g["minute"] or 0), int(g["second"] or 0)
        start = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError:
        raise FhirError(400, "invalid", f"not a calendar date: {value!r}") from None
    try:  # at the calendar's ends (year 9999, a zone across year 1) there is no later moment
        start, end = _interval(start, g)
    except (OverflowError, ValueError):
        raise FhirError(400, "invalid", f"a date outside the calendar: {value!r}") from None

    def text(moment: datetime) -> str:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    return g["prefix"] or "eq", text(start), text(end)


def _interval(start: datetime, g: dict[str, str | None]) -> tuple[datetime, datetime]:
    """The moment a date names, in UTC, and the end of its precision."""
    zone = g["zone"]
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        start -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))  # local time, in UTC
    if g["fraction"]:
        start += timedelta(milliseconds=int(g["fraction"][1:4].ljust(3, "0")))
        return start, start + timedelta(milliseconds=1)
    if g["second"]:
        return start, start + timedelta(seconds=1)
    if g["minute"]:
        return start, start + timedelta(minutes=1)
    if g["day"]:
        return start, start + timedelta(days=1)
    if g["month"]:
        month = int(g["month"])
        return start, datetime(start.year + month // 12, month % 12 + 1, 1, tzinfo=timezone.utc)
    return start, datetime(start.year + 1, 1, 1, tzinfo=timezone.utc)


def _reference(value: str, kind: str) -> str:
    """'Patient/P-1' or 'P-1' (or a full URL ending so) -> 'P-1'."""
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] != kind:
        raise FhirError(400, "invalid", f"expected a reference to a {kind}, got {value!r}")
    return parts[-1]


def _token(value: str) -> tuple[str | None, str]:
    """'system|code', '|code' (no system) or 'code' (any system)."""
    if "|" not in value:
        return None, value
    system, code = value.split("|", 1)
    return system, code


@dataclass(frozen=True)
class Search:
    """One DiagnosticReport search. Each tuple holds one occurrence of a parameter (its values
    separated by commas: any of them); occurrences all apply (FHIR's AND of repeats)."""

    ids: tuple[tuple[str, ...], ...] = ()
    dates: tuple[tuple[str, str, str], ...] = ()
    sites: tuple[tuple[str, ...], ...] = ()
    organizations: tuple[tuple[str, ...], ...] = ()
    conclusions: tuple[tuple[tuple[str | None, str], ...], ...] = ()
    patients: tuple[tuple[str, ...], ...] = ()
    statuses: tuple[tuple[str, ...], ...] = ()
    count: int = DEFAULT_COUNT
    after: int = 0
    echo: tuple[tuple[str, str], ...] = field(default=())  # the parameters, for the page links

    @classmethod
    def parse(cls, params: Sequence[tuple[str, str]]) -> Search:
        found: dict[str, list[Any]] = {}
        count, after, echo, terms = DEFAULT_COUNT, 0, [], 0
        for key, value in params:
            name = key.split(":", 1)[0]
            if name not in SEARCH_PARAMS + CONTROL_PARAMS:
                raise FhirError(400, "not-supported", f"unknown search parameter {key!r}")
            if ":" in key and name != "_include":
                raise FhirError(400, "not-supported", f"search modifiers are not supported: {key!r}")
            if name == "_count":
                count = min(_integer(key, value, 0), MAX_COUNT)
            elif name == "page":
                after = min(_integer(key, value, 0), MAX_PAGE)
            elif name != "_format":  # the route checks _format (406 for anything but JSON)
                values = [item.strip() for item in value.split(",")]
                if not all(values):
                    raise FhirError(400, "invalid", f"an empty value in {key}={value!r}")
                if name != "_include":
                    occurrences = found.setdefault(_SAME.get(name, name), [])
                    parsed = _PARSERS[name](values)
                    if parsed not in occurrences:  # the same condition twice is the condition once
                        occurrences.append(parsed)
                        terms += len(values)
                    if len(occurrences) > MAX_REPEATS or terms > MAX_VALUES:
                        raise FhirError(
                            400,
                            "too-costly",
                            f"a search holds at most {MAX_REPEATS} occurrences of a parameter and"
                            f" {MAX_VALUES} values in all: narrow it",
                        )
                elif any(item not in INCLUDES for item in values):
                    raise FhirError(400, "not-supported", f"_include={value!r} is not supported")
            if name != "page":
                echo.append((key, value))
        return cls(
            ids=tuple(found.get("_id", ())),
            dates=tuple(found.get("date", ())),
            sites=tuple(found.get("site", ())),
            organizations=tuple(found.get("performer", ())),
            conclusions=tuple(found.get("conclusion", ())),
            patients=tuple(found.get("patient", ())),
            statuses=tuple(found.get("status", ())),
            count=count,
            after=after,
            echo=tuple(echo),
        )


def _one_date(values: list[str]) -> tuple[str, str, str]:
    if len(values) > 1:
        raise FhirError(400, "invalid", "give one date per `date` parameter (repeat it for a range)")
    return _bounds(values[0])


def _statuses(values: list[str]) -> tuple[str, ...]:
    bad = [value for value in values if value not in STATUSES]
    if bad:
        raise FhirError(400, "invalid", f"status is one of {', '.join(STATUSES)}, not {bad[0]!r}")
    return tuple(values)


_SAME = {"subject": "patient"}  # two names of one parameter
_PARSERS: dict[str, Any] = {
    "_id": tuple,
    "site": tuple,
    "date": _one_date,
    "patient": lambda values: tuple(_reference(v, "Patient") for v in values),
    "subject": lambda values: tuple(_reference(v, "Patient") for v in values),
    "performer": lambda values: tuple(_reference(v, "Organization") for v in values),
    "conclusion": lambda values: tuple(_token(v) for v in values),
    "status": _statuses,
}


def _integer(key: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise FhirError(400, "invalid", f"{key} is a whole number, not {value!r}") from None
    if number < minimum:
        raise FhirError(400, "invalid", f"{key} is at least {minimum}")
    return number


# ------------------------------------------------------------------ conditions


def scope_conditions(access: Access) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if not access.all_programmes:
        conditions.append(d.c.programme.in_(access.programmes))
    if access.sites:
        conditions.append(d.c.site.in_(access.sites))
    return conditions


def _reviews_of_row() -> Any:
    return select(func.count()).where(r.c.result_uuid == w.c.result_uuid, r.c.device_id == w.c.device_id)


def concluded_finding() -> Any:
    """The report's conclusion: the latest review's finding once reviewed, else the model's."""
    latest = (
        select(r.c.finding)
        .where(r.c.result_uuid == w.c.result_uuid, r.c.device_id == w.c.device_id)
        .order_by(r.c.seq.desc())
        .limit(1)
        .scalar_subquery()
    )
    reviewed = exists().where(r.c.result_uuid == w.c.result_uuid, r.c.device_id == w.c.device_id)
    return case((reviewed, latest), else_=w.c.finding)


def _date_condition(op: str, start: str, end: str) -> ColumnElement[bool]:
    at = w.c.received_at
    return {
        "eq": and_(at >= start, at < end),
        "ne": or_(at < start, at >= end),
        "gt": at >= end,
        "sa": at >= end,
        "ge": at >= start,
        "lt": at < start,
        "eb": at < start,
        "le": at < end,
    }[op]


def _conclusion_condition(tokens: Iterable[tuple[str | None, str]]) -> ColumnElement[bool]:
    finding = concluded_finding()
    options: list[ColumnElement[bool]] = []
    for system, code in tokens:
        if system == fhir_codes.SNOMED:
            for model, label in labels_for_snomed(code):
                options.append(
                    finding == label if model is None else and_(w.c.model == model, finding == label)
                )
        elif system in (None, "", fhir_codes.FINDING):
            options.append(finding == code)
    return or_(false(), *options)


def _status_condition(statuses: Iterable[str]) -> ColumnElement[bool]:
    reviews = _reviews_of_row().scalar_subquery()
    by_status = {"preliminary": reviews == 0, "final": reviews == 1, "amended": reviews > 1}
    return or_(false(), *(by_status[status] for status in statuses))


def _organization_condition(engine: Engine, access: Access, ids: Iterable[str]) -> ColumnElement[bool]:
    wanted = set(ids)
    with engine.connect() as conn:
        sites = conn.execute(
            select(d.c.programme, d.c.site).where(*scope_conditions(access)).distinct()
        ).all()
    pairs = [(row.programme, row.site) for row in sites if organization_id(row.programme, row.site) in wanted]
    return or_(false(), *(and_(d.c.programme == p, d.c.site == s) for p, s in pairs))


def search_conditions(engine: Engine, access: Access, search: Search) -> list[ColumnElement[bool]]:
    conditions = scope_conditions(access)
    conditions += [w.c.result_uuid.in_(ids) for ids in search.ids]
    conditions += [_date_condition(*bounds) for bounds in search.dates]
    conditions += [d.c.site.in_(sites) for sites in search.sites]
    conditions += [_organization_condition(engine, access, ids) for ids in search.organizations]
    conditions += [_conclusion_condition(tokens) for tokens in search.conclusions]
    conditions += [w.c.patient.in_(patients) for patients in search.patients]
    conditions += [_status_condition(statuses) for statuses in search.statuses]
    return conditions


# ------------------------------------------------------------------ what a report is built from


@dataclass(frozen=True)
class ReportSource:
    """One stored result with what its FHIR resources need (nothing else is read)."""

    record_id: int
    uuid: str
    programme: str
    site: str
    received_at: str
    payload: dict[str, Any]
    reviews: tuple[ReviewRow, ...] = ()  # oldest first

    def part(self, name: str) -> dict[str, Any]:
        value = self.payload.get(name)
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Found:
    sources: list[ReportSource]
    total: int
    next_after: int | None  # the `page` of the next page, None on the last one


def _sources(conn: Any, rows: Sequence[Any]) -> list[ReportSource]:
    by_key: dict[tuple[str, str], list[ReviewRow]] = {}
    if rows:
        for review in conn.execute(
            select(r).where(r.c.result_uuid.in_(sorted({row.uuid for row in rows}))).order_by(r.c.seq)
        ):
            by_key.setdefault((review.device_id, review.result_uuid), []).append(ReviewRow.from_row(review))
    return [
        ReportSource(
            row.id,
            row.uuid,
            row.programme,
            row.site,
            row.received_at,
            row.payload if isinstance(row.payload, dict) else {},
            tuple(by_key.get((row.device_id, row.uuid), [])[-MAX_REVIEWS:]),
        )
        for row in rows
    ]


def _report_rows() -> Any:
    return select(
        rec.c.id, rec.c.uuid, rec.c.device_id, rec.c.payload, rec.c.received_at, d.c.programme, d.c.site
    ).select_from(w.join(rec, rec.c.id == w.c.record_id).join(d, d.c.id == w.c.device_id))


def search_reports(engine: Engine, access: Access, search: Search) -> Found:
    conditions = search_conditions(engine, access, search)
    with engine.connect() as conn:
        total = conn.execute(
            select(func.count()).select_from(w.join(d, d.c.id == w.c.device_id)).where(*conditions)
        ).scalar_one()
        if search.count == 0:
            return Found([], total, None)
        rows = conn.execute(
            _report_rows()
            .where(*conditions, w.c.record_id > search.after)
            .order_by(w.c.record_id)
            .limit(search.count + 1)
        ).all()
        more = len(rows) > search.count
        rows = rows[: search.count]
        return Found(_sources(conn, rows), total, rows[-1].id if more else None)


def find_report(engine: Engine, access: Access, uuid: str) -> ReportSource | None:
    with engine.connect() as conn:
        rows = conn.execute(
            _report_rows()
            .where(w.c.result_uuid == uuid, *scope_conditions(access))
            .order_by(w.c.record_id)
            .limit(1)
        ).all()
        found = _sources(conn, rows)
    return found[0] if found else None


def report_of_review(engine: Engine, access: Access, review_id: str) -> ReportSource | None:
    """The report a review Observation belongs to (within the scope)."""
    with engine.connect() as conn:
        row = conn.execute(select(r.c.result_uuid, r.c.device_id).where(r.c.id == review_id)).first()
    if row is None:
        return None
    with engine.connect() as conn:
        rows = conn.execute(
            _report_rows()
            .where(
                w.c.result_uuid == row.result_uuid, w.c.device_id == row.device_id, *scope_conditions(access)
            )
            .limit(1)
        ).all()
        found = _sources(conn, rows)
    return found[0] if found else None


def report_with(
    engine: Engine, access: Access, *, patient: str = "", model_sha256: str = ""
) -> ReportSource | None:
    """The newest report in scope about this patient pseudonym or made by this model (the
    Patient and Device reads are answered from it)."""
    if patient:
        condition = w.c.patient == patient
    elif model_sha256:
        condition = rec.c.payload["result"]["model_sha256"].as_string() == model_sha256
    else:
        return None
    with engine.connect() as conn:
        rows = conn.execute(
            _report_rows().where(condition, *scope_conditions(access)).order_by(w.c.record_id.desc()).limit(1)
        ).all()
        found = _sources(conn, rows)
    return found[0] if found else None


def site_of(engine: Engine, access: Access, organization: str) -> tuple[str, str] | None:
    """(programme, site) of an Organization id within the scope (devices are few: compared here)."""
    with engine.connect() as conn:
        rows = conn.execute(select(d.c.programme, d.c.site).where(*scope_conditions(access)).distinct()).all()
    for row in rows:
        if organization_id(row.programme, row.site) == organization:
            return row.programme, row.site
    return None
