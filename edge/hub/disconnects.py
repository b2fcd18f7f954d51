"""A client that goes away in the middle of its request (a device on a flaky link closing
mid-upload, a browser tab closed while a form posts) is not a server error: one log line says
which route and which device, with no traceback, and nothing is answered (no one is there to
read it). Real server errors keep uvicorn's "Exception in ASGI application" and traceback.

`install` adds the handler to an application; the hub's app and its review sub-application
(which has its own exception handling) each install it.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)
_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a device id as its X-Edge-Device header claims
CLIENT_CLOSED = 499  # nginx's name for it; never sent, the client is gone


def claimed_device(request: Request) -> str | None:
    """The device id a request's credential names (not yet verified: the body it signs never came)."""
    match = _DEVICE_ID.fullmatch(request.headers.get("x-edge-device", ""))
    return match.group(0) if match else None


async def client_gone(request: Request, error: Exception) -> Response:
    assert isinstance(error, ClientDisconnect)
    matched = getattr(request.scope.get("route"), "path", None)  # the route, not the ids in the path
    where = request.scope.get("root_path", "") + matched if matched else request.url.path
    device = claimed_device(request)
    log.warning(
        "client disconnected mid-request: %s %s%s; nothing stored",
        request.method,
        where,
        f" (device {device})" if device else "",
    )
    return Response(status_code=CLIENT_CLOSED)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnect, client_gone)
