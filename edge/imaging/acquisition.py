"""When and at what scale an image was acquired, from its DICOM header: the acquisition time
(AcquisitionDateTime, else AcquisitionDate + AcquisitionTime, else ContentDate + ContentTime) as
`YYYY-MM-DDTHH:MM:SS`, and millimetres per pixel (row, column) from PixelSpacing (the patient
plane), ImagerPixelSpacing (the detector plane) and an ultrasound region's calibration
(SequenceOfUltrasoundRegions: PhysicalDeltaY/X in cm when its units say cm). Each value is
checked to be a date or a number, so no free text rides in them; None where the header does not
say or says nonsense. A cine's frame times (`frame_clock`) come from its header too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

_DT = re.compile(r"^(\d{8})(\d{2})?(\d{2})?(\d{2})?")
_ULTRASOUND_CM = 3  # PhysicalUnitsXDirection/YDirection: 3 means cm (PS3.3 C.8.5.5.1.15)
ISO_MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")


def acquisition_facts(ds: Any) -> dict[str, Any]:
    return {
        "acquired": acquired(ds),
        "pixel_spacing": spacing(_get(ds, "PixelSpacing")),
        "imager_pixel_spacing": spacing(_get(ds, "ImagerPixelSpacing")),
        "ultrasound_region_spacing": _region_spacing(ds),
    }


def _get(ds: Any, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - one malformed element must not refuse the image
        return None


def moment(date_time: str | None) -> str | None:
    """A DICOM DT (or DA + TM run together) as `YYYY-MM-DDTHH:MM:SS`, None when not a real one."""
    match = _DT.match(str(date_time or "").strip())
    if match is None:
        return None
    day, hour, minute, second = match.groups()
    try:
        value = datetime.strptime(day + (hour or "00") + (minute or "00") + (second or "00"), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S")


def file_moment(mtime_ns: int) -> dict[str, str]:
    """A PNG/JPEG's stand-in for an acquisition time: its file's modification time on the
    device's clock (local, like a modality's), said to come from the file."""
    moment = datetime.fromtimestamp(mtime_ns / 1e9).strftime("%Y-%m-%dT%H:%M:%S")
    return {"acquired": moment, "acquired_from": "file"}


def acquired(ds: Any) -> str | None:
    found = moment(_text(_get(ds, "AcquisitionDateTime")))
    for date_key, time_key in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime")):
        if found:
            break
        day = _text(_get(ds, date_key))
        if day:
            found = moment(day + (_text(_get(ds, time_key)) or "").replace(":", ""))
    return found


def _text(value: Any) -> str | None:
    return str(value).strip() if value not in (None, "") else None


def spacing(value: Any) -> list[float] | None:
    """[row, column] mm per pixel, both positive and finite; None otherwise."""
    try:
        row, column = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not (0 < row < 1e4 and 0 < column < 1e4):  # also false for nan
        return None
    return [round(row, 6), round(column, 6)]


def _region_spacing(ds: Any) -> list[float] | None:
    regions = _get(ds, "SequenceOfUltrasoundRegions")
    try:
        region = regions[0]
        if (
            int(region.PhysicalUnitsXDirection) != _ULTRASOUND_CM
            or int(region.PhysicalUnitsYDirection) != _ULTRASOUND_CM
        ):
            return None
        return spacing([float(region.PhysicalDeltaY) * 10, float(region.PhysicalDeltaX) * 10])
    except Exception:  # noqa: BLE001 - absent or malformed: no calibration
        return None


MAX_FRAME_INTERVAL_MS = 60_000.0  # a minute between two frames of a cine is no cine


def frame_clock(ds: Any, frames: int) -> Callable[[int], float]:
    """A cine's frame index -> seconds from its first frame: the Frame Time Vector's increments
    where it holds one per frame (a machine whose frame rate varies), else Frame Time, Cine Rate
    or the recommended display rate, else 30 a second; frames past the stated number go on at
    the last interval."""
    increments = _numbers(_get(ds, "FrameTimeVector"))
    # One per frame, each after the first a real interval (all zeros put every frame at 0 s,
    # and the video path then analysed only the first); else the rate below.
    if (
        increments is not None
        and len(increments) == frames > 1
        and all(0 < v <= MAX_FRAME_INTERVAL_MS for v in increments[1:])
    ):
        times = [0.0]
        for increment in increments[1:]:
            times.append(times[-1] + increment / 1000)
        step = times[-1] - times[-2]
        return lambda index: times[index] if index < frames else times[-1] + (index - frames + 1) * step
    frame_time_ms = _number(_get(ds, "FrameTime"))
    if not frame_time_ms:
        rate = _number(_get(ds, "CineRate")) or _number(_get(ds, "RecommendedDisplayFrameRate"))
        frame_time_ms = 1000.0 / rate if rate else 1000.0 / 30
    return lambda index: index * frame_time_ms / 1000


def _number(value: Any) -> float | None:
    """A positive finite number, else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _numbers(value: Any) -> list[float] | None:
    """Finite numbers of a multi-valued element, else None."""
    try:
        numbers = [float(v) for v in (value if isinstance(value, list | tuple) else list(value))]
    except (TypeError, ValueError):
        return None
    return numbers if all(math.isfinite(v) for v in numbers) else None
