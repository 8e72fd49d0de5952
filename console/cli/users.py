"""``smtpplus users``: relay users — add, edit, activate, reset passwords.

A password is generated, printed once (on ``add`` and ``reset-password``) and stored
only as an argon2id hash; nothing here ever prints a hash or an older password.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from console.cli import common
from console.cli.common import CliError, LazyGroup

users = LazyGroup(name="users", help="Relay users: add, edit, activate, reset passwords.")


# ---------------------------------------------------------------------------
# Presentation helpers (also used by `lists show`)


def display_identity(value: str) -> str:
    """``xn--bcher-kva.example`` → ``xn--bcher-kva.example (bücher.example)``."""
    local, at, domain = value.rpartition("@")
    if "xn--" not in domain:
        return value
    import idna

    try:
        readable = idna.decode(domain)
    except (idna.IDNAError, UnicodeError):
        return value
    return f"{value} ({local}{at}{readable})"


def identity_json(identity: Any) -> dict[str, Any]:
    return {
        "identity": identity.value,
        "kind": identity.kind,
        "state": identity.state,
        "method": identity.method,
        "verified_at": identity.verified_at,
        "reason": identity.reason,
    }


def user_json(user: Any) -> dict[str, Any]:
    """The public fields of a relay user (``UserInfo`` never holds the hash)."""
    from relay.priority import NAMES

    return {
        "username": user.username,
        "list": user.list_name,
        "active": user.active,
        "priority": user.priority,
        "priority_name": NAMES[user.priority],
        "note": user.note,
        "domains": user.domains,
        "senders": user.senders,
        "identities": [identity_json(i) for i in user.identities],
        "needs_activation": user.needs_activation,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    }


def identities_summary(user: Any) -> str:
    """``a.com ✓, x@a.com (pending)`` — short enough for a table cell."""
    if not user.identities:
        return "none"
    return ", ".join(i.value if i.verified else f"{i.value} (pending)" for i in user.identities)


def nudges(user: Any) -> list[str]:
    """The help page's warnings that apply to this user now (:func:`relay.admin.users.nudges`)."""
    from relay.admin.users import nudges as user_nudges

    return [nudge.text for nudge in user_nudges(user)]


def _say(lines: list[str], *, to_stderr: bool) -> None:
    for line in lines:
        click.echo(f"note: {line}", err=to_stderr)


def _markup_safe(value: object) -> str:
    """Outside text for a Rich table: terminal controls escaped, then markup."""
    from rich.markup import escape

    from relay.display import clean

    return escape(clean(value))


def _print_password(username: str, password: str, *, first: bool) -> None:
    click.echo("")
    click.echo(f"  Username: {username}")
    click.echo(f"  Password: {password}")
    click.echo("")
    what = "shown only this once" if first else "the old one no longer works; this one is shown only once"
    click.echo(
        f"Save the password now — {what}. Lost it? smtpplus users reset-password {username}"
    )


# ---------------------------------------------------------------------------
# Parsing operator input (errors are PolicyError/PriorityError: one line, exit 1)


def _parse_fields(
    priority: str | None, domains: str | None, senders: str | None, note: str | None
) -> tuple[int | None, list[str] | None, list[str] | None, str | None]:
    from relay import policy
    from relay.priority import validate_priority

    return (
        None if priority is None else validate_priority(priority),
        None if domains is None else _named(policy.parse_domains, domains, "--domains"),
        None if senders is None else _named(policy.parse_senders, senders, "--senders"),
        None if note is None else policy.validate_note(note),
    )


def _named(parse: Any, text: str, option: str) -> list[str]:
    from relay.policy import PolicyError

    try:
        return list(parse(text))
    except PolicyError as exc:
        raise CliError(f"{option}: {exc}") from None


def _priority_option(f: Any) -> Any:
    return click.option(
        "--priority", default=None, metavar="N", help="1 very high, 2 high, 3 normal (default), 4 low, 5 very low."
    )(f)


