"""The remote specialists' review pages as one FastAPI sub-application, which `edge.hub.app`
mounts at /review with its own middleware (security headers) and refusal pages, so the device
API under /v1 is untouched.

Server-rendered HTML (Jinja2 templates in edge/hub/templates), one small CSS file and one plain
script (edge/hub/static); no build step. The routes: `routes_account` (logging in and out, the
reader's own account), `routes_review` (worklist, study, verdict), `routes_admin` (the
administrators' page); what they share (sessions, CSRF, headers, templates) is `review_http`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge.hub import disconnects, routes_account, routes_admin, routes_profiles, routes_review
from edge.hub.limits import RateLimiter
from edge.hub.render import Renditions
from edge.hub.review_http import (
    SESSION_COOKIE,
    LoginRequired,
    Refused,
    SecurityHeaders,
    WebState,
    base_path,
    load_static,
    make_templates,
    page,
)

LOGIN_RATE_PER_S = 10 / 60  # ten attempts a minute per address, after a burst of ten
LOGIN_BURST = 10


def create_review_app(
    engine: Engine,
    files: Path,
    models_dir: Path | None = None,
    renditions: Renditions | None = None,
    publisher_key: str | None = None,
) -> FastAPI:
    app = FastAPI(title="edge hub review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = WebState(
        engine=engine,
        files=files,
        renditions=renditions or Renditions(files / "renditions"),
        login_limiter=RateLimiter(LOGIN_RATE_PER_S, LOGIN_BURST),
        templates=make_templates(),
        static=load_static(),
        models_dir=models_dir,
        publisher_key=publisher_key,
    )
    app.add_middleware(SecurityHeaders)
    disconnects.install(app)  # its own exception handling: the hub app's handler is not reached

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, _: LoginRequired) -> Response:
        if "text/html" not in request.headers.get("accept", ""):
            return Response("log in first", status_code=401, media_type="text/plain")
        path = request.url.path
        if request.method not in ("GET", "HEAD"):
            # A form sent after the session ended (a verdict after 2 h idle): back to the page it
            # came from once logged in again, where the unsent verdict, kept in the browser's
            # tab (review.js), is offered again. Before, a plain 401 lost it.
            path = path.removesuffix("/review") if path.endswith("/review") else base_path(request) + "/"
        target = path + (f"?{request.url.query}" if request.url.query else "")
        query: dict[str, str] = {"next": target} if target.startswith(base_path(request) + "/") else {}
        if request.cookies.get(SESSION_COOKIE):  # a session was sent and is over: say so
            query["expired"] = "1"
        suffix = "?" + urlencode(query) if query else ""
        return RedirectResponse(f"{base_path(request)}/login{suffix}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _not_found(request: Request, error: StarletteHTTPException) -> Response:
        """A page that does not exist is a page in a browser, not the framework's JSON."""
        if error.status_code == 404 and "text/html" in request.headers.get("accept", ""):
            return page(request, "error.html", None, status=404, message="There is no such page.")
        return await http_exception_handler(request, error)

    @app.exception_handler(Refused)
    async def _refused(request: Request, error: Refused) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return page(request, "error.html", None, status=error.status, message=error.message)
        return Response(error.message, status_code=error.status, media_type="text/plain")

    app.include_router(routes_account.router)
    app.include_router(routes_review.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_profiles.router)
    return app
