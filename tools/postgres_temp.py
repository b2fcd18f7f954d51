"""A throwaway PostgreSQL cluster in a temporary folder (Debian's `postgresql` package): the test
suite's hub database, and the one tools/hub_cluster.py puts its hub nodes on.

    with throwaway_postgres() as url: ...   # postgresql://edge@127.0.0.1:PORT/postgres
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Debian installs the server binaries per major version (15 on bookworm, 17 on trixie).
_PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
PG_BIN = _PG_BINS[-1] if _PG_BINS else Path("/usr/lib/postgresql/missing/bin")


def available() -> bool:
    return (PG_BIN / "initdb").exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def as_postgres(command: list[str]) -> list[str]:
    """As root, run the server as the `postgres` account (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def throwaway_postgres(fsync: bool = False, settings: tuple[str, ...] = ()) -> Iterator[str]:
    """Start a cluster on a free loopback port, yield its URL, stop it and delete it. `fsync`
    off by default (tests: nothing must survive a power cut); `settings`: extra `name=value`."""
    folder = Path(tempfile.mkdtemp(prefix="edge-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "edge", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    options = ["-c", "listen_addresses=127.0.0.1", "-c", f"fsync={'on' if fsync else 'off'}"]
    for setting in settings:
        options += ["-c", setting]
    server = subprocess.Popen(
        as_postgres(
            [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(folder), *options]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"postgresql://edge@127.0.0.1:{port}/postgres"
    try:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
