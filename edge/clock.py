"""The one time format of the device and the hub (below every other module: anything may use it)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


def utc_now() -> str:
    """UTC time as ISO-8601 with milliseconds and `Z`, the one time format of the store."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_after(seconds: float) -> str:
    """`utc_now()` moved `seconds` ahead (a lease's end), in the same comparable format."""
    moment = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
