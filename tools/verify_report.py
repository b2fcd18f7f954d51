"""The report of `python -m tools.verify_device`: sections, their outcomes, and the JSON file.

Pure Python (no GPU, no TensorRT), so its rules are tested everywhere. A section ends in one of
three states: `passed`, `failed` (with a code and a message) or `skipped` (with the reason). A
check that cannot run on this machine raises `Skip`; a check that ran and found something wrong
raises `CheckFailed` (or an `EdgeError` from the product code it drives, whose code is kept).
The report is rewritten after every section, so a run killed half-way (a build that runs the
board out of memory, a field engineer's Ctrl-C) still leaves everything measured until then.
"""

from __future__ import annotations

import json
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge.clock import utc_now
from edge.errors import EdgeError
from edge.operations.bench import sample_ms
from edge.store.files import write_atomically

SCHEMA = "edge.verify_device/1"
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"

# Exit codes (docs/verify-device.md): nothing failed / some section failed / the tool could not
# run at all (bad arguments, no models, a configuration that does not load) / interrupted.
EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Codes of checks that are this tool's own (a product refusal keeps its `edge.errors.Code`).
GPU_MEMORY_DRIFT = "GPU_MEMORY_DRIFT"
RESULTS_DIFFER = "RESULTS_DIFFER"
ENGINE_NOT_RECOVERED = "ENGINE_NOT_RECOVERED"
ROUND_TRIP_MISMATCH = "ROUND_TRIP_MISMATCH"
UNEXPECTED = "UNEXPECTED"


class Skip(Exception):
    """This section cannot run on this machine; the message says why."""


class CheckFailed(Exception):
    """The check ran and the device got it wrong. `data` keeps the figures that show it."""

    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data or {}


def summary_stats(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """Median, p90 (nearest rank), min, max and count of timings in milliseconds."""
    if not samples_ms:
        raise ValueError("no timings")
    ordered = sorted(samples_ms)
    # Nearest rank: the smallest value with at least 90 % of the samples at or below it.
    rank = max(1, -(-9 * len(ordered) // 10))
    return {
        "median_ms": round(statistics.median(ordered), 4),
        "p90_ms": round(ordered[rank - 1], 4),
        "min_ms": round(ordered[0], 4),
        "max_ms": round(ordered[-1], 4),
        "n": len(ordered),
    }


def timed_ms(fn: Callable[[], object], runs: int, warmup: int) -> dict[str, float | int]:
    """`fn` run `warmup` times unmeasured, then timed (`edge bench`'s own loop)."""
    return summary_stats(sample_ms(fn, runs, warmup))


class Report:
    """Every section's outcome, in the order run, written to `path` after each one."""

    def __init__(
        self,
        path: Path,
        *,
        argv: list[str],
        quick: bool,
        budget_s: float,
        on_section: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.argv = argv
        self.quick = quick
        self.budget_s = budget_s
        self.sections: list[dict[str, Any]] = []
        self.started_at = utc_now()
        self.interrupted = False
        self._clock = clock
        self._start = clock()
        self._on_section = on_section or (lambda section: None)

    def elapsed(self) -> float:
        return self._clock() - self._start

    def run(self, section: str, model: str | None, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one check and record its outcome; returns the section's record."""
        record: dict[str, Any] = {"section": section, "model": model}
        started = self._clock()
        if self.elapsed() > self.budget_s:
            # A field engineer is promised a bounded run: what did not fit is named, not run.
            record.update(status=SKIPPED, reason=f"the time budget ({self.budget_s:.0f} s) was spent")
        else:
            try:
                record.update(status=PASSED, data=check())
            except Skip as skip:
                record.update(status=SKIPPED, reason=str(skip))
            except CheckFailed as failure:
                record.update(status=FAILED, code=failure.code, message=failure.message, data=failure.data)
            except EdgeError as error:
                record.update(status=FAILED, code=error.code.value, message=error.message)
            except Exception as exc:  # noqa: BLE001 - a report must survive any bug or driver error
                record.update(
                    status=FAILED,
                    code=UNEXPECTED,
                    message=f"{type(exc).__name__}: {exc}"[:500],
                    traceback=traceback.format_exc(limit=6)[-2000:],
                )
        record["seconds"] = round(self._clock() - started, 3)
        self.sections.append(record)
        self.write()
        self._on_section(record)
        return record

    def counts(self) -> dict[str, int]:
        out = {PASSED: 0, FAILED: 0, SKIPPED: 0}
        for section in self.sections:
            out[section["status"]] += 1
        return out

    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.counts()[FAILED] else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "tool": "python -m tools.verify_device",
            "argv": self.argv,
            "quick": self.quick,
            "started_at": self.started_at,
            "written_at": utc_now(),
            "seconds": round(self.elapsed(), 1),
            "budget_s": self.budget_s,
            "interrupted": self.interrupted,
            "counts": self.counts(),
            "failed": [_label(s) for s in self.sections if s["status"] == FAILED],
            "exit_code": self.exit_code(),
            "sections": self.sections,
        }

    def write(self) -> None:
        write_atomically(self.path, (json.dumps(self.as_dict(), indent=2, default=str) + "\n").encode())


def _label(section: dict[str, Any]) -> str:
    return f"{section['section']}:{section['model']}" if section.get("model") else str(section["section"])


def section_line(section: dict[str, Any]) -> str:
    """One line for the console: outcome, name, and the figure or reason that matters."""
    label = _label(section)
    if section["status"] == PASSED:
        headline = (section.get("data") or {}).get("headline", "")
        return f"PASS {label} ({section['seconds']:.1f} s){': ' + headline if headline else ''}"
    if section["status"] == FAILED:
        return f"FAIL {label}: {section['code']}: {section['message']}"
    return f"skip {label}: {section['reason']}"
