"""``smtpplus harness bench scale``: many relays on one PostgreSQL store (the bench is
:mod:`harness.bench.scale`; this is its command line)."""

from __future__ import annotations

import click

from console.cli.bench_common import DEFAULT_LOOP, check_option, run_on_loop, show_report
from console.cli.common import CliError, json_option


@click.command()
@click.option("--pg", "pg_url", default=None, metavar="URL",
              help="An empty scratch PostgreSQL database (postgresql://…): the bench fills it. Default: a private "
              "server started here (the machine's PostgreSQL, else the pgserver wheel), fsync on, removed after.")
@click.option("--connections", type=click.IntRange(1, 1024), default=16, show_default=True, help="Client connections.")
@click.option("--messages", type=click.IntRange(1), default=3000, show_default=True, help="Messages per accept run (upper bound).")
@click.option("--seconds", type=click.FloatRange(0.5), default=10.0, show_default=True, help="Seconds per accept run (upper bound).")
@click.option("--queued", type=click.IntRange(1000), default=100_000, show_default=True,
              help="Messages queued for the dequeue p99 (the issue's target is for 1,000,000).")
@click.option("--loop", "loop_name", type=click.Choice(["uvloop", "asyncio"]), default=DEFAULT_LOOP, show_default=True,
              help="Event loop for the relays and the load generator.")
@click.option("--quick", is_flag=True, help="A smoke run (4 connections, 300 messages per run, 5,000 queued).")
@check_option
@json_option
def scale(pg_url: str | None, connections: int, messages: int, seconds: float, queued: int, loop_name: str, quick: bool,
          check: bool, as_json: bool) -> None:
    """Many relays on one PostgreSQL store, in one run: accept rate into PostgreSQL as a
    ratio of SQLite (target ≥ 0.6); delivered rate with two relays as a ratio of one
    (≥ 0.9; the CPU split is shown); server CPU per accepted message, two relays sharing
    a port over one (≤ 1.1); dequeue p99 with --queued messages on PostgreSQL (≤ 2 ms)."""
    import logging

    from harness.bench.scale import ScaleParams, run_scale
    from relay.store.postgres.location import is_postgres

    if pg_url is not None and not is_postgres(pg_url):
        raise CliError(f"--pg {pg_url!r} is not a postgresql:// URL — give an empty scratch database")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    params = ScaleParams(connections=connections, messages=messages, seconds=seconds, queued=queued, loop=loop_name)
    if quick:
        params.connections, params.messages, params.queued, params.samples = min(connections, 4), min(messages, 300), 5000, 100
    if pg_url is not None:
        show_report(run_on_loop(run_scale(pg_url, params), loop_name), as_json=as_json, check=check)
        return
    from harness.postgres import NoServer, private_database

    try:
        with private_database() as (url, source):
            report = run_on_loop(run_scale(url, params), loop_name)
    except NoServer as exc:
        raise CliError(f"{exc} — or give an empty database: --pg postgresql://…") from None
    report.params["postgresql"] = f"a private server, fsync on ({source})"
    show_report(report, as_json=as_json, check=check)
