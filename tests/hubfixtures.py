"""A real hub (FastAPI app on SQLite or a throwaway PostgreSQL) and enrolled devices for tests."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge.config import Settings
from edge.hub import db, devices
from edge.hub.app import create_app
from edge.store import Store
from edge.sync.client import SyncClient
from edge.sync.credential import Credential, enroll
from edge.sync.runner import exchange
from tools import postgres_temp

PG_BIN = postgres_temp.PG_BIN


def _free_port() -> int:
    return postgres_temp.free_port()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """EDGE_TEST_POSTGRES_URL if set, else a throwaway cluster (tools/postgres_temp.py)."""
    if os.environ.get("EDGE_TEST_POSTGRES_URL"):
        yield os.environ["EDGE_TEST_POSTGRES_URL"]
        return
    if not postgres_temp.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing: .ci/run must apt-get install postgresql")
        pytest.skip("PostgreSQL is not installed")
    with postgres_temp.throwaway_postgres() as url:
        yield url


def database_url(request: pytest.FixtureRequest, folder: Path) -> str:
    """The hub database for a test parametrised over "sqlite" and "postgresql"."""
    if request.param == "sqlite":
        return f"sqlite:///{folder / 'hub.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


class Hub:
    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings.model_copy(
            update={"hub": settings.hub.model_copy(update={"database_url": url})}
        )
        self.engine = db.make_engine(url)
        self.app = create_app(self.settings, self.engine)
        self.client = TestClient(self.app, base_url="http://testserver")

    def enroll(self, device_settings: Settings, name: str = "device") -> Credential:
        code = devices.create_enroll_code(self.engine)
        return enroll(device_settings, "http://testserver", code, name, self.client, insecure=True)

    def sync_client(self, device_settings: Settings, store: Store, credential: Credential) -> SyncClient:
        return SyncClient(device_settings, store, self.client, credential)


def reset(engine: object) -> None:
    """Empty every hub table (PostgreSQL is shared between tests of a session)."""
    from sqlalchemy import Engine

    assert isinstance(engine, Engine)
    with engine.begin() as conn:
        for table in reversed(db.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture(name="hub")
def sqlite_hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub on SQLite in the test's folder, as `hub` (a module imports it to use it)."""
    from edge.config import load_settings

    running = Hub(load_settings(data_dir=tmp_path / "hub-host"), f"sqlite:///{tmp_path / 'hub.db'}")
    reset(running.engine)
    yield running
    running.client.close()


# ------------------------------------------------------------------ the review pages


REVIEW_PASSWORD = "correct horse battery staple"


def enroll_in(hub: Hub, device_settings: Settings, programme: str, name: str) -> Credential:
    """Enrol a device into a programme (what an administrator's code for that programme does)."""
    code = devices.create_enroll_code(hub.engine, programme)
    return enroll(device_settings, "http://testserver", code, name, hub.client, insecure=True)


def device_results(
    settings: Settings, http: Any, credential: Credential, paths: list[Path], urgent: int = 0
) -> list[str]:
    """Analyse `paths` on a device with the real pipeline, flag the first `urgent` studies urgent
    (as a technician does), then sync everything to the hub through the sync client."""
    from edge.pipeline import Pipeline

    with Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store)
        analyses = [analysis for path in paths for analysis in pipeline.analyse_file(path) if analysis.ok]
        pipeline.close()
        for analysis in analyses[:urgent]:
            assert analysis.study_id is not None
            store.technician.set_urgent(analysis.study_id, True, "technician")
        exchange(SyncClient(settings, store, http, credential))
    return [str(analysis.result.id) for analysis in analyses if analysis.result]


class LiveHub:
    """The hub app served by a real uvicorn on a free local port (a thread of this process)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="live-hub", daemon=True)

    def __enter__(self) -> LiveHub:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the hub did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# ------------------------------------------------------------------ review pages: a shared world


HTML = {"accept": "text/html"}  # what a browser's page request says it takes


@dataclass
class SyncedDevice:
    settings: Settings
    credential: Credential
    results: list[str]


@dataclass
class World:
    hub: Hub
    north: SyncedDevice
    south: SyncedDevice
    users: dict[str, str]  # name -> id


def web_app(hub: Hub) -> Any:
    """The review pages' sub-application (mounted at /review)."""
    return next(route.app for route in hub.app.routes if getattr(route, "path", "") == "/review")


