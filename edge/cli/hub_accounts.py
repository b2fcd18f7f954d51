"""`edge hub user ...` and `edge hub fhir-token ...`: the review pages' accounts and the FHIR
API's bearer tokens (edge/hub/accounts.py). Every change is audited on the hub."""

from __future__ import annotations

import sys
from typing import Any

import click

from edge.cli.base import EXIT_REFUSED, Context, pass_context
from edge.cli.hub import echo_rows, hub


@hub.group("user")
def hub_user() -> None:
    """Accounts for the review pages: add, list, password, disable, enable, unlock."""


def _password(from_stdin: bool, name: str) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True))


@hub_user.command("add")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(["specialist", "administrator"]), default="specialist", show_default=True
)
@click.option(
    "--programme",
    "programmes",
    multiple=True,
    help="A programme whose results this reader sees (repeat for more; '*' for all). Default: default.",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@pass_context
def hub_user_add(
    obj: Context, name: str, role: str, programmes: tuple[str, ...], password_stdin: bool
) -> None:
    """Create an account (the first administrator is made this way)."""
    from edge.hub import accounts, db

    engine = db.make_engine(obj.settings.hub_database_url)
    try:
        user = accounts.create_user(
            engine, name, _password(password_stdin, name), role, programmes or ("default",), actor="cli"
        )
    except accounts.AccountError as error:
        click.echo(f"REFUSED: {error}", err=True)
        sys.exit(EXIT_REFUSED)
    click.echo(f"created {user.role} {user.name} (programmes: {', '.join(user.programmes)})")


@hub_user.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def hub_user_list(obj: Context, as_json: bool) -> None:
    """Every account, its role, programmes and state."""
    from edge.hub import accounts, db

    echo_rows(accounts.list_users(db.make_engine(obj.settings.hub_database_url)), as_json, _user_line)


def _user_line(user: dict[str, Any]) -> str:
    state = "disabled" if user["disabled"] else "locked" if user["locked"] else "active"
    return (
        f"{user['name']:<24} {user['role']:<14} {state:<9} {','.join(user['programmes'])}"
        f"  last login {user['last_login_at'] or 'never'}"
    )


@hub_user.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@pass_context
def hub_user_password(obj: Context, name: str, password_stdin: bool) -> None:
    """Set an account's password (and unlock it); its sessions end."""
    from edge.hub import accounts, db

    engine = db.make_engine(obj.settings.hub_database_url)
    user = accounts.find_user(engine, name)
    if user is None:
        click.echo(f"REFUSED: no account called {name}", err=True)
        sys.exit(EXIT_REFUSED)
    try:
        accounts.set_password(engine, user.id, _password(password_stdin, user.name), actor="cli")
    except accounts.AccountError as error:
        click.echo(f"REFUSED: {error}", err=True)
        sys.exit(EXIT_REFUSED)
    click.echo(f"password set for {user.name}")


@hub_user.command("disable")
@click.argument("name")
@pass_context
def hub_user_disable(obj: Context, name: str) -> None:
    """Stop an account from logging in; its sessions end at once."""
    _set_disabled(obj, name, True)


@hub_user.command("enable")
@click.argument("name")
@pass_context
def hub_user_enable(obj: Context, name: str) -> None:
    """Let a disabled account log in again."""
    _set_disabled(obj, name, False)


@hub_user.command("unlock")
@click.argument("name")
@pass_context
def hub_user_unlock(obj: Context, name: str) -> None:
    """Lift the login lock of an account (every address); audited."""
    from edge.hub import accounts, db

    try:
        user = accounts.unlock_user(db.make_engine(obj.settings.hub_database_url), name, actor="cli")
    except accounts.AccountError as error:
        click.echo(f"REFUSED: {error}", err=True)
        sys.exit(EXIT_REFUSED)
    click.echo(f"unlocked {user.name}")


def _set_disabled(obj: Context, name: str, disabled: bool) -> None:
    from edge.hub import accounts, db

    engine = db.make_engine(obj.settings.hub_database_url)
    user = accounts.find_user(engine, name)
    try:
        if user is None:
            raise accounts.AccountError(f"no account called {name}")
        accounts.update_user(engine, user.id, "cli", disabled=disabled)
    except accounts.AccountError as error:
        click.echo(f"REFUSED: {error}", err=True)
        sys.exit(EXIT_REFUSED)
    click.echo(f"{'disabled' if disabled else 'enabled'} {user.name}")


# ---------------------------------------------------------------------- FHIR clients


@hub.group("fhir-token")
def hub_fhir_token() -> None:
    """Bearer tokens for health information systems reading /fhir: create, list, revoke."""


@hub_fhir_token.command("create")
@click.argument("name")
@click.option(
    "--programme",
    "programmes",
    multiple=True,
    required=True,
    help="A programme whose results this client reads (repeat for more; '*' for all).",
)
@click.option("--site", "sites", multiple=True, help="Only this site of those programmes (repeat for more).")
@pass_context
def hub_fhir_token_create(
    obj: Context, name: str, programmes: tuple[str, ...], sites: tuple[str, ...]
) -> None:
    """Make a token for one client system; it is printed once, and the hub keeps only its hash."""
    from edge.hub import db, fhir_tokens
    from edge.hub.accounts import AccountError

    engine = db.make_engine(obj.settings.hub_database_url)
    try:
        token_id, token = fhir_tokens.create_token(engine, name, programmes, sites, actor="cli")
    except AccountError as error:
        click.echo(f"REFUSED: {error}", err=True)
        sys.exit(EXIT_REFUSED)
    click.echo(f"token {token_id} for {name} (shown once; send it as 'Authorization: Bearer ...'):", err=True)
    click.echo(token)


@hub_fhir_token.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def hub_fhir_token_list(obj: Context, as_json: bool) -> None:
    """Every token: client, scope, state and last use (never the token itself)."""
    from edge.hub import db, fhir_tokens

    echo_rows(fhir_tokens.list_tokens(db.make_engine(obj.settings.hub_database_url)), as_json, _token_line)


def _token_line(token: dict[str, Any]) -> str:
    state = f"revoked {token['revoked_at']}" if token["revoked"] else "active"
    scope = ",".join(token["programmes"]) + (f" sites {','.join(token['sites'])}" if token["sites"] else "")
    return f"{token['id']}  {token['name']:<20} {state:<10} {scope}  created {token['created_at']}"


@hub_fhir_token.command("revoke")
@click.argument("name_or_id")
@pass_context
def hub_fhir_token_revoke(obj: Context, name_or_id: str) -> None:
    """Revoke a client's active token (by its name or id); its next request is refused."""
    from edge.hub import db, fhir_tokens

    revoked = fhir_tokens.revoke_token(db.make_engine(obj.settings.hub_database_url), name_or_id, actor="cli")
    if not revoked:
        click.echo(f"REFUSED: no active token {name_or_id}", err=True)
        sys.exit(EXIT_REFUSED)
    click.echo(f"revoked {', '.join(revoked)}")