def _identity_options(f: Any) -> Any:
    f = click.option(
        "--senders", default=None, metavar='"x@a.com;y@b.com"', help="Authorized sender addresses, separated by ';'."
    )(f)
    return click.option(
        "--domains", default=None, metavar='"a.com;b.com"', help="Authorized domains, separated by ';' (a domain covers only itself)."
    )(f)


# ---------------------------------------------------------------------------
# Commands


@users.command("add")
@click.option("--list", "list_name", required=True, metavar="NAME", help="The list the user belongs to.")
@click.option("--username", default=None, metavar="U", help="Login name (default: <list-slug>-<n>).")
@_priority_option
@_identity_options
@click.option("--note", default=None, metavar="T", help="A short note for operators.")
@click.option("--active", is_flag=True, help="Activate at once (new users start inactive).")
@common.json_option
@common.db_option
def add(
    list_name: str,
    username: str | None,
    priority: str | None,
    domains: str | None,
    senders: str | None,
    note: str | None,
    active: bool,
    as_json: bool,
    db_path: Path | None,
) -> None:
    """Add a relay user to a list and print its generated password — once."""
    from relay.admin import users as user_admin

    checked_priority, domain_list, sender_list, checked_note = _parse_fields(priority, domains, senders, note)
    with common.open_db(db_path) as db:
        made = user_admin.create_user(
            db,
            list_name=list_name,
            username=username,
            priority=checked_priority or 3,
            note=checked_note or "",
            domains=domain_list or [],
            senders=sender_list or [],
            active=active,
        )
    user, password = made.user, made.password
    if as_json:
        common.print_json({"username": user.username, "password": password})
    else:
        state = "active" if user.active else "inactive"
        click.echo(f"Created relay user {user.username} on list {user.list_name!r} ({state}).")
        _print_password(user.username, password, first=True)
    _say(nudges(user), to_stderr=as_json)


@users.command("ls")
@click.option("--list", "list_name", default=None, metavar="NAME", help="Only users of this list.")
@common.json_option
@common.db_option
def ls(list_name: str | None, as_json: bool, db_path: Path | None) -> None:
    """Relay users with their state, priority and identities."""
    from relay.store import directory

    with common.open_db(db_path, create=False) as db:
        found = directory.all_users(db, list_name)
    if as_json:
        common.print_json([user_json(u) for u in found])
        return
    if not found:
        click.echo("No relay users yet — add one with: smtpplus users add --list NAME")
        return
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD)
    for column in ("User", "List", "Active", "Priority", "Identities", "Note"):
        table.add_column(column)
    for u in found:
        table.add_row(
            _markup_safe(u.username),
            _markup_safe(u.list_name),
            "yes" if u.active else ("no — activate!" if u.needs_activation else "no"),
            str(u.priority),
            _markup_safe(identities_summary(u)),
            _markup_safe(u.note),
        )
    common.stdout_console().print(table)


@users.command("show")
@click.argument("username")
@common.json_option
@common.db_option
def show(username: str, as_json: bool, db_path: Path | None) -> None:
    """One relay user: settings, identities and their verification state (never a secret)."""
    from relay.store import directory

    with common.open_db(db_path, create=False) as db:
        user = directory.get_user(db, username)
    if as_json:
        common.print_json(user_json(user))
        return
    _print_user(user)


def _print_user(user: Any) -> None:
    from rich import box
    from rich.table import Table

    from relay.priority import NAMES

    console = common.stdout_console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("User", _markup_safe(user.username))
    grid.add_row("List", _markup_safe(user.list_name))
    grid.add_row("Active", "yes" if user.active else "no")
    grid.add_row("Priority", f"{user.priority} ({NAMES[user.priority]})")
    grid.add_row("Note", _markup_safe(user.note or "-"))
    grid.add_row("Created", common.fmt_time(user.created_at))
    grid.add_row("Updated", common.fmt_time(user.updated_at))
    console.print(grid)
    console.print()
    if user.identities:
        console.print("Authorized domains and senders", style="bold")
        table = Table(box=box.SIMPLE_HEAD)
        for column in ("Kind", "Identity", "State", "Verified by"):
            table.add_column(column)
        for i in user.identities:
            verified_by = "-"
            if i.verified:
                verified_by = f"{i.method} {common.fmt_time(i.verified_at)}" + (f" ({i.reason})" if i.reason else "")
            table.add_row(i.kind, _markup_safe(display_identity(i.value)), i.state, _markup_safe(verified_by))
        console.print(table)
    else:
        console.print("Authorized domains and senders: none")
    _say(nudges(user), to_stderr=False)