def review_samples() -> list[Path]:
    from tests.conftest import DEFAULT_MODEL, MODELS

    return sorted((MODELS / DEFAULT_MODEL / "samples").glob("*.png"))


@pytest.fixture(name="world", scope="module", params=["sqlite", "postgresql"])
def world_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """Two programmes, a device in each with real analysed and synced results, four readers
    (per test module and database: tests that change state use their own accounts)."""
    from edge.config import load_settings
    from edge.hub import accounts
    from edge.hub.limits import RateLimiter
    from tests.conftest import MODELS

    tmp = tmp_path_factory.mktemp(f"review-{request.param}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("edge.config.SYSTEM_CONFIG", tmp / "no-system-config.toml")
        for variable in [name for name in os.environ if name.startswith("EDGE_")]:
            patch.delenv(variable)
        url = database_url(request, tmp)
        hub = Hub(load_settings(data_dir=tmp / "hub-host"), url)
        reset(hub.engine)
        devices = {}
        for programme, site, chosen, urgent in (
            ("north", "north-clinic", review_samples()[:4], 1),
            ("south", "south-clinic", review_samples()[4:6], 0),
        ):
            settings = load_settings(
                data_dir=tmp / programme, site=site, models={"dir": MODELS}, sync={"images": "thumbnails"}
            )
            credential = enroll_in(hub, settings, programme, f"{programme}-xray")
            devices[programme] = SyncedDevice(
                settings, credential, device_results(settings, hub.client, credential, chosen, urgent)
            )
        users = {}
        for name, role, programmes in (
            ("admin", "administrator", ("*",)),
            ("north-reader", "specialist", ("north",)),
            ("south-reader", "specialist", ("south",)),
            ("both-reader", "specialist", ("north", "south")),
        ):
            users[name] = accounts.create_user(hub.engine, name, REVIEW_PASSWORD, role, programmes).id
        web_app(hub).state.web.login_limiter = RateLimiter(1000.0, 1000)  # the rate test sets its own
        yield World(hub, devices["north"], devices["south"], users)
        hub.client.close()


def browser(world: World) -> TestClient:
    """A fresh client: its own cookie jar, like a second browser."""
    return TestClient(world.hub.app, base_url="http://testserver")


def login(client: TestClient, name: str, password: str = REVIEW_PASSWORD) -> int:
    form = client.get("/review/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    reply = client.post(
        "/review/login",
        data={"name": name, "password": password, "csrf": token.group(1), "next": "/review/"},
        follow_redirects=False,
    )
    return reply.status_code


def fill_login(page: Any, name: str, url: str | None = None) -> None:
    """Log in from the login form in a browser (Playwright's page): at `url` (the hub's
    base), or on the login page the browser is already on."""
    if url is not None:
        page.goto(url + "/review/login")
    page.fill("#name", name)
    page.fill("#password", REVIEW_PASSWORD)
    page.click("#login-form button[type=submit]")


def reader(world: World, name: str) -> TestClient:
    client = browser(world)
    assert login(client, name) == 303
    return client


def csrf(client: TestClient, path: str = "/review/") -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get(path).text)
    assert match is not None
    return match.group(1)


def review_count(world: World) -> int:
    from sqlalchemy import func, select

    with world.hub.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(db.reviews)).scalar_one())


def upload_bytes_kept(engine: Any, where: Any = None) -> list[bool]:
    """Per upload row (filtered by `where`): are its bytes still stored? Files on SQLite, chunk
    rows on PostgreSQL (edge/hub/blobs.py); a row whose bytes were never written reads False."""
    from sqlalchemy import select

    query = select(db.uploads.c.id, db.uploads.c.path)
    with engine.connect() as conn:
        rows = conn.execute(query if where is None else query.where(where)).all()
        if engine.dialect.name != "postgresql":
            return [Path(row.path).is_file() for row in rows]
        chunked = set(conn.execute(select(db.upload_chunks.c.upload_id).distinct()).scalars())
    return [row.id in chunked for row in rows]
