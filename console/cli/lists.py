"""``smtpplus lists``: lists, their client settings and their members."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import click

from console.cli import common
from console.cli.common import CliError, LazyGroup

lists = LazyGroup(
    name="lists",
    commands_spec={
        "stats": ("console.cli.list_stats:stats", "Accepted, refused, delivered, deferred, failed — today and total."),
    },
    help="Lists: client settings, members, statistics.",
)

members = LazyGroup(name="members", help="A list's members: the recipients of its campaigns.")
lists.add_command(members)


def list_json(info: Any) -> dict[str, Any]:
    """The public fields of a list (``relay.store.directory.ListInfo``)."""
    return {
        "name": info.name,
        "description": info.description,
        "users": info.users,
        "members": info.members,
        "created_at": info.created_at,
    }


def _markup_safe(value: object) -> str:
    from rich.markup import escape

    return escape(str(value))


# ---------------------------------------------------------------------------
# add / ls / edit / rm


@lists.command("add")
@click.argument("name")
@click.option("--description", default="", help="What the list is for (shown in listings).")
@common.json_option
@common.db_option
def add(name: str, description: str, as_json: bool, db_path: Path | None) -> None:
    """Create a list NAME. Relay users and members belong to a list."""
    from relay.store import directory

    with common.open_db(db_path) as db:
        info = directory.create_list(db, name, description)
    if as_json:
        common.print_json(list_json(info))
        return
    click.echo(f"Created list {info.name!r}.")
    click.echo(f"Next: smtpplus users add --list {_shell_word(info.name)}   (client settings: smtpplus lists show {_shell_word(info.name)})")


@lists.command("ls")
@common.json_option
@common.db_option
def ls(as_json: bool, db_path: Path | None) -> None:
    """All lists with their number of users and members."""
    from relay.store import directory

    with common.open_db(db_path, create=False) as db:
        infos = directory.all_lists(db)
    if as_json:
        common.print_json([list_json(i) for i in infos])
        return
    if not infos:
        click.echo("No lists yet — create one with: smtpplus lists add NAME")
        return
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD)
    for column in ("List", "Description", "Users", "Members", "Created"):
        table.add_column(column, justify="right" if column in ("Users", "Members") else "left")
    for i in infos:
        table.add_row(
            _markup_safe(i.name), _markup_safe(i.description), str(i.users), str(i.members), common.fmt_time(i.created_at)
        )
    common.stdout_console().print(table)


@lists.command("edit")
@click.argument("name")
@click.option("--description", default=None, help="New description.")
@click.option("--rename", "new_name", default=None, metavar="NEW", help="New name for the list.")
@common.json_option
@common.db_option
def edit(name: str, description: str | None, new_name: str | None, as_json: bool, db_path: Path | None) -> None:
    """Change a list's description or name."""
    from relay.store import directory

    if description is None and new_name is None:
        raise CliError("nothing to change — pass --description TEXT and/or --rename NEW")
    if new_name is not None and not new_name.strip():
        raise CliError("--rename needs a non-empty name")
    with common.open_db(db_path) as db:
        info = directory.edit_list(db, name, description=description, new_name=new_name)
    if as_json:
        common.print_json(list_json(info))
        return
    click.echo(f"Updated list {info.name!r}" + (f" (was {name!r})" if info.name != name else "") + ".")


@lists.command("rm")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed when not on a terminal).")
@common.json_option
@common.db_option
def rm(name: str, yes: bool, as_json: bool, db_path: Path | None) -> None:
    """Delete a list with its relay users and members. Mail already queued is still delivered."""
    from relay.store import directory

    with common.open_db(db_path) as db:
        info = directory.get_list(db, name)
        common.confirm_or_require_yes(
            f"delete list {info.name!r} with its {info.users} relay user(s) and {info.members} member(s)", yes
        )
        directory.delete_list(db, info.name)
    if as_json:
        common.print_json({"deleted": info.name, "users": info.users, "members": info.members})
        return
    click.echo(f"Deleted list {info.name!r}. Mail already queued from it is still delivered.")


# ---------------------------------------------------------------------------
# show: the client settings


def gather_client_settings(db: sqlite3.Connection, username: str | None = None) -> Any:
    """Read what the relay published and assemble :class:`relay.client_settings.ClientSettings`."""
    import socket

    from relay.client_settings import client_settings
    from relay.store.relay_info import served_ports
    from relay.store.settings import Keys, get_settings

    values = get_settings(db, [Keys.SERVER_NAME, Keys.ALLOW_PLAIN_AUTH, Keys.TLS_FINGERPRINT])
    served, not_served = served_ports(db)
    return client_settings(
        # No relay has published a name yet: the name it would publish by default. Never
        # getfqdn here: the console reads this on its store thread, and that may ask DNS.
        server_name=values.get(Keys.SERVER_NAME) or socket.gethostname(),
        served=served,
        not_served=not_served,
        allow_plain_auth=bool(values.get(Keys.ALLOW_PLAIN_AUTH, False)),
        fingerprint=values.get(Keys.TLS_FINGERPRINT),
        username=username,
    )


