"""A real hub (FastAPI app on SQLite or a throwaway PostgreSQL) and enrolled devices for tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edge.config import Settings
from edge.hub import db, service
from edge.hub.app import create_app
from edge.store import Store
from edge.sync.client import Credential, SyncClient, enroll

# Debian installs the server binaries per major version (15 on bookworm, 17 on trixie).
_PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
PG_BIN = _PG_BINS[-1] if _PG_BINS else Path("/usr/lib/postgresql/missing/bin")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """EDGE_TEST_POSTGRES_URL if set, else a throwaway cluster (Debian's postgresql package)."""
    if os.environ.get("EDGE_TEST_POSTGRES_URL"):
        yield os.environ["EDGE_TEST_POSTGRES_URL"]
        return
    if not (PG_BIN / "initdb").exists():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing: .ci/run must apt-get install postgresql")
        pytest.skip("PostgreSQL is not installed")
    folder = Path(tempfile.mkdtemp(prefix="edge-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = _free_port()
    subprocess.run(
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "edge", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    server = subprocess.Popen(
        _as_postgres(
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(folder),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ]
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
                psycopg.connect(url.replace("postgresql://", "postgresql://", 1), connect_timeout=2).close()
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


class Hub:
    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings.model_copy(
            update={"hub": settings.hub.model_copy(update={"database_url": url})}
        )
        self.engine = db.make_engine(url)
        self.app = create_app(self.settings, self.engine)
        self.client = TestClient(self.app, base_url="http://testserver")

    def enroll(self, device_settings: Settings, name: str = "device") -> Credential:
        code = service.create_enroll_code(self.engine)
        return enroll(device_settings, "http://testserver", code, name, self.client)

    def sync_client(self, device_settings: Settings, store: Store, credential: Credential) -> SyncClient:
        return SyncClient(device_settings, store, self.client, credential)


def reset(engine: object) -> None:
    """Empty every hub table (PostgreSQL is shared between tests of a session)."""
    from sqlalchemy import Engine

    assert isinstance(engine, Engine)
    with engine.begin() as conn:
        for table in reversed(db.metadata.sorted_tables):
            conn.execute(table.delete())
