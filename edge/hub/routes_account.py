"""Logging in and out of the review pages, and the reader's own account page (their password).

The login form has its own CSRF secret in a short-lived SameSite=Strict cookie (there is no
session yet), and is rate-limited per client address.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from edge.hub import accounts, sessions
from edge.hub.audit import record_audit
from edge.hub.review_http import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    ReaderDep,
    base_path,
    client_address,
    page,
    same_origin,
    session_cookie,
    state,
)

router = APIRouter()
EXPIRED = (
    "Your session ended: log in again. A verdict you had not sent is kept in this browser tab "
    "and offered again on its study."
)


def _safe_next(request: Request, target: str | None) -> str:
    """Only a path on these pages: never another site (`//evil`, `https://...`)."""
    base = base_path(request)
    if target and target.startswith(f"{base}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{base}/"


def _login_page(request: Request, message: str = "", status: int = 200, name: str = "") -> Response:
    secret = request.cookies.get(LOGIN_COOKIE) or ""
    fresh = len(secret) != 64
    if fresh:
        secret = secrets.token_hex(32)
    response = page(
        request,
        "login.html",
        None,
        status=status,
        message=message,
        name=name,
        next=_safe_next(request, request.query_params.get("next")),
        login_csrf=sessions.mask_token(secret),
    )
    if fresh:
        response.set_cookie(
            LOGIN_COOKIE,
            secret,
            max_age=3600,
            path=base_path(request) or "/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
    return response


@router.get("/login")
def login_form(request: Request) -> Response:
    web = state(request)
    if sessions.session_for(web.engine, request.cookies.get(SESSION_COOKIE)) is not None:
        return RedirectResponse(_safe_next(request, request.query_params.get("next")), status_code=303)
    if request.query_params.get("expired") == "1":
        return _login_page(request, EXPIRED)
    return _login_page(request)


@router.post("/login")
async def login(request: Request) -> Response:
    web = state(request)
    form = await request.form()
    name, password = str(form.get("name") or ""), str(form.get("password") or "")
    secret = request.cookies.get(LOGIN_COOKIE) or ""
    token = str(form.get("csrf") or "")
    if not same_origin(request) or len(secret) != 64 or not sessions.token_matches(secret, token):
        return _login_page(request, "The login form expired: please try again.", 403, name)
    address = client_address(request)
    if not web.login_limiter.allow(address):
        return _login_page(request, "Too many attempts from this address: wait a minute.", 429, name)
    try:
        user = await run_in_threadpool(accounts.authenticate, web.engine, name, password, address)
    except accounts.AccountError as error:
        return _login_page(request, str(error), 401, name)
    token, _ = await run_in_threadpool(sessions.open_session, web.engine, user)
    response = RedirectResponse(_safe_next(request, str(form.get("next") or "")), status_code=303)
    session_cookie(response, request, token)
    response.delete_cookie(LOGIN_COOKIE, path=base_path(request) or "/", httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request, reader: ReaderDep) -> Response:
    web = state(request)
    await run_in_threadpool(sessions.close_session, web.engine, reader.session.token_hash)
    await run_in_threadpool(record_audit, web.engine, reader.user.name, "logout")
    response = RedirectResponse(f"{base_path(request)}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=base_path(request) or "/", httponly=True, samesite="strict")
    return response


@router.get("/account")
def account_page(request: Request, reader: ReaderDep) -> Response:
    return page(request, "account.html", reader, message="", error="")


@router.post("/account/password")
async def change_password(request: Request, reader: ReaderDep) -> Response:
    web = state(request)
    form = await request.form()
    current, new, again = (str(form.get(key) or "") for key in ("current", "new", "again"))
    try:
        address = client_address(request)
        await run_in_threadpool(
            accounts.authenticate, web.engine, reader.user.name, current, address, "password_check"
        )
        if new != again:
            raise accounts.AccountError("The two new passwords differ.")
        await run_in_threadpool(
            accounts.set_password,
            web.engine,
            reader.user.id,
            new,
            reader.user.name,
            reader.session.token_hash,
        )
    except accounts.AccountError as error:
        return page(request, "account.html", reader, status=400, message="", error=str(error))
    return page(
        request, "account.html", reader, message="Password changed; your other sessions are closed.", error=""
    )
