"""``smtpgate admin``: the console and API accounts in ``state_dir/admins.json``.

Each change is also recorded in ``state_dir/audit.jsonl`` (who: the
operating-system user who ran the command, ``cli:<login>``, as
versions name it). Passwords are read from the
terminal (twice, hidden) or, with ``--password-stdin``, from the first line
of standard input; tokens are printed once and stored only as a digest.
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from smtpgate.commands.common import ConfigOption, command_user, load
from smtpgate.console.admins import AdminError, AdminStore, Role, check_password
from smtpgate.console.audit import AuditLog

admin_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Console and API users and tokens."
)

PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]
RoleOption = Annotated[
    Role, typer.Option("--role", help="admin: may change; auditor: may only read.")
]


def _state_dir(config: Path | None) -> Path:
    return load(config).gateway.state_dir


def _fail(exc: AdminError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            raise _fail(AdminError("the passwords differ"))
    try:
        return check_password(password)
    except AdminError as exc:
        raise _fail(exc) from exc


def _audit(state_dir: Path, action: str, target: str, **details: str) -> None:
    AuditLog(state_dir).record(
        who=command_user(),
        via="command",
        address="local",
        action=action,
        target=target,
        **details,
    )


@admin_app.command("add")
def add(
    name: str,
    role: RoleOption = Role.ADMIN,
    password_stdin: PasswordStdin = False,
    config: ConfigOption = None,
) -> None:
    """Add a user who logs in with a password."""
    state_dir = _state_dir(config)
    password = _password(password_stdin)
    try:
        account = AdminStore(state_dir).add_user(name, password, role)
    except AdminError as exc:
        raise _fail(exc) from exc
    _audit(state_dir, "admin.add", account.principal, role=str(role))
    typer.echo(f"added user {name} ({role})")


@admin_app.command("passwd")
def passwd(name: str, password_stdin: PasswordStdin = False, config: ConfigOption = None) -> None:
    """Set a user's password."""
    state_dir = _state_dir(config)
    password = _password(password_stdin)
    try:
        account = AdminStore(state_dir).set_password(name, password)
    except AdminError as exc:
        raise _fail(exc) from exc
    _audit(state_dir, "admin.passwd", account.principal)
    typer.echo(f"changed the password of {name}")


@admin_app.command("remove")
def remove(
    name: str,
    token: Annotated[bool, typer.Option("--token", help="Remove the API token NAME.")] = False,
    config: ConfigOption = None,
) -> None:
    """Remove a user (or, with --token, an API token)."""
    state_dir = _state_dir(config)
    kind = "token" if token else "user"
    try:
        account = AdminStore(state_dir).remove(name, kind)
    except AdminError as exc:
        raise _fail(exc) from exc
    _audit(state_dir, "admin.remove", account.principal)
    typer.echo(f"removed {kind} {name}")


@admin_app.command("token")
def token(name: str, role: RoleOption = Role.ADMIN, config: ConfigOption = None) -> None:
    """Create an API token NAME and print it once (send it as Authorization: Bearer)."""
    state_dir = _state_dir(config)
    try:
        account, secret = AdminStore(state_dir).add_token(name, role)
    except AdminError as exc:
        raise _fail(exc) from exc
    _audit(state_dir, "admin.token", account.principal, role=str(role))
    typer.echo(f"token {name} ({role}); shown only now, stored hashed:", err=True)
    typer.echo(secret)


@admin_app.command("list")
def list_accounts(
    config: ConfigOption = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Users and tokens with their roles."""
    try:
        accounts = AdminStore(_state_dir(config)).accounts()
    except AdminError as exc:
        raise _fail(exc) from exc
    rows = [a.public() for a in accounts]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'NAME':<24} {'KIND':<6} {'ROLE':<8} CREATED")
    for row in rows:
        typer.echo(f"{row['name']:<24} {row['kind']:<6} {row['role']:<8} {row['created']}")
