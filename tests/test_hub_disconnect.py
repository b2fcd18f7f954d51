"""A client that closes its connection halfway through sending a request (a device on a flaky
link mid-upload) is logged as one line with the route and the device, with no traceback; a real
server error still logs its traceback. Against the hub served by a real uvicorn."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge.config import Settings
from edge.hub import db
from edge.hub.app import create_app
from tests.hubfixtures import LiveHub


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(
            self.format(r) + (f"\n{logging.Formatter().formatException(r.exc_info)}" if r.exc_info else "")
            for r in self.records
        )


@pytest.fixture
def live(settings: Settings, tmp_path: Path) -> Iterator[tuple[LiveHub, Captured]]:
    app = create_app(settings, db.make_engine(f"sqlite:///{tmp_path / 'hub.db'}"))

    async def boom() -> None:
        raise RuntimeError("a real bug in the hub")

    app.add_api_route("/v1/boom", boom, methods=["POST"])
    captured = Captured()
    edge_logger = logging.getLogger("edge")
    level = edge_logger.level
    with LiveHub(app) as hub:
        # uvicorn's own loggers do not propagate to the root: listen to them and to edge's (at
        # warning at least, whatever an earlier `edge` command configured the root to)
        watched = [logging.getLogger("uvicorn"), edge_logger]
        for logger in watched:
            logger.addHandler(captured)
        edge_logger.setLevel(logging.INFO)
        try:
            yield hub, captured
        finally:
            edge_logger.setLevel(level)
            for logger in watched:
                logger.removeHandler(captured)


def half_send(port: int, head: str) -> None:
    """Headers announcing 100 kB, then 1 kB of it, then the connection closes."""
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall((head + "Host: hub\r\nContent-Length: 100000\r\n\r\n").encode() + b"x" * 1000)
        time.sleep(0.2)


def wait_for(captured: Captured, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in captured.text():
        assert time.monotonic() < deadline, captured.text()
        time.sleep(0.05)
    time.sleep(0.3)  # anything logged after it arrives too


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (
            "PATCH /v1/uploads/0190abcd HTTP/1.1\r\nX-Edge-Device: dev-42\r\nX-Edge-Signature: s3cret\r\n",
            "client disconnected mid-request: PATCH /v1/uploads/{upload_id} (device dev-42); nothing stored",
        ),
        (
            "POST /v1/batches HTTP/1.1\r\nContent-Encoding: gzip\r\n",
            "client disconnected mid-request: POST /v1/batches; nothing stored",
        ),
        (
            "POST /review/login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n",
            "client disconnected mid-request: POST /review/login; nothing stored",
        ),
    ],
)
def test_a_half_sent_request_is_one_line_without_a_traceback(
    live: tuple[LiveHub, Captured], head: str, expected: str
) -> None:
    hub, captured = live
    half_send(hub.port, head)
    wait_for(captured, "client disconnected")
    assert [r.getMessage() for r in captured.records] == [expected]
    assert captured.records[0].levelno == logging.WARNING
    assert "Traceback" not in captured.text()
    assert "s3cret" not in captured.text()  # nothing of a request's signature is logged
    assert httpx.get(f"{hub.url}/v1/health").json()["ok"]  # and the hub serves on


def test_a_real_server_error_keeps_its_traceback(live: tuple[LiveHub, Captured]) -> None:
    hub, captured = live
    assert httpx.post(f"{hub.url}/v1/boom", content=b"{}").status_code == 500
    wait_for(captured, "Exception in ASGI application")
    assert "RuntimeError: a real bug in the hub" in captured.text()
    assert "Traceback" in captured.text()
