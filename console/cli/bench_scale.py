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
@click.option("--messages", type=click.IntRange(1), default=10_000, show_default=True, help="Messages per accept run (upper bound).")
@click.option("--seconds", type=click.FloatRange(0.5), default=10.0, show_default=True, help="Seconds per accept run (upper bound).")
@click.option("--queued", type=click.IntRange(1000), default=1_000_000, show_default=True,
              help="Messages queued (a bulk load) for the dequeue p99; the figure's label names the count.")
@click.option("--dequeue-seconds", type=click.FloatRange(1.0), default=60.0, show_default=True,
              help="Seconds of claim rounds timed against the queue while it drains (autovacuum looks once a minute).")
@click.option("--loop", "loop_name", type=click.Choice(["uvloop", "asyncio"]), default=DEFAULT_LOOP, show_default=True,
              help="Event loop for the relays and the load generator.")
@click.option("--quick", is_flag=True,
              help="A smoke run (4 connections, 300 messages per run, at most 5,000 queued, 3 s of claim rounds).")
@check_option
@json_option
def scale(pg_url: str | None, connections: int, messages: int, seconds: float, queued: int, dequeue_seconds: float,
          loop_name: str, quick: bool, check: bool, as_json: bool) -> None:
    """Many relays on one PostgreSQL store, in one run: accept rate into PostgreSQL as a
    ratio of SQLite (target ≥ 0.6); delivered rate with two relays as a ratio of one
    (≥ 0.9; the CPU split is shown); server CPU per accepted message, two relays sharing
    a port over one (≤ 1.1); dequeue p99 with --queued messages on PostgreSQL (≤ 2 ms):
    the engine's claim round (claim + commit) while the queue drains and delivered mail
    is pruned, so the dead rows a claim walks past are part of the time."""
    import logging

    from harness.bench.scale import ScaleParams, run_scale
    from relay.store.postgres.location import is_postgres

    if pg_url is not None and not is_postgres(pg_url):
        raise CliError(f"--pg {pg_url!r} is not a postgresql:// URL — give an empty scratch database")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    params = ScaleParams(connections=connections, messages=messages, seconds=seconds, queued=queued,
                         dequeue_seconds=dequeue_seconds, loop=loop_name)
    if quick:  # never a million: the tests run it
        params.connections, params.messages = min(connections, 4), min(messages, 300)
        params.queued, params.dequeue_seconds = min(queued, 5000), min(dequeue_seconds, 3.0)
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
