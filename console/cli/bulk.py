"""Bulk-sender rules: ``smtpplus lists unsubscribe``, ``smtpplus unsubscribe`` and
``smtpplus suppressions`` (the logic is :mod:`relay.admin.unsubscribe`'s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from console.cli import common
from console.cli.common import CliError, LazyGroup


def _settings_json(list_name: str, settings: Any) -> dict[str, Any]:
    return {
        "list": list_name,
        "url_template": settings.url_template,
        "mailto": settings.mailto,
        "one_click": bool(settings.url_template),
    }


@click.command("unsubscribe")
@click.argument("name")
@click.option("--url-template", default=None, metavar="URL",
              help="https URL with {token} where the member's token goes, e.g. 'https://example.org/u/{token}' "
              "(one-click: List-Unsubscribe-Post is added). An empty value removes it.")
@click.option("--mailto", default=None, metavar="ADDRESS",
              help="Address members can mail to unsubscribe (the token is in the subject). An empty value removes it.")
@click.option("--clear", is_flag=True, help="Remove both: the list's campaign messages carry no List-Unsubscribe.")
@common.json_option
@common.db_option
def lists_unsubscribe(name: str, url_template: str | None, mailto: str | None, clear: bool, as_json: bool,
                      db_path: Path | None) -> None:
    """Show or set the List-Unsubscribe targets of list NAME's campaign messages.

    Every member's message gets its own signed token. Unsubscribe with
    `smtpplus unsubscribe TOKEN`, or let the relay's metrics listener answer the
    one-click POST (setting unsubscribe_endpoint; docs/production.md)."""
    from relay.admin.unsubscribe import set_unsubscribe_settings, unsubscribe_settings

    change = url_template is not None or mailto is not None or clear
    with common.open_db(db_path, create=change) as db:
        if change:
            info, settings = set_unsubscribe_settings(db, name, url_template=url_template, mailto=mailto, clear=clear)
        else:
            info, settings = unsubscribe_settings(db, name)
    if as_json:
        common.print_json(_settings_json(info.name, settings))
        return
    from relay.display import clean

    if not settings.configured:
        click.echo(clean(f"List {info.name}: no List-Unsubscribe target — its campaign messages carry none."))
        click.echo(f"Set one: smtpplus lists unsubscribe {common.shell_word(info.name)} "
                   "--url-template 'https://example.org/u/{token}' --mailto unsubscribe@example.org")
        return
    click.echo(clean(f"List {info.name}: List-Unsubscribe"))
    if settings.url_template:
        click.echo(clean(f"  https:  {settings.url_template}   (one-click, RFC 8058)"))
    if settings.mailto:
        click.echo(clean(f"  mailto: {settings.mailto}   (the token is in the subject)"))


@click.command("unsubscribe")
@click.argument("token")
@common.json_option
@common.db_option
def unsubscribe(token: str, as_json: bool, db_path: Path | None) -> None:
    """Unsubscribe the list member TOKEN names (the token from a List-Unsubscribe
    header, or the subject of an unsubscribe mail). Its list's campaigns skip it from
    now on; its unsent campaign messages are removed."""
    from relay.admin.unsubscribe import unsubscribe as do_unsubscribe

    with common.open_db(db_path, create=False) as db:
        result = do_unsubscribe(db, token)
    if as_json:
        common.print_json(
            {"list": result.list_name, "address": result.address, "already": result.already, "removed": result.removed}
        )
        return
    from relay.display import clean

    if result.already:
        click.echo(clean(f"{result.address} was already unsubscribed from list {result.list_name}."))
        return
    click.echo(clean(f"{result.address} unsubscribed from list {result.list_name}.")
               + (f" {result.removed} unsent campaign message(s) removed." if result.removed else ""))


suppressions = LazyGroup(name="suppressions", help="The suppression list: addresses campaigns never send to.")


def _suppression_json(s: Any) -> dict[str, Any]:
    return {"address": s.address, "reason": s.reason, "detail": s.detail, "created_at": s.created_at}


@suppressions.command("ls")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many (default: all).")
@common.json_option
@common.db_option
def suppressions_ls(limit: int | None, as_json: bool, db_path: Path | None) -> None:
    """Suppressed addresses: added by an operator (suppression-added) or by a 5.1.x
    hard bounce from a next hop (recipient-suppressed)."""
    from relay.store.suppressions import list_suppressions

    with common.open_db(db_path, create=False) as db:
        rows = list_suppressions(db, limit=limit)
    if as_json:
        common.print_json([_suppression_json(s) for s in rows])
        return
    if not rows:
        click.echo("No suppressed addresses. Add one with: smtpplus suppressions add ADDRESS")
        return
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from relay.display import clean

    table = Table(box=box.SIMPLE_HEAD)
    for column in ("Address", "Reason", "Since", "Detail"):
        table.add_column(column)
    for s in rows:
        table.add_row(escape(clean(s.address)), s.reason, common.fmt_time(s.created_at), escape(clean(s.detail[:80])))
    common.stdout_console().print(table)


@suppressions.command("add")
@click.argument("address")
@click.option("--note", default="", help="Why (kept with the entry).")
@common.json_option
@common.db_option
def suppressions_add(address: str, note: str, as_json: bool, db_path: Path | None) -> None:
    """Suppress ADDRESS: campaigns skip it; its unsent campaign messages are removed."""
    from relay.admin.unsubscribe import add_suppression

    with common.open_db(db_path) as db:
        entry, removed = add_suppression(db, address, detail=note)
    if as_json:
        common.print_json({**_suppression_json(entry), "removed": removed})
        return
    from relay.display import clean

    click.echo(clean(f"Suppressed {entry.address}.") + (f" {removed} unsent campaign message(s) removed." if removed else ""))


@suppressions.command("rm")
@click.argument("address")
@common.json_option
@common.db_option
def suppressions_rm(address: str, as_json: bool, db_path: Path | None) -> None:
    """Remove ADDRESS from the suppression list: later campaigns send to it again."""
    from relay.admin.unsubscribe import remove_suppression

    if not address.strip():
        raise CliError("give the address to remove — see `smtpplus suppressions ls`")
    with common.open_db(db_path, create=False) as db:
        entry = remove_suppression(db, address)
    if as_json:
        common.print_json({"removed": entry.address, "reason": entry.reason})
        return
    from relay.display import clean

    click.echo(clean(f"{entry.address} is no longer suppressed."))
