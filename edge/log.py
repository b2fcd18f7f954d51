"""Logging for the device: one line per event, readable by journald and by a person.

Under systemd (`JOURNAL_STREAM` is set) each line starts with its syslog priority (`<3>`,
`<4>`, ...), which journald turns into the entry's priority; elsewhere it starts with the level
name. Messages name ids and codes, never a patient's name or id.

A warning or error that repeats is written the first time, then held back for
`REPEAT_WINDOW_S` and summarised in one line, "... (repeated N times in the last M s)". The same
message means the same logger, format string and arguments, where a refusal among the
arguments (an EdgeError, or `CODE: sentence`) counts by its code alone: a full disk refuses
every file with DISK_FULL, each sentence naming another file, and that is one message. The
first of each distinct message always gets through, traceback included; info lines (one per
thing done: a job's result, a model loaded) are never held back.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.errors import EdgeError

REPEAT_WINDOW_S = 60.0
MAX_MESSAGES = 1024  # distinct messages remembered at once (memory stays bounded)

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
_LEADING_CODE = re.compile(r"([A-Z][A-Z0-9_]{2,}): ")  # `CODE: sentence`, as EdgeError.one_line()
_SUMMARY = "repeat_summary"  # the attribute that marks a summary record (let through as it is)


class _Formatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__("%(name)s: %(message)s")
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")  # one event, one line
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        return f"{record.levelname.lower()} {text}"


def _same_as(value: object) -> str:
    """What of one argument makes a message the same message: a refusal's code, else its text."""
    if isinstance(value, EdgeError):
        return value.code.value
    text = str(value)
    match = _LEADING_CODE.match(text)
    return match.group(1) if match else text[:200]


def _message(record: logging.LogRecord) -> tuple[str, ...]:
    """The logger, the format string, an `extra={"code": ...}`, and each argument as `_same_as`."""
    args = record.args
    values = args.values() if isinstance(args, Mapping) else args or ()
    explicit = getattr(record, "code", None)
    code = "" if explicit is None else str(explicit)
    return (record.name, str(record.msg), code, *(_same_as(value) for value in values))


@dataclass
class _Run:
    since: float  # when the occurrence that was let through was logged
    repeats: int = 0  # held back since then
    last: logging.LogRecord | None = None  # the latest held back (the summary quotes it)


class RepeatFilter(logging.Filter):
    """A handler's filter: the first occurrence of a warning or error passes; its repeats within
    `window_s` are counted, not written, and one summary line reports them once the window has
    passed (when any later record is logged, or at exit: `flush`). `sink` receives the summaries
    (`configure` makes it the handler's `handle`)."""

    def __init__(
        self,
        window_s: float = REPEAT_WINDOW_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_messages: int = MAX_MESSAGES,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.sink: Callable[[logging.LogRecord], object] | None = None
        self._clock = clock
        self._max = max_messages
        self._runs: OrderedDict[tuple[str, ...], _Run] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        now = self._clock()
        held = False
        with self._lock:
            due = self._expire(now)
            if record.levelno >= logging.WARNING:
                key = _message(record)
                run = self._runs.get(key)
                if run is not None:
                    run.repeats += 1
                    run.last = record
                    held = True
                else:
                    self._runs[key] = _Run(now)
                    while len(self._runs) > self._max:
                        due.extend(self._summary(self._runs.popitem(last=False)[1], now))
        for summary in due:  # before this record: the lines stay in time order
            self._emit(summary)
        return not held

    def flush(self) -> None:
        """Write the summary of every message held back so far (at exit)."""
        now = self._clock()
        with self._lock:
            due = [line for run in self._runs.values() for line in self._summary(run, now)]
            self._runs.clear()
        for summary in due:
            self._emit(summary)

    def _expire(self, now: float) -> list[logging.LogRecord]:
        """Forget the runs whose window has passed (they are oldest first); their summaries."""
        due: list[logging.LogRecord] = []
        while self._runs:
            run = next(iter(self._runs.values()))
            if now - run.since < self.window_s:
                break
            self._runs.popitem(last=False)
            due.extend(self._summary(run, now))
        return due

    @staticmethod
    def _summary(run: _Run, now: float) -> list[logging.LogRecord]:
        if not run.repeats or run.last is None:
            return []
        last = run.last
        summary = logging.makeLogRecord(last.__dict__)
        times = "time" if run.repeats == 1 else "times"
        summary.msg = (
            f"{last.getMessage()} (repeated {run.repeats} {times} in the last {now - run.since:.0f} s)"
        )
        summary.args = None
        summary.exc_info = summary.exc_text = summary.stack_info = None  # the first had the traceback
        setattr(summary, _SUMMARY, True)
        return [summary]

    def _emit(self, summary: logging.LogRecord) -> None:
        if self.sink is not None:
            self.sink(summary)


def _handle_unless_closed(handler: logging.StreamHandler[Any], record: logging.LogRecord) -> None:
    """The summaries flushed at exit go to a stream that may be gone by then (a test runner's
    capture, a closed pipe): dropped rather than a "write to closed file" traceback."""
    if not getattr(handler.stream, "closed", False):
        handler.handle(record)


_repeats = RepeatFilter()
atexit.register(_repeats.flush)  # registered after logging's own: runs before its shutdown


def configure(level: int = logging.WARNING) -> None:
    # Libraries' warnings (pydicom on a non-conformant file, numpy, ...) become log records under
    # `py.warnings`: shown with -v and in the service's journal, never spilled onto a technician's
    # terminal between a command's sentences. Each distinct warning once ("default"), and the
    # repeat filter below summarises floods.
    logging.captureWarnings(False)  # off, then on: installed again if something restored the
    logging.captureWarnings(True)  # original showwarning meanwhile (warnings.catch_warnings)
    warnings.simplefilter("default")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    handler.addFilter(_repeats)
    _repeats.sink = lambda record: _handle_unless_closed(handler, record)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def is_configured_handler(handler: logging.Handler) -> bool:
    """Whether `handler` is one `configure` installed (tests remove it after a command ran)."""
    return _repeats in handler.filters
