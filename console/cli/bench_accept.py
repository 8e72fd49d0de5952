"""``smtpplus harness bench accept``: relay acceptance rate against a raw aiosmtpd sink."""

from __future__ import annotations

from pathlib import Path

import click

from console.cli.bench_common import DEFAULT_LOOP, check_option, run_on_loop, show_report
from console.cli.common import CliError, db_option, json_option


@click.command()
@click.option("--connections", type=click.IntRange(1, 1024), default=32, show_default=True, help="Client connections.")
@click.option("--messages", type=click.IntRange(1), default=20_000, show_default=True, help="Messages per measured run (upper bound).")
@click.option("--seconds", type=click.FloatRange(0.5), default=15.0, show_default=True, help="Seconds per measured run (upper bound).")
@click.option("--size", type=click.IntRange(200), default=2048, show_default=True, help="Message size in bytes.")
@click.option("--recipients", type=click.IntRange(1, 100), default=1, show_default=True, help="Recipients per message.")
@click.option("--new-connection", is_flag=True, help="Connect + STARTTLS + AUTH for every message (both sides); target 0.5.")
@click.option("--pipeline", type=click.IntRange(2, 1000), default=None, metavar="N",
              help="N messages per round trip on each connection (MAIL, RCPT, DATA, message… pipelined as raw bytes "
              "over the TLS stream, both sides); target 0.75. Without it: one message at a time, target 0.9.")
@click.option("--loop", "loop_name", type=click.Choice(["uvloop", "asyncio"]), default=DEFAULT_LOOP, show_default=True,
              help="Event loop for both servers and the load generator.")
@click.option("--rounds", type=click.IntRange(1, 10), default=1, show_default=True, help="Alternate sink/relay runs; the best of each counts.")
@click.option("--stored", type=click.IntRange(0, 10_000_000), default=0, show_default=True,
              help="Also run the relay on a store already holding this many messages, as a ratio of the "
              "empty store (target ≥ 0.85).")
@click.option("--quick", is_flag=True, help="A smoke run in seconds (4 connections, 200 messages per side, short warm-up; "
              "--stored at most 2,000).")
@check_option
@json_option
@db_option
def accept(
    connections: int, messages: int, seconds: float, size: int, recipients: int, new_connection: bool,
    pipeline: int | None, loop_name: str, rounds: int, stored: int, quick: bool, check: bool, as_json: bool,
    db_path: Path | None,
) -> None:
    """Relay acceptance rate (delivery paused) as a ratio of a raw aiosmtpd sink's, same load.

    Both run as processes on 127.0.0.1 with the same event loop and certificate; the
    load is STARTTLS + AUTH once per connection (or per message with --new-connection),
    one message at a time, or N per round trip with --pipeline N.
    --stored N also runs the relay on a second store already holding N messages
    (filled first, in one transaction) and reports its rate over the empty store's.
    --db puts the scratch store (and certificate) in that file's directory instead of
    a temporary one; it must not be a store in use.
    """
    import logging

    from harness.bench.accept import AcceptParams, run_accept_bench

    if pipeline and new_connection:
        raise CliError("--pipeline and --new-connection contradict each other — pipelining reuses each connection")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    params = AcceptParams(
        connections=connections, messages=messages, seconds=seconds, size=size, recipients=recipients,
        new_connection=new_connection, pipeline=pipeline or 0, loop=loop_name, rounds=rounds, stored=stored,
    )
    if quick:
        params.connections, params.messages, params.warmup_messages = min(connections, 4), min(messages, 200), 20
        params.stored = min(stored, 2000)
    workdir = None
    if db_path is not None:
        workdir = db_path.parent / f"{db_path.stem}-bench-accept"
        if workdir.exists() and any(workdir.iterdir()):
            raise CliError(f"{workdir} is not empty — pick another --db location for the scratch store")
    report = run_on_loop(run_accept_bench(params, workdir), loop_name)
    show_report(report, as_json=as_json, check=check)
