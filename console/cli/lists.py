"""``smtpplus lists``: lists, their client settings and their members."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from console.cli import common
from console.cli.common import CliError, LazyGroup

lists = LazyGroup(
    name="lists",
    commands_spec={
        "stats": ("console.cli.list_stats:stats", "Accepted, refused, delivered, deferred, failed — today and total."),
        "unsubscribe": ("console.cli.bulk:lists_unsubscribe", "Show or set the List-Unsubscribe targets of the list's campaigns."),
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
    """Outside text for a Rich table: terminal controls escaped, then markup."""
    from rich.markup import escape

    from relay.display import clean

    return escape(clean(value))


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


@lists.command("show")
@click.argument("name")
@common.json_option
@common.db_option
def show(name: str, as_json: bool, db_path: Path | None) -> None:
    """A list's client settings (server, ports, encryption, certificate), its users,
    and a block to paste into common mail clients."""
    from relay.admin.settings import gather_client_settings
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
    for n, line in enumerate(settings.relays, 1):
        grid.add_row(f"Relay {n}", _markup_safe(line))
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
    for line in settings.block.splitlines():  # cleaned a line at a time: its newlines are its own
        console.print(_markup_safe(line))


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
    from relay.admin.members import import_members_file

    with common.open_db(db_path) as db:
        result = import_members_file(db, name, file)
    added, already, repeated = result.added, result.already, result.repeated
    if as_json:
        common.print_json(
            {"list": result.list_name, "added": added, "already": already, "repeated_in_file": repeated}
        )
        return
    message = f"List {result.list_name!r}: {added} added, {already} already there"
    if repeated:
        message += f", {repeated} repeated row(s) in the file skipped"
    click.echo(message + ".")


@members.command("ls")
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many members (default: all).")
@click.option("--after", default="", metavar="ADDRESS", help="Start after this address (the last one of the previous page).")
@click.option("--csv", "as_csv", is_flag=True,
              help="Write CSV (address,name) that `members import` reads back; cells that a spreadsheet "
                   "would run as a formula get a leading apostrophe.")
@common.json_option
@common.db_option
def members_ls(name: str, limit: int | None, after: str, as_csv: bool, as_json: bool, db_path: Path | None) -> None:
    """A list's members in address order, streamed page by page (constant memory on
    any list size); page with --limit and --after LAST-ADDRESS."""
    import json
    import sys

    from relay.display import clean
    from relay.members_csv import write_members_csv
    from relay.store import directory

    if as_csv and as_json:
        raise CliError("--csv and --json are two formats — choose one")
    with common.open_db(db_path, create=False) as db:
        info = directory.get_list(db, name)
        if as_csv:
            write_members_csv(_member_pages(db, info.name, after, limit), sys.stdout)
            return
        if not info.members and not as_json:
            click.echo(f"List {info.name!r} has no members — add some with: smtpplus lists members import {_shell_word(info.name)} FILE.csv")
            return
        if not as_json:
            shown = f"{info.members:,} member(s)" if not limit and not after else f"{info.members:,} member(s) in all"
            click.echo(clean(f"List {info.name}: {shown}"))
        written = 0
        last = after
        out = sys.stdout  # buffered writes: click.echo flushes every line
        for address, member_name in _member_pages(db, info.name, after, limit):
            if as_json:
                # The same text print_json writes for the whole array, item by item.
                item = json.dumps({"address": address, "name": member_name}, indent=2)
                out.write(("[\n" if not written else ",\n") + "  " + item.replace("\n", "\n  "))
            else:
                out.write(f"{clean(address):<40}  {clean(member_name)}".rstrip() + "\n")
            written += 1
            last = address
        if as_json:
            click.echo("\n]" if written else "[]")
        elif limit and written == limit:
            click.echo(f"next page: smtpplus lists members ls {_shell_word(info.name)} --limit {limit} --after {_shell_word(last)}")


def _member_pages(db: Any, list_name: str, after: str, limit: int | None) -> Any:
    """Members one page at a time: only a page is ever in memory."""
    from relay.store import directory

    left = limit
    while left is None or left > 0:
        page = directory.list_members(db, list_name, after=after, limit=1000 if left is None else min(left, 1000))
        if not page:
            return
        yield from page
        after = page[-1][0]
        if left is not None:
            left -= len(page)
