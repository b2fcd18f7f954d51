"""systemd integration: sd_notify written here (the `sdnotify` package is abandoned; the
protocol is one datagram), and the watchdog that only pets when the agent is really healthy.

- READY=1 once sources and worker run; STOPPING=1 when a drain starts;
- STATUS=<one line>: queue depth, last result, disk (shown by `systemctl status`);
- WATCHDOG=1 every WatchdogSec/2, but only after a real health check: the worker loop made
  progress recently (it beats once per loop, busy or idle) and the store answers a query. A
  wedged worker or a locked database stops the pets, and systemd restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send one sd_notify datagram; False (quietly) when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec (systemd's advice), if the watchdog is on for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


class Heartbeat:
    """The worker beats once per loop; the watchdog asks whether the last beat is recent."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def beat(self) -> None:
        with self._lock:
            self._last = time.monotonic()

    def age(self) -> float:
        with self._lock:
            return time.monotonic() - self._last


class Watchdog:
    """Pets systemd while `healthy()` says so; also refreshes STATUS= with `status()`."""

    def __init__(
        self,
        interval_s: float,
        healthy: Callable[[], tuple[bool, str]],
        status: Callable[[], str],
        stop: threading.Event,
        send: Callable[[str], bool] = notify,
    ) -> None:
        self.interval_s = interval_s
        self._healthy = healthy
        self._status = status
        self._stop = stop
        self._send = send
        self.pets = 0
        self.last_problem = ""

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                ok, problem = self._healthy()
            except Exception as exc:  # noqa: BLE001 - a failing check is an unhealthy agent
                ok, problem = False, f"health check raised {type(exc).__name__}"
            if ok:
                self._send("WATCHDOG=1")
                self.pets += 1
                self.last_problem = ""
            elif problem != self.last_problem:
                log.error("unhealthy, not petting the watchdog: %s", problem)
                self.last_problem = problem
            try:
                self._send(f"STATUS={self._status()}")
            except Exception:
                log.exception("status line failed")