@lists.command("show")
@click.argument("name")
@common.json_option
@common.db_option
def show(name: str, as_json: bool, db_path: Path | None) -> None:
    """A list's client settings (server, ports, encryption, certificate), its users,
    and a block to paste into common mail clients."""
    from relay.store import directory

    with common.open_db(db_path, create=False) as db:
        info = directory.get_list(db, name)
        users = directory.all_users(db, info.name)
        # With exactly one user the paste block can name it; otherwise a placeholder.
        settings = gather_client_settings(db, users[0].username if len(users) == 1 else None)
    if as_json:
        from console.cli.users import user_json

        common.print_json({**list_json(info), "client_settings": settings, "relay_users": [user_json(u) for u in users]})
        return
    _print_list(info, settings, users)


def _print_list(info: Any, settings: Any, users: list[Any]) -> None:
    from rich import box
    from rich.table import Table

    from console.cli.users import identities_summary
    from relay.ports import format_port_spec

    console = common.stdout_console()
    title = f"List {info.name}" + (f" — {info.description}" if info.description else "")
    console.print(_markup_safe(title), style="bold")
    console.print(f"{info.users} relay user(s), {info.members} member(s), created {common.fmt_time(info.created_at)}")
    console.print()

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Server name", _markup_safe(settings.server_name))
    grid.add_row("Ports", _markup_safe(settings.ports_text))
    by_reason: dict[str, list[int]] = {}
    for port, reason in settings.not_served.items():
        by_reason.setdefault(reason, []).append(port)
    for reason, ports in sorted(by_reason.items()):
        grid.add_row("Not served", _markup_safe(f"{format_port_spec(ports)}: {reason}"))
    grid.add_row("Encryption", _markup_safe(settings.encryption))
    grid.add_row("Certificate", _markup_safe(settings.fingerprint_text))
    console.print("Client settings", style="bold underline")
    console.print(grid)
    console.print()

    console.print("Relay users", style="bold underline")
    if users:
        table = Table(box=box.SIMPLE_HEAD)
        for column in ("User", "Active", "Priority", "Identities"):
            table.add_column(column)
        for u in users:
            table.add_row(
                _markup_safe(u.username), "yes" if u.active else "no", str(u.priority), _markup_safe(identities_summary(u))
            )
        console.print(table)
    else:
        console.print(f"none yet — add one with: smtpplus users add --list {_markup_safe(_shell_word(info.name))}")
    console.print()
    console.print("Paste into your mail client", style="bold underline")
    console.print(_markup_safe(settings.block))


def _shell_word(text: str) -> str:
    import shlex

    return shlex.quote(text)


# ---------------------------------------------------------------------------
# members


@members.command("import")
@click.argument("name")
@click.argument("file", metavar="FILE.csv", type=click.Path(dir_okay=False, path_type=Path))
@common.json_option
@common.db_option
def members_import(name: str, file: Path, as_json: bool, db_path: Path | None) -> None:
    """Add members from FILE.csv: a header `address[,name]`, or one address per line.

    Addresses already on the list are left as they are. One bad row refuses the
    whole file (its line is named), so nothing is half-imported.
    """
    from relay.members_csv import parse_members
    from relay.policy import PolicyError
    from relay.store import directory

    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise CliError(f"{file} is not UTF-8 text — save it as UTF-8 CSV") from None
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        parsed = parse_members(text)
    except PolicyError as exc:
        raise CliError(f"{file} {exc}") from None
    if not parsed.rows:
        raise CliError(f"{file} has no addresses — one address per line, or a header `address,name`")
    with common.open_db(db_path) as db:
        info = directory.get_list(db, name)
        added, already = directory.import_members(db, info.name, parsed.rows)
    if as_json:
        common.print_json(
            {"list": info.name, "added": added, "already": already, "repeated_in_file": parsed.duplicates}
        )
        return
    message = f"List {info.name!r}: {added} added, {already} already there"
    if parsed.duplicates:
        message += f", {parsed.duplicates} repeated row(s) in the file skipped"
    click.echo(message + ".")


@members.command("ls")
@click.argument("name")
@common.json_option
@common.db_option
def members_ls(name: str, as_json: bool, db_path: Path | None) -> None:
    """A list's members in address order."""
    from relay.store import directory

    rows: list[tuple[str, str]] = []
    with common.open_db(db_path, create=False) as db:
        info = directory.get_list(db, name)
        while True:
            page = directory.list_members(db, info.name, after=rows[-1][0] if rows else "")
            if not page:
                break
            rows.extend(page)
    if as_json:
        common.print_json([{"address": a, "name": n} for a, n in rows])
        return
    if not rows:
        click.echo(f"List {info.name!r} has no members — add some with: smtpplus lists members import {_shell_word(info.name)} FILE.csv")
        return
    from rich import box
    from rich.table import Table

    console = common.stdout_console()
    console.print(_markup_safe(f"List {info.name}: {len(rows)} member(s)"))
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("Address")
    table.add_column("Name")
    for address, member_name in rows:
        table.add_row(_markup_safe(address), _markup_safe(member_name))
    console.print(table)
