"""sd_notify and the watchdog: READY/STATUS/STOPPING, and no WATCHDOG=1 once the worker wedges."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge import systemd
from edge.config import Settings
from edge.operations.agent import Agent
from edge.pipeline import Pipeline


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return out


def collected(sock: socket.socket, seconds: float) -> list[str]:
    """Every datagram for `seconds`, read as they come: the socket queues only a few (Linux's
    `net.unix.max_dgram_qlen`, 10 here), and a sender finding it full blocks."""
    out: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out += received(sock)
    return out


def test_notify_sends_a_datagram(notify_socket: socket.socket) -> None:
    assert systemd.notify("READY=1")
    assert received(notify_socket) == ["READY=1"]


def test_notify_is_quiet_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_watchdog_interval_follows_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert systemd.watchdog_interval() is None


def test_a_wedged_worker_stops_the_pets(
    settings: Settings, notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pet every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    wedge = threading.Event()
    release = threading.Event()
    original = Pipeline.run_once

    def run_once(self: Pipeline) -> bool:
        if wedge.is_set():
            release.wait(30)  # a job that never returns: a hung decoder, a deadlock
        return original(self)

    monkeypatch.setattr(Pipeline, "run_once", run_once)
    tuned = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"stall_s": 1.0, "poll_s": 0.1})}
    )
    agent = Agent(tuned)
    runner = threading.Thread(target=agent.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()
    try:
        assert agent.ready.wait(60)
        healthy: list[str] = []
        deadline = time.monotonic() + 20  # a loaded machine may pet late, never not at all
        while healthy.count("WATCHDOG=1") < 3 and time.monotonic() < deadline:
            healthy += received(notify_socket)
        assert "READY=1" in healthy
        assert healthy.count("WATCHDOG=1") >= 3
        assert any(m.startswith("STATUS=queue ") for m in healthy)

        wedge.set()
        collected(notify_socket, 2.5)  # stall_s passes: from here on no pets
        wedged = collected(notify_socket, 1.5)
        assert "WATCHDOG=1" not in wedged
        assert any(m.startswith("STATUS=") for m in wedged)  # still says what it is doing
    finally:
        release.set()
        agent.stop.set()
        runner.join(60)
    assert "STOPPING=1" in received(notify_socket)


def test_the_sync_agent_is_ready_and_pets_while_the_link_is_down(
    notify_socket: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """edge-sync.service: READY once running, pets while backing off from a dead hub, a STATUS
    line that says what is failing, STOPPING on SIGTERM (here: the stop event)."""
    import os

    from edge.config import load_settings
    from edge.sync import runner, signatures
    from edge.sync.credential import Credential

    with socket.socket() as probe:  # a port nobody listens on: the link is down
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    settings = load_settings(
        data_dir=tmp_path / "device", sync={"interval_s": 0.2, "max_backoff_s": 1, "timeout_s": 1}
    )
    Credential(f"http://127.0.0.1:{dead}", "device-1", key=signatures.new_device_key()).save(settings, True)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pets due every 0.2 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setattr(runner.signal, "signal", lambda *_: None)  # not the main thread
    stop = threading.Event()
    thread = threading.Thread(target=runner.serve, args=(settings, stop))
    thread.start()
    messages = collected(notify_socket, 4)
    stop.set()
    deadline = time.monotonic() + 30
    while thread.is_alive() and time.monotonic() < deadline:
        messages += received(notify_socket)
    assert not thread.is_alive()
    messages += received(notify_socket)
    assert messages[0].startswith("READY=1"), messages[:3]
    assert messages.count("WATCHDOG=1") >= 5
    assert any(m.startswith("STATUS=") and "failing" in m and "cannot be reached" in m for m in messages)
    assert messages[-1] == "STOPPING=1"