@users.command("edit")
@click.argument("username")
@_priority_option
@_identity_options
@click.option("--note", default=None, metavar="T", help="A short note for operators ('' clears it).")
@common.json_option
@common.db_option
def edit(
    username: str, priority: str | None, domains: str | None, senders: str | None, note: str | None, as_json: bool,
    db_path: Path | None,
) -> None:
    """Change a user's priority, note, authorized domains or senders (each list replaces the old one)."""
    from relay.store import directory

    if priority is None and domains is None and senders is None and note is None:
        raise CliError("nothing to change — pass --priority, --domains, --senders or --note")
    checked_priority, domain_list, sender_list, checked_note = _parse_fields(priority, domains, senders, note)
    with common.open_db(db_path) as db:
        user = directory.edit_user(
            db, username, priority=checked_priority, note=checked_note, domains=domain_list, senders=sender_list
        )
    if as_json:
        common.print_json(user_json(user))
        return
    click.echo(f"Updated relay user {user.username}.")
    _say(nudges(user), to_stderr=False)


@users.command("activate")
@click.argument("username")
@common.json_option
@common.db_option
def activate(username: str, as_json: bool, db_path: Path | None) -> None:
    """Let the user log in and send. Identities not yet verified still refuse mail."""
    from relay.admin import users as user_admin

    with common.open_db(db_path) as db:
        user = user_admin.set_active(db, username, True)
    if as_json:
        common.print_json(user_json(user))
        return
    click.echo(f"Activated relay user {user.username}.")
    for warning in user_admin.activation_warnings(user):
        click.echo(f"smtpplus: warning: {warning}", err=True)


@users.command("deactivate")
@click.argument("username")
@common.json_option
@common.db_option
def deactivate(username: str, as_json: bool, db_path: Path | None) -> None:
    """Stop the user from logging in (its queued mail is still delivered)."""
    from relay.admin import users as user_admin

    with common.open_db(db_path) as db:
        user = user_admin.set_active(db, username, False)
    if as_json:
        common.print_json(user_json(user))
        return
    click.echo(f"Deactivated relay user {user.username}: it can no longer log in.")


@users.command("reset-password")
@click.argument("username")
@common.json_option
@common.db_option
def reset_password(username: str, as_json: bool, db_path: Path | None) -> None:
    """Replace the user's password with a new generated one, printed once."""
    from relay.admin import users as user_admin

    with common.open_db(db_path) as db:
        made = user_admin.reset_password(db, username)
    if as_json:
        common.print_json({"username": made.username, "password": made.password})
        return
    click.echo(f"New password for relay user {made.username}.")
    _print_password(made.username, made.password, first=False)


@users.command("rm")
@click.argument("username")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed when not on a terminal).")
@common.json_option
@common.db_option
def rm(username: str, yes: bool, as_json: bool, db_path: Path | None) -> None:
    """Delete a relay user. Mail it already queued is still delivered."""
    from relay.store import directory

    with common.open_db(db_path) as db:
        user = directory.get_user(db, username)
        common.confirm_or_require_yes(f"delete relay user {user.username!r}", yes)
        directory.delete_user(db, user.username)
    if as_json:
        common.print_json({"deleted": user.username, "list": user.list_name})
        return
    click.echo(f"Deleted relay user {user.username}. Mail it already queued is still delivered.")
