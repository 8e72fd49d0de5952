"""``smtpplus routes``: send chosen recipient domains to a fixed HOST:PORT instead of
their MX hosts (Postfix's transport map). Used in MX delivery (`queue next-hop mx`);
a relay follows a change within about a second."""

from __future__ import annotations

from pathlib import Path

import click

from console.cli import common
from console.cli.common import LazyGroup

routes = LazyGroup(name="routes", help="Routes: recipient domains sent to a fixed HOST:PORT (MX delivery).")


@routes.command("add")
@click.argument("domain")
@click.argument("hop", metavar="HOST:PORT")
@common.json_option
@common.db_option
def add(domain: str, hop: str, as_json: bool, db_path: Path | None) -> None:
    """Send mail for DOMAIN to HOST:PORT (replaces DOMAIN's route if it has one)."""
    from relay.store.queue import parse_next_hop
    from relay.store.routing import add_route

    host, port = parse_next_hop(hop)
    with common.open_db(db_path) as db:
        route = add_route(db, domain, host, port)
    if as_json:
        common.print_json({"domain": route.domain, "host": route.host, "port": route.port})
    else:
        click.echo(f"Route: {route.domain} → {route.address}")


@routes.command("ls")
@common.json_option
@common.db_option
def ls(as_json: bool, db_path: Path | None) -> None:
    """Every route, by domain."""
    from relay.display import clean
    from relay.store.routing import list_routes

    with common.open_db(db_path, create=False) as db:
        found = list_routes(db)
    if as_json:
        common.print_json([{"domain": r.domain, "host": r.host, "port": r.port, "created_at": r.created_at} for r in found])
        return
    if not found:
        click.echo("No routes: every domain goes to its MX hosts.")
        return
    for r in found:
        click.echo(f"{clean(r.domain)} → {clean(r.address)}")


@routes.command("rm")
@click.argument("domain")
@common.json_option
@common.db_option
def rm(domain: str, as_json: bool, db_path: Path | None) -> None:
    """Remove DOMAIN's route: its mail goes to its MX hosts again."""
    from relay.store.routing import remove_route

    with common.open_db(db_path, create=False) as db:
        route = remove_route(db, domain)
    if as_json:
        common.print_json({"domain": route.domain, "removed": True})
    else:
        click.echo(f"Route for {route.domain} removed: its mail goes to its MX hosts.")



