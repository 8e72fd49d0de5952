"""``smtpplus harness run``: scenario files against a relay — progress, table, JSON, JUnit."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import click

from console.cli.common import CliError, db_option, json_option, print_json, stdout_console


@click.command(
    help="Run scenario files (paths, or names of the shipped ones: authorization, priority, port_sweep, "
    "bad_input) against the relay serving the store: set up lists and users through the store, send "
    "over SMTP on the ports the relay serves, check replies, delivery order at a capture sink, counts "
    "and events. Exits 0 only when every check passed.",
)
@click.argument("files", nargs=-1, required=True)
@click.option("--relay", "relay_host", default="127.0.0.1", show_default=True, help="Host the relay listens on.")
@click.option("--start-relay", is_flag=True, help="Run an in-process relay on 127.0.0.1 on a temporary store (unless --db is given), with a capture sink as next hop.")
@click.option(
    "--ports",
    metavar="SPEC",
    help="Limit the run to these of the relay's served ports: a spec (25,1025-5000), 'served' or 'sample:N'. "
    "Each send still picks from them with its own ports (sample:1, served, a spec), so it goes out as often as "
    "the scenario says and expected counts hold; the port sweep (ports = served) covers them all. "
    "With --start-relay a spec is also what the relay listens on.",
)
@click.option("--listen", help="With --start-relay: the listen spec (default: --ports when it is a spec, else the scenario's relay_listen).")
@click.option(
    "--relay-mode",
    type=click.Choice(["auto", "in-process", "subprocess"]),
    default="auto",
    show_default=True,
    help="With --start-relay: run the relay in this process, or in a child process so the relay and the "
    "harness each get a CPU core (auto: a child process above 500 listening ports, e.g. the full sweep).",
)
@click.option("--concurrency", type=click.IntRange(1, 4096), default=64, show_default=True, help="Dialogues at once.")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True, help="Seconds to wait for each reply.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a JUnit XML report here.")
@json_option
@db_option
def run(
    files: tuple[str, ...],
    relay_host: str,
    start_relay: bool,
    ports: str | None,
    listen: str | None,
    relay_mode: str,
    concurrency: int,
    timeout: float,
    junit_path: Path | None,
    as_json: bool,
    db_path: Path | None,
) -> None:
    from harness.report import failure_details, summary_table, write_junit
    from harness.scenario import RunOptions, ScenarioError, load_scenario, ports_value
    from relay.ports import PortSpecError, parse_port_spec
    from relay.store.db import default_db_path

    try:
        for name in files:
            load_scenario(name)  # fail fast, with the file and key named, before any setup
        if ports:
            ports_value(ports, "--ports")
        if listen and not re.fullmatch(r"0(\*\d+)?", listen):  # "0*N": N ephemeral ports
            parse_port_spec(listen)
    except ScenarioError as exc:
        raise CliError(str(exc)) from None
    except PortSpecError as exc:
        raise CliError(f"--ports/--listen: {exc}") from None
    if listen and not start_relay:
        raise CliError("--listen only applies with --start-relay")
    if start_relay and listen is None and ports and not ports.startswith(("sample:", "served")):
        listen = ports
    store_path = db_path if (db_path is not None or not start_relay) else None
    if store_path is None and not start_relay:
        store_path = default_db_path()
    options = RunOptions(store_path=store_path, relay_host="127.0.0.1" if start_relay else relay_host,
                         ports=ports, concurrency=concurrency, timeout=timeout)
    report = _run_with_progress(files, options, start_relay=start_relay, listen=listen, relay_mode=relay_mode, quiet=as_json)
    if junit_path is not None:
        write_junit(report, junit_path)
    if as_json:
        print_json(report.to_json())
    else:
        console = stdout_console()
        console.print(summary_table(report))
        for line in failure_details(report):
            console.print(line, markup=False)
        if junit_path is not None:
            console.print(f"JUnit report: {junit_path}", markup=False)
    sys.exit(0 if report.passed else 1)


def _run_with_progress(
    files: tuple[str, ...], options: Any, *, start_relay: bool, listen: str | None, relay_mode: str, quiet: bool
) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.scenario import run_files

    progress = Progress(
        TextColumn("[bold]dialogues"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True, disable=quiet or not sys.stderr.isatty(),
    )
    task = progress.add_task("dialogues", total=0)
    options.on_total = lambda n: progress.update(task, total=(progress.tasks[0].total or 0) + n)
    options.on_advance = lambda n: progress.advance(task, n)
    with progress:
        return _run(run_files(list(files), options, start_relay=start_relay, listen=listen, relay_mode=relay_mode))


def _run(coro: Any) -> Any:
    # uvloop when present: the sweep's thousands of TLS dialogues are loop-bound.
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
