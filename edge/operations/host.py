"""Host facts for the device screen, read from /proc and /sys (no Textual, no GPU library).

On a Jetson the board names itself in the device tree, the GPU's load is in its sysfs node and
the thermal zones are named (`GPU-therm`, `CPU-therm`, ...); elsewhere the same files give the
CPU temperatures where the kernel exposes them. Anything unreadable is simply left out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_GPU_LOAD_FILES = ("sys/devices/gpu.0/load", "sys/devices/platform/gpu.0/load")  # per mille


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def board_model(root: Path) -> str | None:
    return _read(root / "proc/device-tree/model")


def temperatures(root: Path) -> list[tuple[str, float]]:
    """(zone name, degrees Celsius) for every readable thermal zone."""
    out = []
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        kind, raw = _read(zone / "type"), _read(zone / "temp")
        if kind and raw and raw.lstrip("-").isdigit():
            out.append((kind, int(raw) / 1000))
    return out


def gpu_load(root: Path) -> float | None:
    """The integrated GPU's load (0-1) on a Jetson; None elsewhere."""
    for name in _GPU_LOAD_FILES:
        raw = _read(root / name)
        if raw and raw.isdigit():
            return int(raw) / 1000
    return None


def memory_mb(root: Path) -> tuple[int, int] | None:
    """(total, available) MB from /proc/meminfo."""
    text = _read(root / "proc/meminfo")
    if not text:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) // 1024
    if "MemTotal" not in values or "MemAvailable" not in values:
        return None
    return values["MemTotal"], values["MemAvailable"]


def host_facts(root: Path = Path("/")) -> dict[str, Any]:
    model = board_model(root)
    return {
        "board": model,
        "jetson": bool(model and "jetson" in model.lower()),
        "cpus": os.cpu_count() or 0,
        "memory_mb": memory_mb(root),
        "gpu_load": gpu_load(root),
        "temperatures": temperatures(root),
    }
