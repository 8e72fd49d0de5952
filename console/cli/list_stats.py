"""``smtpplus lists stats NAME``: accepted, refused, delivered, deferred, failed —
today (local time) and in total."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from console.cli import common

FIELDS = ("accepted", "refused", "delivered", "deferred", "failed")


@click.command("stats")
@click.argument("name")
@common.json_option
@common.db_option
def stats(name: str, as_json: bool, db_path: Path | None) -> None:
    """A list's counts today (local time) and in total."""
    from relay.store.stats import list_stats

    with common.open_db(db_path, create=False) as db:
        result = list_stats(db, name)
    if as_json:
        common.print_json(
            {"list": result.list_name, "today": dataclasses.asdict(result.today), "total": dataclasses.asdict(result.total)}
        )
        return
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from relay.display import clean

    table = Table(title=f"list {escape(clean(result.list_name))}", box=box.SIMPLE_HEAD)
    table.add_column("")
    for field in FIELDS:
        table.add_column(field, justify="right")
    table.add_row("today", *(str(getattr(result.today, f)) for f in FIELDS))
    table.add_row("total", *(str(getattr(result.total, f)) for f in FIELDS))
    common.stdout_console().print(table)
