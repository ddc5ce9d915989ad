"""``kvmgr user``: users and roles of the REST API and web UI (stored in KVMGR_DB_URL)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from kvmgr.cli.common import report_errors
from kvmgr.cli.output import OutputFormat, OutputOption, emit_object, emit_rows

if TYPE_CHECKING:  # SQLAlchemy takes ~0.4 s to import: only 'kvmgr user' commands pay for it
    from kvmgr.store.db import Store

app = typer.Typer(no_args_is_help=True, add_completion=False)  # completion is kvmgr's own

RoleOption = typer.Option("--role", "-r", help="admin, operator or viewer")
PasswordOption = typer.Option(
    "--password",
    "-p",
    envvar="KVMGR_PASSWORD",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="asked for when not given (or from $KVMGR_PASSWORD)",
)


def _store() -> Store:
    from kvmgr.api.settings import Settings
    from kvmgr.store.db import Store

    return Store(Settings().database_url)


@app.command("create")
@report_errors
def create(
    name: str,
    role: Annotated[str, RoleOption] = "viewer",
    group: Annotated[str | None, typer.Option(help="owner group for shared VMs")] = None,
    password: Annotated[str, PasswordOption] = "",
    output: OutputFormat = OutputOption,
) -> None:
    """Create a user."""
    from kvmgr.store import users

    with _store().session() as session:
        who = users.create_user(session, name, password, users.parse_role(role), group)
    emit_object({"name": who.name, "role": who.role.value, "group": who.group}, output)


@app.command("list")
@report_errors
def list_users(output: OutputFormat = OutputOption) -> None:
    """List users."""
    from kvmgr.store import users

    with _store().session() as session:
        rows = [
            {"name": u.name, "role": u.role, "group": u.group, "created": u.created.isoformat()}
            for u in users.list_users(session)
        ]
    emit_rows(rows, output, ["name", "role", "group", "created"])


@app.command("delete")
@report_errors
def delete(name: str) -> None:
    """Delete a user and their logins; what they own stays theirs (only admins act on it)."""
    from kvmgr.store import users

    with _store().session() as session:
        users.delete_user(session, name)
    typer.echo(f"user {name} deleted")


@app.command("set")
@report_errors
def set_user(
    name: str,
    role: Annotated[
        str | None, typer.Option("--role", "-r", help="admin, operator or viewer")
    ] = None,
    group: Annotated[str | None, typer.Option(help="owner group ('' or --no-group: none)")] = None,
    no_group: Annotated[
        bool, typer.Option("--no-group", help="take the user out of their group")
    ] = False,
) -> None:
    """Change a user's role and/or group.  A new role ends their API tokens and web sessions."""
    from kvmgr.store import users

    if no_group and group:
        raise typer.BadParameter("give --group NAME or --no-group, not both")
    if role is None and group is None and not no_group:
        raise typer.BadParameter("give --role, --group or --no-group")
    with _store().session() as session:
        if role is not None:
            users.set_role(session, name, users.parse_role(role))
        if no_group or group is not None:
            users.set_group(session, name, group or None)
        user = users.get_user(session, name)
        typer.echo(f"user {name}: role {user.role}, group {user.group or '(none)'}")


@app.command("set-role")
@report_errors
def set_role(
    name: str,
    role: Annotated[str, typer.Argument(help="admin, operator or viewer")],
    group: Annotated[str | None, typer.Option(help="owner group ('' for none)")] = None,
) -> None:
    """Change a user's role (and group); the same as 'kvmgr user set NAME --role ROLE'."""
    from kvmgr.store import users

    with _store().session() as session:
        users.set_role(session, name, users.parse_role(role))
        if group is not None:
            users.set_group(session, name, group or None)
    typer.echo(f"user {name} is now {role}")


@app.command("passwd")
@report_errors
def passwd(name: str, password: Annotated[str, PasswordOption] = "") -> None:
    """Set a user's password (ends their API tokens and web sessions)."""
    from kvmgr.store import users

    with _store().session() as session:
        users.set_password(session, name, password)
    typer.echo(f"password of {name} changed")


@app.command("token")
@report_errors
def token(name: str, token_name: Annotated[str, typer.Argument()] = "cli") -> None:  # noqa: S107
    """Create an API token for a user; it is printed once."""
    from kvmgr.store import users

    with _store().session() as session:
        value = users.create_token(session, name, token_name)
    typer.echo(value)
