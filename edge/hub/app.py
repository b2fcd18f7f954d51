"""The hub's web application, assembled: the devices' API (`routes_device`) under /v1, the
specialists' review pages (`review_app`, their own sub-application with its own sessions and
headers) mounted at /review, and the read-only FHIR endpoint (`routes_fhir`) at /fhir. Routes
and logic live in those modules; this one only wires them.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from sqlalchemy import Engine
from starlette.exceptions import HTTPException

from edge.config import Settings
from edge.hub import cluster, db, disconnects, intake, routes_device, worklist_index
from edge.hub.errors import HubError
from edge.hub.limits import RateLimiter
from edge.hub.render import Renditions
from edge.hub.review_app import create_review_app
from edge.hub.routes_fhir import create_fhir_app
from edge.sync import protocol


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    cluster.refuse_sqlite_for_several_nodes(
        engine.url.render_as_string() if engine is not None else settings.hub_database_url,
        settings.hub.nodes,
    )
    engine = engine or db.make_engine(settings.hub_database_url)
    files = settings.hub_dir / "files"
    files.mkdir(parents=True, exist_ok=True)
    # No /openapi.json, /docs or /redoc: the schema is a map of the API for whoever asks, and
    # the protocol is documented in edge/sync/protocol.py and docs/codes.md.
    app = FastAPI(
        title="edge hub", version=str(protocol.VERSION), docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.device_api = routes_device.DeviceApi(
        engine,
        files,
        RateLimiter(settings.hub.rate_per_s, settings.hub.rate_burst),
        intake.UploadQuotas.from_settings(settings.hub),
    )
    app.add_exception_handler(HubError, routes_device.hub_refused)
    app.add_exception_handler(HTTPException, routes_device.framework_refused)
    app.add_exception_handler(RequestValidationError, routes_device.invalid_request)
    disconnects.install(app)  # a client gone mid-request: one line, no traceback
    app.include_router(routes_device.router)

    with cluster.one_node_at_a_time(engine, "worklist-backfill") as mine:
        if mine:  # results stored before the review pages existed; one node does it for all
            worklist_index.backfill(engine)
    fhir_app = create_fhir_app(engine)  # read-only FHIR R4 for health information systems
    app.mount("/fhir", fhir_app)
    app.mount("/review/fhir", fhir_app)  # where a reader's browser sends its session cookie
    renditions = Renditions(
        files / "renditions", settings.hub.render_memory_mb, settings.hub.render_max_pixels
    )
    app.mount(
        "/review",
        create_review_app(engine, files, settings.models.dir, renditions, settings.hub.publisher_public_key),
    )

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:  # the bare host name leads to the review pages
        return RedirectResponse("/review/", status_code=303)

    return app
