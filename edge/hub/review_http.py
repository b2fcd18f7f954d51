"""The review pages' HTTP plumbing, which every route of theirs shares: the session and CSRF
checks, templates, static files, security headers.

- The session comes from the `edge_session` cookie (HttpOnly, SameSite=Strict, Secure over
  HTTPS); `current_reader` refuses a request without a live one, and for every method other
  than GET/HEAD also checks the origin and the CSRF token (form field `csrf` or header
  `X-CSRF-Token`). A page that needs a session therefore cannot take a post without the token.
- Headers on every response: a CSP that allows only this origin's own script and style files
  (no inline script at all), no framing, no sniffing, no referrer to other sites, and
  `Cache-Control: no-store` on everything except the versioned static files.
- Pages are gzip-compressed here, not by a middleware, so the JPEG and PNG images are left alone.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import jinja2
from fastapi import Depends, Request
from fastapi.responses import Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.hub import sessions
from edge.hub.identities import User
from edge.hub.limits import RateLimiter
from edge.hub.render import Renditions

SESSION_COOKIE = "edge_session"
LOGIN_COOKIE = "edge_login"  # the login form's own CSRF secret, before there is a session
SAFE_METHODS = ("GET", "HEAD")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # not no-referrer: that would send `Origin: null` on posts
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), usb=()",
}
STATIC_FILES = ("review.css", "review.js")


class LoginRequired(Exception):
    """No live session: a page redirects to the login form, an image or script call gets 401."""


class Refused(Exception):
    """A refusal with its status and a sentence for the error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class WebState:
    engine: Engine
    files: Path
    renditions: Renditions
    login_limiter: RateLimiter
    templates: jinja2.Environment
    static: dict[str, tuple[bytes, bytes, str, str]]  # name -> (raw, gzipped, media type, hash)
    models_dir: Path | None = None  # the hub's own model manifests (agreement.shipped_manifest)
    publisher_key: str | None = None  # [hub] publisher_public_key: profiles' signatures checked


@dataclass(frozen=True)
class Reader:
    """The person behind this request, with their session."""

    session: sessions.Session

    @property
    def user(self) -> User:
        return self.session.user

    def csrf(self) -> str:
        return sessions.mask_token(self.session.csrf_secret)


def state(request: Request) -> WebState:
    web: WebState = request.app.state.web
    return web


def base_path(request: Request) -> str:
    """Where the review pages are mounted ("/review", behind any proxy prefix)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


# ------------------------------------------------------------------ sessions and CSRF


def same_origin(request: Request) -> bool:
    """A browser's post from another site says so (Sec-Fetch-Site, Origin); those are refused
    before the token is even looked at."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True  # older browsers and non-browser clients: the token decides
    parts = urlsplit(origin)
    return parts.scheme == request.url.scheme and parts.netloc == request.headers.get("host", "")


async def presented_token(request: Request) -> str | None:
    header = request.headers.get("x-csrf-token")
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get("csrf")
        return value if isinstance(value, str) else None
    return None


async def check_csrf(request: Request, secret: str) -> None:
    if not same_origin(request):
        raise Refused(403, "This form was sent from another site and was refused.")
    if not sessions.token_matches(secret, await presented_token(request)):
        raise Refused(403, "The form's security token is missing or stale: reload the page and try again.")


async def current_reader(request: Request) -> Reader:
    """Dependency of every page, image and form post behind the login."""
    web = state(request)
    session = await run_in_threadpool(sessions.session_for, web.engine, request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise LoginRequired()
    if request.method not in SAFE_METHODS:
        await check_csrf(request, session.csrf_secret)
    return Reader(session)


async def current_admin(request: Request) -> Reader:
    reader = await current_reader(request)
    if not reader.user.is_admin:
        raise Refused(403, "This page is for the hub's administrators.")
    return reader


ReaderDep = Annotated[Reader, Depends(current_reader)]
AdminDep = Annotated[Reader, Depends(current_admin)]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def session_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=sessions.SESSION_MAX_S,
        path=base_path(request) or "/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


# ------------------------------------------------------------------ rendering


def load_static() -> dict[str, tuple[bytes, bytes, str, str]]:
    folder = resources.files("edge.hub") / "static"
    out = {}
    for name in STATIC_FILES:
        raw = (folder / name).read_bytes()
        media = "text/css" if name.endswith(".css") else "text/javascript"
        out[name] = (raw, gzip.compress(raw, 9, mtime=0), media, hashlib.sha256(raw).hexdigest()[:12])
    return out


def make_templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("edge.hub", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "")


def page(
    request: Request,
    template: str,
    reader: Reader | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response:
    """A rendered page, gzip-compressed when the browser takes it."""
    web = state(request)
    base = base_path(request)
    body = (
        web.templates.get_template(template)
        .render(
            base=base,
            user=reader.user if reader else None,
            csrf=reader.csrf() if reader else "",
            static=lambda name: f"{base}/static/{name}?v={web.static[name][3]}",
            **context,
        )
        .encode()
    )
    extra = {"Vary": "Accept-Encoding", **(headers or {})}
    if len(body) > 1400 and accepts_gzip(request):
        body = gzip.compress(body, 6, mtime=0)
        extra["Content-Encoding"] = "gzip"
    return Response(body, status_code=status, media_type="text/html; charset=utf-8", headers=extra)


def static_response(request: Request, name: str) -> Response:
    web = state(request)
    if name not in web.static:
        return Response("not found", status_code=404, media_type="text/plain")
    raw, packed, media, digest = web.static[name]
    headers = {
        "Cache-Control": "public, max-age=31536000, immutable",  # the URL carries the hash
        "ETag": f'"{digest}"',
        "Vary": "Accept-Encoding",
    }
    if request.headers.get("if-none-match") == f'"{digest}"':
        return Response(status_code=304, headers=headers)
    if accepts_gzip(request):
        return Response(packed, media_type=media, headers={**headers, "Content-Encoding": "gzip"})
    return Response(raw, media_type=media, headers=headers)


class SecurityHeaders:
    """Pure ASGI (no BaseHTTPMiddleware): adds the headers to every response start."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in HEADERS.items():
                    headers.setdefault(key, value)
                if "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
                if scope.get("scheme") == "https":
                    headers.setdefault("Strict-Transport-Security", "max-age=31536000")
            await send(message)

        await self.app(scope, receive, with_headers)
