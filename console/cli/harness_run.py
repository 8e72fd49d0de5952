"""``smtpplus harness run``: scenario files against a relay — progress, table, JSON, JUnit."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import click

from console.cli.common import (
    CliError,
    StoreLocation,
    db_option,
    json_option,
    print_json,
    shown,
    stdout_console,
    store_exists,
)
from relay.display import clean


@click.command(
    help="Run scenario files (paths, or names of the shipped ones: authorization, priority, port_sweep, "
    "bad_input) against the relay serving the store: set up lists and users through the store (named "
    "with a run prefix, removed afterwards), send over SMTP on the ports the relay serves, check replies, "
    "delivery order at a sink, counts and events. Against a live relay the run only sends over SMTP and "
    "checks at the sink its scenario names ([sink] address/record, the relay's next hop); it never "
    "changes the relay's next hop, pause, rate or parallel, and refuses a scenario that needs to "
    "(use --start-relay for those). Exits 0 only when every check passed. "
    "Scenario format: docs/scenarios.md.",
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
@click.option("--keep", is_flag=True, help="Keep what the run made (lists, users, identities, campaigns; with --start-relay "
              "its temporary store too) and say what was kept. Settings are restored either way.")
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
    keep: bool,
    junit_path: Path | None,
    as_json: bool,
    db_path: StoreLocation | None,
) -> None:
    from harness.report import failure_details, summary_table, write_junit
    from harness.scenario import (
        RunOptions,
        ScenarioError,
        live_refusals,
        live_relay,
        load_scenario,
        ports_value,
    )
    from relay.ports import PortSpecError, parse_port_spec
    from relay.store import StoreError, default_db_path

    try:
        for name in files:
            load_scenario(name)  # fail fast, with the file and key named, before any setup
        if ports:
            ports_value(ports, "--ports")
        if listen and not re.fullmatch(r"0(\*\d+)?", listen):  # "0*N": N ephemeral ports
            parse_port_spec(listen)
    except ScenarioError as exc:
        raise CliError(clean(str(exc))) from None
    except PortSpecError as exc:
        raise CliError(f"--ports/--listen: {clean(exc)}") from None
    if listen and not start_relay:
        raise CliError("--listen only applies with --start-relay")
    if start_relay and listen is None and ports and not ports.startswith(("sample:", "served")):
        listen = ports
    store_path = db_path if (db_path is not None or not start_relay) else None
    if store_path is None and not start_relay:
        store_path = default_db_path()
    if not start_relay and store_path is not None:
        if not store_exists(store_path):
            raise CliError(f"no store at {shown(store_path)} — check --db / $SMTPPLUS_DB, or use --start-relay")
        try:
            refusals = live_refusals(list(files), store_path)
        except (StoreError, ScenarioError) as exc:
            raise CliError(clean(str(exc))) from None
        if refusals:
            raise CliError(clean("; ".join(refusals)))
    if start_relay and db_path is not None and store_exists(db_path):
        try:
            alive = live_relay(db_path)[0]
        except StoreError as exc:
            raise CliError(clean(str(exc))) from None
        if alive:
            raise CliError(f"a relay is live on {shown(db_path)}: --start-relay runs a relay of its own — drop --db "
                           "(a temporary store), or run without --start-relay (SMTP only, its delivery untouched)")
    options = RunOptions(store_path=store_path, relay_host="127.0.0.1" if start_relay else relay_host,
                         ports=ports, concurrency=concurrency, timeout=timeout, keep=keep)
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
        for line in _left_behind(report):
            console.print(line, markup=False)
        if junit_path is not None:
            console.print(f"JUnit report: {clean(junit_path)}", markup=False)
    sys.exit(0 if report.passed else 1)


def _left_behind(report: Any) -> list[str]:
    """What each scenario kept (--keep) or removed, and a kept temporary store; escaped
    (the names come from the scenario file)."""
    lines = []
    for scenario in report.scenarios:
        facts = scenario.facts
        if facts.get("kept"):
            lines.append(f"{scenario.name}: kept {facts['kept']} (--keep)")
        elif facts.get("removed"):
            lines.append(f"{scenario.name}: removed what the run made ({facts['removed']})")
        if facts.get("store_kept"):
            lines.append(f"{scenario.name}: store kept at {facts['store_kept']} — `smtpplus console --no-relay --db {facts['store_kept']}`")
    return [clean(line) for line in lines]


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
