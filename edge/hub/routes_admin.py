"""The administrators' page: accounts (create, role, programmes, disable, unlock, new password),
enrolment codes for new devices (made, listed, unused ones revoked), the devices (revoked: their
next request is refused) and the latest audit rows.

A generated password or enrolment code is shown once, in the response to the post that made
it (never in a URL, never stored in clear: the pages are `no-store`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from edge.hub import accounts, db, devices, presenters, worklist
from edge.hub.errors import HubError
from edge.hub.identities import ALL_PROGRAMMES, ROLES
from edge.hub.review_http import AdminDep, Reader, page, state

router = APIRouter()
AUDIT_ROWS = 50
MAX_CODE_TTL_HOURS = 24 * 30


def _device_page(request: Request) -> dict[str, Any]:
    """The page of devices asked for (`devices_q`: a name, site, programme or id; `devices_page`
    from 1), with how many match and the pages either side."""
    engine = state(request).engine
    search = str(request.query_params.get("devices_q") or "")[:100]
    try:
        number = max(1, int(request.query_params.get("devices_page") or 1))
    except ValueError:
        number = 1
    total = devices.count_devices(engine, search)
    last = max(1, -(-total // devices.DEVICES_PAGE))
    number = min(number, last)
    listed = devices.list_devices(engine, search, (number - 1) * devices.DEVICES_PAGE, devices.DEVICES_PAGE)
    return {
        "devices": listed,
        "devices_q": search,
        "devices_total": total,
        "devices_page": number,
        "devices_pages": last,
    }


def _overview(request: Request) -> dict[str, Any]:
    engine = state(request).engine
    with engine.connect() as conn:
        audit = [
            dict(row._mapping)
            for row in conn.execute(select(db.audit).order_by(db.audit.c.id.desc()).limit(AUDIT_ROWS))
        ]
    return {
        "users": accounts.list_users(engine),
        **_device_page(request),
        "codes": devices.list_codes(engine, unused_only=True),
        "audit": audit,
        "programmes": worklist.programmes(engine),
        "roles": ROLES,
        "when": presenters.when,
    }


def _admin_page(request: Request, reader: Reader, status: int = 200, **extra: Any) -> Response:
    context = {"message": "", "error": "", "secret": None, **extra}
    return page(request, "admin.html", reader, status=status, **_overview(request), **context)


@router.get("/admin")
def admin_page(request: Request, reader: AdminDep) -> Response:
    return _admin_page(request, reader)


@router.post("/admin/users")
async def create_user(request: Request, reader: AdminDep) -> Response:
    form = await request.form()
    name = str(form.get("name") or "")
    password = str(form.get("password") or "")
    generated = not password
    password = password or accounts.generate_password()
    try:
        user = await run_in_threadpool(
            accounts.create_user,
            state(request).engine,
            name,
            password,
            str(form.get("role") or "specialist"),
            accounts.parse_programmes(str(form.get("programmes") or "")),
            reader.user.name,
        )
    except accounts.AccountError as error:
        return await run_in_threadpool(_admin_page, request, reader, 400, error=str(error))
    secret = {"label": f"Password for {user.name}", "value": password} if generated else None
    return await run_in_threadpool(
        _admin_page, request, reader, message=f"Account {user.name} created.", secret=secret
    )


@router.post("/admin/users/{user_id}")
async def change_user(user_id: str, request: Request, reader: AdminDep) -> Response:
    engine = state(request).engine
    form = await request.form()
    action = str(form.get("action") or "")
    secret = None
    try:
        if action == "save":
            await run_in_threadpool(
                accounts.update_user,
                engine,
                user_id,
                reader.user.name,
                role=str(form.get("role") or ""),
                programmes=accounts.parse_programmes(str(form.get("programmes") or "")),
            )
        elif action in ("disable", "enable"):
            if action == "disable" and user_id == reader.user.id:
                raise accounts.AccountError("You cannot disable your own account.")
            await run_in_threadpool(
                accounts.update_user, engine, user_id, reader.user.name, disabled=action == "disable"
            )
        elif action == "unlock":
            await run_in_threadpool(accounts.unlock_user, engine, user_id, reader.user.name)
        elif action == "password":
            password = accounts.generate_password()
            own = reader.session.token_hash if user_id == reader.user.id else None  # stay logged in
            await run_in_threadpool(accounts.set_password, engine, user_id, password, reader.user.name, own)
            user = await run_in_threadpool(accounts.find_user, engine, user_id)
            secret = {"label": f"New password for {user.name if user else user_id}", "value": password}
        else:
            raise accounts.AccountError("Unknown action.")
    except accounts.AccountError as error:
        return await run_in_threadpool(_admin_page, request, reader, 400, error=str(error))
    return await run_in_threadpool(_admin_page, request, reader, message="Saved.", secret=secret)


@router.post("/admin/enroll-codes")
async def create_enroll_code(request: Request, reader: AdminDep) -> Response:
    form = await request.form()
    try:
        [programme] = accounts.parse_programmes(str(form.get("programme") or "default"))
        if programme == ALL_PROGRAMMES:
            raise accounts.AccountError("A device belongs to one programme.")
        hours = float(str(form.get("ttl_hours") or "72"))
        if not 0 < hours <= MAX_CODE_TTL_HOURS:
            raise accounts.AccountError(f"A code is valid for 1 to {MAX_CODE_TTL_HOURS} hours.")
    except ValueError:
        return await run_in_threadpool(
            _admin_page, request, reader, 400, error="Give one programme and a number of hours."
        )
    except accounts.AccountError as error:
        return await run_in_threadpool(_admin_page, request, reader, 400, error=str(error))
    code = await run_in_threadpool(
        devices.create_enroll_code, state(request).engine, programme, hours, reader.user.name
    )
    secret = {"label": f"Enrolment code for programme {programme} (valid {hours:g} h)", "value": code}
    return await run_in_threadpool(_admin_page, request, reader, message="Code created.", secret=secret)


@router.post("/admin/devices/{device_id}/revoke")
async def revoke_device(device_id: str, request: Request, reader: AdminDep) -> Response:
    """Revoke a device: audited, and its very next request is refused (`DEVICE_REVOKED`)."""
    return await _revoke(
        request,
        reader,
        lambda: devices.revoke_device(state(request).engine, device_id, reader.user.name),
        lambda device: f"Device {device.name} revoked: it must be enrolled again with a new code.",
    )


@router.post("/admin/enroll-codes/{code_id}/revoke")
async def revoke_enroll_code(code_id: str, request: Request, reader: AdminDep) -> Response:
    """Revoke an unused enrolment code (listed by its id: the page never shows a code again)."""
    return await _revoke(
        request,
        reader,
        lambda: devices.revoke_code(state(request).engine, code_id, reader.user.name),
        lambda revoked: f"Code {revoked} revoked.",
    )


async def _revoke(
    request: Request, reader: Reader, revoke: Callable[[], Any], said: Callable[[Any], str]
) -> Response:
    """Run one revocation off the event loop; the admin page again, with what was done or why not."""
    try:
        revoked = await run_in_threadpool(revoke)
    except HubError as error:
        return await run_in_threadpool(_admin_page, request, reader, error.status, error=error.message)
    return await run_in_threadpool(_admin_page, request, reader, message=said(revoked))
