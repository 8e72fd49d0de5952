"""``smtpplus harness bench accept``: relay acceptance rate against a raw aiosmtpd sink."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from console.cli.common import CliError, db_option, json_option, print_json, stdout_console

_DEFAULT_LOOP = "uvloop" if sys.platform.startswith("linux") else "asyncio"


@click.command()
@click.option("--connections", type=click.IntRange(1, 1024), default=32, show_default=True, help="Client connections.")
@click.option("--messages", type=click.IntRange(1), default=20_000, show_default=True, help="Messages per measured run (upper bound).")
@click.option("--seconds", type=click.FloatRange(0.5), default=15.0, show_default=True, help="Seconds per measured run (upper bound).")
@click.option("--size", type=click.IntRange(200), default=2048, show_default=True, help="Message size in bytes.")
@click.option("--recipients", type=click.IntRange(1, 100), default=1, show_default=True, help="Recipients per message.")
@click.option("--new-connection", is_flag=True, help="Connect + STARTTLS + AUTH for every message (both sides); target 0.5.")
@click.option("--loop", "loop_name", type=click.Choice(["uvloop", "asyncio"]), default=_DEFAULT_LOOP, show_default=True,
              help="Event loop for both servers and the load generator.")
@click.option("--rounds", type=click.IntRange(1, 10), default=1, show_default=True, help="Alternate sink/relay runs; the best of each counts.")
@click.option("--check", is_flag=True, help="Exit 1 when the ratio misses its target.")
@json_option
@db_option
def accept(
    connections: int, messages: int, seconds: float, size: int, recipients: int, new_connection: bool,
    loop_name: str, rounds: int, check: bool, as_json: bool, db_path: Path | None,
) -> None:
    """Relay acceptance rate (delivery paused) as a ratio of a raw aiosmtpd sink's, same load.

    Both run as processes on 127.0.0.1 with the same event loop and certificate; the
    load is STARTTLS + AUTH once per connection (or per message with --new-connection).
    --db puts the scratch store (and certificate) in that file's directory instead of
    a temporary one; it must not be a store in use.
    """
    import asyncio
    import logging

    from harness.bench.accept import AcceptParams, run_accept_bench

    logging.getLogger("mail.log").setLevel(logging.ERROR)
    params = AcceptParams(
        connections=connections, messages=messages, seconds=seconds, size=size, recipients=recipients,
        new_connection=new_connection, loop=loop_name, rounds=rounds,
    )
    workdir = None
    if db_path is not None:
        workdir = db_path.parent / f"{db_path.stem}-bench-accept"
        if workdir.exists() and any(workdir.iterdir()):
            raise CliError(f"{workdir} is not empty — pick another --db location for the scratch store")
    if loop_name == "uvloop":
        import uvloop

        report = uvloop.run(run_accept_bench(params, workdir))
    else:
        report = asyncio.run(run_accept_bench(params, workdir))
    if as_json:
        print_json(report.to_json())
    else:
        report.print_table(stdout_console())
    if check and not report.passed:
        raise CliError("the relay missed its target (see the table)")
