"""The review pages' locks, on SQLite and on PostgreSQL: no page, image or post without a
session; a CSRF token on every post; programmes keep readers apart; wrong passwords lock an
account; logging out ends the session; only administrators administer. The data came from real
devices through the sync client (tests/hubfixtures.py: `world`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.routing import APIRoute
from sqlalchemy import select, update

from edge.cli import cli
from edge.config import load_settings
from edge.hub import accounts, db, routes_account, routes_admin, routes_review
from edge.hub.limits import RateLimiter
from tests.hubfixtures import (  # noqa: F401 - postgres_url and world are fixtures
    HTML,
    REVIEW_PASSWORD,
    World,
    browser,
    csrf,
    login,
    postgres_url,
    reader,
    review_count,
    web_app,
    world_fixture,
)


def routes(world: World) -> list[tuple[str, str]]:
    """Every (method, concrete path) of the review pages, path parameters filled in."""
    values = {
        "uuid": world.north.results[0],
        "user_id": world.users["north-reader"],
        "name": "review.css",
        "device_id": "no-such-device",  # revoking: a harmless post finds nothing to revoke
        "code_id": "no-such-code",
    }
    out = []
    for route in [*routes_account.router.routes, *routes_review.router.routes, *routes_admin.router.routes]:
        if isinstance(route, APIRoute):
            path = "/review" + re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], route.path)
            out += [(method, path) for method in sorted(route.methods)]
    return out


PUBLIC = {("GET", "/review/login"), ("POST", "/review/login"), ("GET", "/review/static/review.css")}


@pytest.mark.security
def test_no_page_image_or_post_works_without_a_session(world: World) -> None:
    client = browser(world)
    before = review_count(world)
    checked = 0
    for method, path in routes(world):
        if (method, path) in PUBLIC:
            continue
        checked += 1
        if method == "GET":
            page = client.get(path, headers=HTML, follow_redirects=False)
            assert page.status_code == 303, path
            assert page.headers["location"].startswith("/review/login"), path
            assert client.get(path, follow_redirects=False).status_code == 401, path  # images, scripts
        else:
            reply = client.post(path, data={"verdict": "agree", "name": "x", "password": "y" * 12})
            assert reply.status_code == 401, path
    assert checked >= 10
    assert review_count(world) == before
    with world.hub.engine.connect() as conn:
        assert conn.execute(select(db.users.c.id).where(db.users.c.name == "x")).first() is None
    # A cookie that was never issued is no session either.
    client.cookies.set("edge_session", "made-up-token", path="/review")
    assert client.get("/review/", headers=HTML, follow_redirects=False).status_code == 303


@pytest.mark.security
def test_every_form_post_needs_the_sessions_csrf_token(world: World) -> None:
    admin = reader(world, "admin")
    other_token = csrf(reader(world, "north-reader"))  # a real token, of another session
    token = csrf(admin)
    # One character changed in the middle, where every base64 character carries 6 whole bits.
    # (Changing the last two could decode to the same bytes: the last one's low bits are
    # padding, so the old `token[:-2] + "xx"` was the real token one run in 256.)
    tampered = token[:20] + ("B" if token[20] == "A" else "A") + token[21:]
    posts = [path for method, path in routes(world) if method == "POST" and (method, path) not in PUBLIC]
    assert len(posts) >= 6
    harmless = {
        "action": "no-such-action",
        "verdict": "maybe",
        "name": "",
        "current": "wrong",
        "ttl_hours": "0",
    }
    before = review_count(world)
    for path in posts:
        if path.endswith("/logout"):
            continue
        for forged in ({}, {"csrf": "AAAA"}, {"csrf": other_token}, {"csrf": tampered}):
            reply = admin.post(path, data={**harmless, **forged}, follow_redirects=False)
            assert reply.status_code == 403, (path, forged)
        cross_site = admin.post(
            path, data={**harmless, "csrf": token}, headers={"origin": "https://evil.example"}
        )
        assert cross_site.status_code == 403, path
        # The right token (a fresh mask of it, as each page carries) passes the check; the
        # harmless values are then refused by the form itself, not by the lock.
        passed = admin.post(path, data={**harmless, "csrf": csrf(admin)}, follow_redirects=False)
        assert passed.status_code in (400, 404), (path, passed.status_code)
        header = admin.post(
            path, data=harmless, headers={"X-CSRF-Token": csrf(admin)}, follow_redirects=False
        )
        assert header.status_code in (400, 404), path  # scripts send it as a header
    assert review_count(world) == before
    assert admin.post("/review/logout", follow_redirects=False).status_code == 403
    assert admin.get("/review/", headers=HTML, follow_redirects=False).status_code == 200  # still in
    # The login form has its own token, tied to a cookie of the browser that loaded it.
    fresh = browser(world)
    assert fresh.post("/review/login", data={"name": "admin", "password": REVIEW_PASSWORD}).status_code == 403
    page = fresh.get("/review/login")
    login_token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    stranger = browser(world)  # no login cookie: the token alone is not enough
    denied = stranger.post(
        "/review/login", data={"name": "admin", "password": REVIEW_PASSWORD, "csrf": login_token}
    )
    assert denied.status_code == 403


@pytest.mark.security
def test_a_reader_sees_only_the_programmes_they_read_for(world: World) -> None:
    north, south = world.north.results, world.south.results
    client = reader(world, "north-reader")
    listing = client.get("/review/").text
    assert all(uuid in listing for uuid in north)
    assert not any(uuid in listing for uuid in south)
    assert "south-xray" not in listing
    assert "south-clinic" not in listing
    before = review_count(world)
    for path in (
        f"/review/studies/{south[0]}",
        f"/review/studies/{south[0]}/image",
        f"/review/studies/{south[0]}/layer",
    ):
        assert client.get(path).status_code == 404, path
    token = csrf(client)
    assert (
        client.post(
            f"/review/studies/{south[0]}/review", data={"verdict": "agree", "csrf": token}
        ).status_code
        == 404
    )
    assert review_count(world) == before
    study = client.get(f"/review/studies/{north[0]}").text
    assert not any(uuid in study for uuid in south)  # next/previous stay in the programme
    assert client.get(f"/review/studies/{north[0]}/image?w=512").headers["content-type"] == "image/jpeg"
    # Filtering by the other programme's device shows nothing rather than its results.
    foreign = client.get(f"/review/?device={world.south.credential.device_id}").text
    assert not any(uuid in foreign for uuid in south)
    for name in ("admin", "both-reader"):
        everything = reader(world, name).get("/review/").text
        assert all(uuid in everything for uuid in north + south), name
    south_view = reader(world, "south-reader").get("/review/").text
    assert all(uuid in south_view for uuid in south)
    assert not any(uuid in south_view for uuid in north)


@pytest.mark.security
def test_wrong_passwords_lock_the_account_for_a_while(world: World) -> None:
    engine = world.hub.engine
    accounts.create_user(engine, "locky", REVIEW_PASSWORD, "specialist", ("north",))
    client = browser(world)
    assert login(client, "nobody-here", "whatever-password") == 401
    for _ in range(accounts.MAX_FAILURES):
        assert login(client, "locky", "not-the-password") == 401
    assert login(client, "locky") == 401  # locked: even the right password is refused
    with engine.connect() as conn:
        actions = [
            row.action
            for row in conn.execute(
                select(db.audit).where(db.audit.c.actor == "locky").order_by(db.audit.c.id)
            )
        ]
    assert actions.count("login.failed") == accounts.MAX_FAILURES
    assert "user.locked" in actions
    assert actions[-1] == "login.refused"
    with engine.begin() as conn:  # the lock runs out
        conn.execute(
            update(db.login_failures).where(db.login_failures.c.name == "locky").values(locked_until=1.0)
        )
    assert login(client, "locky") == 303
    with engine.connect() as conn:
        last = conn.execute(
            select(db.audit.c.action).where(db.audit.c.actor == "locky").order_by(db.audit.c.id.desc())
        ).first()
    assert last is not None
    assert last.action == "login.ok"


@pytest.mark.security
def test_an_administrator_unlocks_an_account_on_the_admin_page(world: World) -> None:
    engine = world.hub.engine
    user = accounts.create_user(engine, "locked-out", REVIEW_PASSWORD, "specialist", ("north",))
    client = browser(world)
    for _ in range(accounts.MAX_FAILURES):
        login(client, "locked-out", "not-the-password")
    assert login(client, "locked-out") == 401
    admin = reader(world, "admin")
    assert ">locked<" in admin.get("/review/admin", headers=HTML).text
    page = admin.post(f"/review/admin/users/{user.id}", data={"csrf": csrf(admin), "action": "unlock"})
    assert page.status_code == 200
    assert login(client, "locked-out") == 303
    with engine.connect() as conn:
        row = conn.execute(select(db.audit).where(db.audit.c.action == "user.unlocked")).all()[-1]
    assert (row.actor, row.detail["user"]) == ("admin", "locked-out")


@pytest.mark.security
def test_logging_in_is_rate_limited_per_address(world: World) -> None:
    state = web_app(world.hub).state.web
    generous = state.login_limiter
    state.login_limiter = RateLimiter(0.01, 3)
    try:
        client = browser(world)
        codes = [login(client, "north-reader", "wrong-password-here") for _ in range(5)]
    finally:
        state.login_limiter = generous
    assert codes[:3] == [401, 401, 401]
    assert codes[3:] == [429, 429]


@pytest.mark.security
def test_logging_out_ends_the_session_everywhere(world: World) -> None:
    client = reader(world, "north-reader")
    cookie = client.cookies.get("edge_session")
    assert cookie
    copy = browser(world)
    copy.cookies.set("edge_session", cookie, path="/review")
    assert copy.get("/review/", headers=HTML, follow_redirects=False).status_code == 200
    assert (
        client.post("/review/logout", data={"csrf": csrf(client)}, follow_redirects=False).status_code == 303
    )
    assert (
        copy.get("/review/", headers=HTML, follow_redirects=False).status_code == 303
    )  # a copied cookie too
    assert client.get("/review/", headers=HTML, follow_redirects=False).status_code == 303
    with world.hub.engine.connect() as conn:
        assert conn.execute(select(db.audit).where(db.audit.c.action == "logout")).first() is not None


@pytest.mark.security
def test_idle_and_old_sessions_expire(world: World) -> None:
    for column in ("last_seen_at", "expires_at"):
        client = reader(world, "north-reader")
        with world.hub.engine.begin() as conn:
            conn.execute(update(db.sessions).values(**{column: 1000.0}))
        assert client.get("/review/", headers=HTML, follow_redirects=False).status_code == 303, column


@pytest.mark.security
def test_only_administrators_administer(world: World) -> None:
    specialist = reader(world, "north-reader")
    assert specialist.get("/review/admin", headers=HTML).status_code == 403
    token = csrf(specialist)
    made = specialist.post(
        "/review/admin/users",
        data={"csrf": token, "name": "sneaky", "role": "administrator", "programmes": "*"},
    )
    assert made.status_code == 403
    assert (
        specialist.post("/review/admin/enroll-codes", data={"csrf": token, "programme": "north"}).status_code
        == 403
    )
    assert accounts.find_user(world.hub.engine, "sneaky") is None
    # The administrator makes an account; its generated password is shown once and works.
    admin = reader(world, "admin")
    page = admin.post(
        "/review/admin/users",
        data={
            "csrf": csrf(admin, "/review/admin"),
            "name": "new-reader",
            "role": "specialist",
            "programmes": "south",
        },
    )
    assert page.status_code == 200
    password = re.search(r'<code id="secret-value">([^<]+)</code>', page.text).group(1)  # type: ignore[union-attr]
    newcomer = browser(world)
    assert login(newcomer, "new-reader", password) == 303
    assert all(uuid in newcomer.get("/review/").text for uuid in world.south.results)
    # Disabling it ends its session at once.
    user_id = accounts.find_user(world.hub.engine, "new-reader").id  # type: ignore[union-attr]
    assert (
        admin.post(
            f"/review/admin/users/{user_id}", data={"csrf": csrf(admin), "action": "disable"}
        ).status_code
        == 200
    )
    assert newcomer.get("/review/", headers=HTML, follow_redirects=False).status_code == 303
    assert login(browser(world), "new-reader", password) == 401
    # An enrolment code made on the page enrols a device into its programme.
    coded = admin.post(
        "/review/admin/enroll-codes", data={"csrf": csrf(admin), "programme": "east", "ttl_hours": "2"}
    )
    code = re.search(r'<code id="secret-value">([^<]+)</code>', coded.text).group(1)  # type: ignore[union-attr]
    from edge.sync.credential import enroll

    device = load_settings(data_dir=world.north.settings.data_dir.parent / "east")
    credential = enroll(device, "http://testserver", code, "east-1", world.hub.client, insecure=True)
    with world.hub.engine.connect() as conn:
        programme = conn.execute(
            select(db.devices.c.programme).where(db.devices.c.id == credential.device_id)
        ).scalar()
    assert programme == "east"


@pytest.mark.security
def test_pages_carry_the_security_headers(world: World) -> None:
    client = reader(world, "north-reader")
    for path in (
        "/review/",
        f"/review/studies/{world.north.results[0]}",
        f"/review/studies/{world.north.results[0]}/image",
        "/review/login",
    ):
        headers = client.get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"], path
        assert "unsafe-inline" not in headers["content-security-policy"], path
        assert headers["x-frame-options"] == "DENY", path
        assert headers["cache-control"] == "no-store", path
        assert headers["x-content-type-options"] == "nosniff", path
    static = client.get("/review/static/review.js").headers
    assert "immutable" in static["cache-control"]
    cookie = reader(world, "north-reader").get("/review/")  # the session cookie's own flags
    login_reply = browser(world)
    page = login_reply.get("/review/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    reply = login_reply.post(
        "/review/login",
        data={"name": "north-reader", "password": REVIEW_PASSWORD, "csrf": token},
        follow_redirects=False,
    )
    set_cookie = reply.headers["set-cookie"].lower()
    assert "httponly" in set_cookie
    assert "samesite=strict" in set_cookie
    assert "path=/review" in set_cookie
    assert cookie.status_code == 200
    # No inline script anywhere: the CSP would block it, so the pages must not need it.
    for path in ("/review/", f"/review/studies/{world.north.results[0]}", "/review/login"):
        assert not re.search(r"<script(?![^>]*\bsrc=)", client.get(path).text), path
        assert " style=" not in client.get(path).text, path


def test_the_first_administrator_is_made_on_the_command_line(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "EDGE_HUB__DATABASE_URL",
        str(world.hub.engine.url.render_as_string(hide_password=False)).replace(
            "postgresql+psycopg://", "postgresql://"
        ),
    )
    run = CliRunner()
    made = run.invoke(
        cli,
        [
            "--data-dir",
            str(tmp_path),
            "hub",
            "user",
            "add",
            "Chief",
            "--role",
            "administrator",
            "--password-stdin",
        ],
        input="a long enough password\n",
    )
    assert made.exit_code == 0, made.output
    assert "created administrator chief" in made.output
    short = run.invoke(
        cli,
        ["--data-dir", str(tmp_path), "hub", "user", "add", "shorty", "--password-stdin"],
        input="short\n",
    )
    assert short.exit_code != 0
    assert "12 characters" in short.output
    client = browser(world)
    assert login(client, "chief", "a long enough password") == 303
    assert client.get("/review/admin", headers=HTML).status_code == 200
    listed = run.invoke(cli, ["--data-dir", str(tmp_path), "hub", "user", "list"])
    assert "chief" in listed.output
    assert "administrator" in listed.output
    assert run.invoke(cli, ["--data-dir", str(tmp_path), "hub", "user", "disable", "chief"]).exit_code == 0
    assert client.get("/review/", headers=HTML, follow_redirects=False).status_code == 303


@pytest.mark.security
def test_a_changed_right_takes_effect_at_once(world: World) -> None:
    accounts.create_user(world.hub.engine, "mover", REVIEW_PASSWORD, "specialist", ("north",))
    mover = reader(world, "mover")
    admin = reader(world, "admin")
    user_id = accounts.find_user(world.hub.engine, "mover").id  # type: ignore[union-attr]
    admin_id = world.users["admin"]
    same = {"csrf": csrf(admin), "action": "save", "role": "administrator", "programmes": "*"}
    assert admin.post(f"/review/admin/users/{admin_id}", data=same).status_code == 200
    assert admin.get("/review/admin", headers=HTML).status_code == 200  # saving no change: still in
    moved = {"csrf": csrf(admin), "action": "save", "role": "specialist", "programmes": "south"}
    assert admin.post(f"/review/admin/users/{user_id}", data=moved).status_code == 200
    assert mover.get("/review/", headers=HTML, follow_redirects=False).status_code == 303
    again = reader(world, "mover")
    listing = again.get("/review/").text
    assert all(uuid in listing for uuid in world.south.results)
    assert not any(uuid in listing for uuid in world.north.results)


def test_the_hub_keeps_one_active_administrator(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    first = accounts.create_user(engine, "first", REVIEW_PASSWORD, "administrator", ("*",))
    second = accounts.create_user(engine, "second", REVIEW_PASSWORD, "administrator", ("*",))
    accounts.update_user(engine, second.id, "first", disabled=True)
    with pytest.raises(accounts.AccountError, match="at least one active administrator"):
        accounts.update_user(engine, first.id, "first", role="specialist")
    with pytest.raises(accounts.AccountError, match="at least one active administrator"):
        accounts.update_user(engine, first.id, "first", disabled=True)
    assert accounts.find_user(engine, "first").role == "administrator"  # type: ignore[union-attr]
    accounts.update_user(engine, second.id, "first", disabled=False)
    accounts.update_user(engine, first.id, "second", role="specialist")  # now there is another
    with pytest.raises(accounts.AccountError, match="12 characters"):
        accounts.create_user(engine, "third", "short", "specialist", ("north",))
    with pytest.raises(accounts.AccountError, match="already an account"):
        accounts.create_user(engine, "First", REVIEW_PASSWORD, "specialist", ("north",))
    with pytest.raises(accounts.AccountError, match="not a programme"):
        accounts.create_user(engine, "fourth", REVIEW_PASSWORD, "specialist", ("no spaces",))
