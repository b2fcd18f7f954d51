"""The one time format of the device and the hub (below every other module: anything may use it),
and what a plausible time is.

A box without a battery-backed clock comes up after a power cut in 1970 (or at an old
fake-hwclock time, or in the future) until NTP steps it, years at once. What is stamped in
between is stamped wrong, and whatever compares stamps (retention, backfill windows, leases,
"the newest record") must not take those stamps for ages (an outside-style check: an image
taken at 1970 was deleted by retention minutes after the clock was put right).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

PLAUSIBLE_FROM = "2024-01-01T00:00:00.000Z"
"""No stamp of this product is older: an earlier one was made by a clock that was not set."""
PLAUSIBLE_YEARS = (2024, 2100)
"""A clock reading outside these years is not the time (`edge doctor` fails it)."""
AHEAD_S = 86400.0
"""A stamp more than this ahead of the clock was made by a clock that was ahead."""


def utc_now() -> str:
    """UTC time as ISO-8601 with milliseconds and `Z`, the one time format of the store."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_after(seconds: float) -> str:
    """`utc_now()` moved `seconds` ahead (a lease's end), in the same comparable format."""
    moment = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clock_plausible() -> bool:
    """Whether the clock reads a year this product can run in (not 1970 after a power cut)."""
    return PLAUSIBLE_YEARS[0] <= datetime.now(timezone.utc).year <= PLAUSIBLE_YEARS[1]


def plausible_stamps() -> tuple[str, str]:
    """The earliest and the latest stamp a clock that was right could have made by now, in the
    store's format: a stamp outside them was made while the clock was wrong."""
    return PLAUSIBLE_FROM, utc_after(AHEAD_S)


AGE_UNKNOWN = "9999-12-31T00:00:00.000Z"
"""An image's retention age while the clock that stamped it may have read behind (the hub
measured it off, or it read earlier than a time the hub had confirmed): restarted once the
clock is confirmed."""
BEHIND_S = 300.0
"""A clock reading this much earlier than a time the hub confirmed is behind."""


def confirmed_at(state: Mapping[str, Any]) -> str | None:
    """The latest time the hub took the device's signed clock without a correction
    (`clock_confirmed`: a reply of the hub's to a request signed with an offset under its skew
    window), from the sync state; None if never. A round's `last_success` does not count: a
    clock months ahead, corrected by the offset, stamped it months ahead."""
    confirmed = state.get("clock_confirmed")
    return str(confirmed) if confirmed else None


def since_confirmed(state: Mapping[str, Any]) -> float | None:
    """Seconds from `confirmed_at` to the clock's now (negative: the clock reads earlier than
    the hub confirmed it); None if never confirmed."""
    confirmed = confirmed_at(state)
    try:
        moment = datetime.fromisoformat(str(confirmed).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (datetime.now(timezone.utc) - moment).total_seconds()


def clock_doubtful(state: Mapping[str, Any], skew_s: float = BEHIND_S) -> bool:
    """Whether the clock may read behind now: the hub measured it more than `skew_s` off
    (`clock_offset_s`, kept by the sync client), or it reads more than `BEHIND_S` earlier than
    the hub last confirmed it."""
    offset = state.get("clock_offset_s")
    if isinstance(offset, (int, float)) and abs(offset) > skew_s:
        return True
    since = since_confirmed(state)
    return since is not None and since < -BEHIND_S


def still_failing(state: Mapping[str, Any], success_key: str) -> bool:
    """Whether a loop's last round (the sync's, the PACS exporter's) failed, from its recorded
    state: its own `failing` flag, which each round sets; for a state recorded before the flag,
    its last error stamped after its `success_key` stamp. Stamps alone lied once the clock
    jumped: an error stamped 2040 kept a working link "offline" until 2040."""
    if "failing" in state:
        return bool(state["failing"]) and bool(state.get("last_error"))
    return bool(state.get("last_error")) and (state.get("last_error_at") or "") > (
        state.get(success_key) or ""
    )
