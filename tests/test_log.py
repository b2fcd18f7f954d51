"""The device's log: one line per event, and a repeated message written once, then summarised."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from edge import log as edge_log
from edge.errors import Code, EdgeError
from edge.log import RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO, Clock, RepeatFilter]]:
    """A logger writing through the device's formatter and a repeat filter with a fake clock."""
    stream, clock = io.StringIO(), Clock()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(edge_log._Formatter(journald=False))
    repeats = RepeatFilter(60.0, clock=clock)
    repeats.sink = handler.handle
    handler.addFilter(repeats)
    logger = logging.getLogger("edge.test_log")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, stream, clock, repeats
    logger.removeHandler(handler)
    logger.propagate = True


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def disk_full(name: str) -> str:
    return EdgeError(Code.DISK_FULL, f"no space left to store {name}").one_line()


def test_a_repeated_message_is_written_once_then_summarised(logged: tuple) -> None:
    logger, stream, clock, _ = logged
    for index in range(500):  # a full disk refuses every file of every scan the same way
        logger.warning("input refused: %s", disk_full(f"{index}.png"))
        clock.now += 0.05
    assert lines(stream) == ["warning edge.test_log: input refused: DISK_FULL: no space left to store 0.png"]
    clock.now += 60
    logger.info("something else")  # any later line lets the summary out, before itself
    assert lines(stream)[1:] == [
        "warning edge.test_log: input refused: DISK_FULL: no space left to store 499.png"
        " (repeated 499 times in the last 85 s)",
        "info edge.test_log: something else",
    ]


def test_a_continuous_flood_gives_about_two_lines_a_minute(logged: tuple) -> None:
    logger, stream, clock, _ = logged
    for _ in range(25 * 45):  # the fault campaign: 1,118 in 25 s, kept up for 10 minutes
        for _ in range(24):
            logger.error("worker: %s", disk_full("x"))
            clock.now += 1 / 45
    assert 18 <= len(lines(stream)) <= 22
    assert sum("repeated" in line for line in lines(stream)) == len(lines(stream)) // 2


def test_each_distinct_message_gets_its_first_line_through(logged: tuple) -> None:
    logger, stream, _, _ = logged
    for _ in range(3):
        logger.warning("input refused: %s", disk_full("a.png"))
        logger.warning("input refused: %s", disk_full("b.png"))  # another file, the same refusal
        logger.warning("input refused: %s", EdgeError(Code.INPUT_EMPTY, "a.png is empty").one_line())
        logger.warning("input refused: %s", EdgeError(Code.INPUT_EMPTY, "c.png is empty"))
        logger.error("model %s cannot be served: %s", "us-lung", disk_full("engine"))
        logger.error("model %s cannot be served: %s", "us-breast", disk_full("engine"))
        logging.getLogger("edge.test_log.other").warning("input refused: %s", disk_full("a.png"))
    assert [line.split(": ", 1)[1] for line in lines(stream)] == [
        "input refused: DISK_FULL: no space left to store a.png",
        "input refused: INPUT_EMPTY: a.png is empty",
        "model us-lung cannot be served: DISK_FULL: no space left to store engine",
        "model us-breast cannot be served: DISK_FULL: no space left to store engine",
        "input refused: DISK_FULL: no space left to store a.png",
    ]


def test_info_lines_are_never_held_back(logged: tuple) -> None:
    logger, stream, clock, _ = logged
    for index in range(50):
        logger.info("job %s: %s", f"job-{index % 2}", "pneumonia")
    logger.warning("drop folder: %s", "a warning")
    logger.warning("drop folder: %s", "a warning")
    clock.now += 61
    logger.info("job %s: %s", "job-2", "normal")  # a later line of any level lets the summary out
    assert len(lines(stream)) == 53
    assert (
        lines(stream)[-2]
        == "warning edge.test_log: drop folder: a warning (repeated 1 time in the last 61 s)"
    )


def test_the_first_traceback_is_kept_and_the_summary_has_none(logged: tuple) -> None:
    logger, stream, _, repeats = logged
    for _ in range(3):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("drop folder scan failed")
    assert "RuntimeError: boom" in stream.getvalue()
    assert stream.getvalue().count("Traceback") == 1
    repeats.flush()  # at exit: what was held back is still reported
    last = lines(stream)[-1]
    assert last.startswith("error edge.test_log: drop folder scan failed (repeated 2 times")
    assert "Traceback" not in last


def test_the_memory_is_bounded(logged: tuple) -> None:
    logger, stream, _, repeats = logged
    repeats._max = 10
    for index in range(100):
        logger.warning(f"message {index} %s", "x")  # a new template each time
    assert len(repeats._runs) == 10
    assert len(lines(stream)) == 100


def test_configure_installs_the_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    edge_log.configure(logging.INFO)
    assert any(isinstance(f, RepeatFilter) for f in root.handlers[0].filters)


def test_the_exit_summary_to_a_closed_stream_is_dropped_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """At exit the held summaries are flushed; a stream closed by then (a test runner's capture,
    a closed pipe) must not cost a "write to closed file" traceback on the real stderr."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    stream = io.StringIO()
    monkeypatch.setattr(edge_log.sys, "stderr", stream)
    edge_log.configure(logging.INFO)
    for _ in range(3):
        logging.getLogger("edge.test").warning("the same warning")
    assert stream.getvalue().count("the same warning") == 1  # the repeats are held
    stream.close()
    edge_log._repeats.flush()  # what atexit runs
    assert "Traceback" not in capsys.readouterr().err
