"""``smtpplus harness bench e2e`` and ``… bench priority``: delivery benchmarks.

The benches themselves are :mod:`harness.bench.delivery`; this module is their
command line (options, the ``--db`` scratch-store check, the report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from console.cli import common
from console.cli.bench_common import check_option, run_on_loop, show_report
from console.cli.common import CliError


def check_scratch_db(db_path: Path | None) -> Path | None:
    """``--db`` must name a new file in an existing directory: the bench fills it
    with its own list, users and mail, so a real store must never be used."""
    if db_path is None:
        return None
    path = db_path.expanduser().resolve()
    if path.exists():
        raise CliError(f"--db {db_path} already exists — the bench needs a new scratch store; give a path that does not exist")
    if not path.parent.is_dir():
        raise CliError(f"--db {db_path}: directory {path.parent} does not exist — create it first")
    return path


def _scratch_option(f: Any) -> Any:
    return click.option(
        "--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PATH",
        help="Put the bench's scratch store in this new file (kept afterwards; the relay's certificate goes "
        "beside it) instead of a temporary directory. Never an existing store: it is refused.",
    )(f)


@click.command("e2e")
@click.option("--messages", type=click.IntRange(1), default=5000, show_default=True, help="Messages to send.")
@click.option("--connections", type=click.IntRange(1, 256), default=16, show_default=True, help="Client connections.")
@click.option("--parallel", type=click.IntRange(1, 256), default=8, show_default=True, help="Next-hop connections.")
@click.option("--dequeue-size", type=click.IntRange(1), default=100_000, show_default=True,
              help="Queued messages for the dequeue-cost measurement.")
@click.option("--destinations", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="Instead: MX delivery to this many destination domains (loopback DNS, MX hosts on 127.0.0.2-9) "
              "against the smarthost, and with one destination slow and deferring.")
@click.option("--quick", is_flag=True, help="A smoke run in seconds (500 messages, 10,000 queued).")
@click.option("--dkim", type=click.Choice(["rsa-2048", "ed25519"]), default=None,
              help="Give the sender domain a DKIM key of this type: every message is signed at delivery.")
@check_option
@common.json_option
@_scratch_option
def e2e(messages: int, connections: int, parallel: int, dequeue_size: int, destinations: int, quick: bool,
        dkim: str | None, check: bool, as_json: bool, db_path: Path | None) -> None:
    """Unthrottled accept→delivered rate as a ratio of the accept rate (target ≥ 0.5).

    N messages over C connections (STARTTLS + AUTH once per connection, before the
    clock starts) to an in-process relay delivering to a capture sink; also the cost
    of one dequeue with --dequeue-size queued (target ≤ 0.5 ms of CPU).
    """
    from harness.bench.delivery import run_e2e

    scratch = check_scratch_db(db_path)
    if quick:
        messages, connections, dequeue_size = min(messages, 500), min(connections, 8), min(dequeue_size, 10_000)
    if destinations:
        from harness.bench.destinations import run_destinations

        report = run_on_loop(run_destinations(messages, connections, parallel, destinations, scratch, dkim))
        show_report(report, as_json=as_json, check=check)
        return
    report = run_on_loop(run_e2e(messages, connections, parallel, dequeue_size, scratch, dkim))
    show_report(report, as_json=as_json, check=check)


@click.command("priority")
@click.option("--members", type=click.IntRange(1), default=20_000, show_default=True, help="Campaign size.")
@click.option("--rate", type=click.FloatRange(1), default=200.0, show_default=True, help="Delivery rate R (msg/s).")
@click.option("--probes", type=click.IntRange(1), default=200, show_default=True, help="Priority-1 probes.")
@click.option("--parallel", type=click.IntRange(1, 256), default=4, show_default=True, help="Next-hop connections.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed for the probe moments.")
@click.option("--quick", is_flag=True, help="A smoke run in seconds (1,000 members, 20 probes).")
@check_option
@common.json_option
@_scratch_option
def priority(members: int, rate: float, probes: int, parallel: int, seed: int, quick: bool, check: bool, as_json: bool,
             db_path: Path | None) -> None:
    """Priority-1 probe latency through a campaign draining at rate R (target p99 ≤ 2/R + 50 ms).

    The probes go through SMTP (one connection, STARTTLS + AUTH) at random moments
    while the campaign drains; each one's latency runs from its 250 to its arrival
    at the capture sink.
    """
    from harness.bench.delivery import run_priority

    scratch = check_scratch_db(db_path)
    if quick:
        members, probes = min(members, 1000), min(probes, 20)
    report = run_on_loop(run_priority(members, rate, probes, parallel, seed, scratch))
    show_report(report, as_json=as_json, check=check)


@click.command("dkim")
@click.option("--signatures", type=click.IntRange(1), default=2000, show_default=True, help="Signatures per key type.")
@click.option("--size", type=click.IntRange(1000, 10_000_000), default=10_000, show_default=True, help="Message size in bytes.")
@click.option("--quick", is_flag=True, help="A smoke run (200 signatures, 3 reference signatures).")
@check_option
@common.json_option
def dkim(signatures: int, size: int, quick: bool, check: bool, as_json: bool) -> None:
    """DKIM signing CPU per message, Ed25519 and RSA-2048 (targets ≤ 1 ms and ≤ 2 ms).

    The relay's signing path (7-bit check, dkimpy's relaxed canonicalization, the key
    operation with `cryptography`) over a typical multipart message; dkimpy's own
    pure-Python RSA signing is shown as the reference.
    """
    from harness.bench.dkim import run_dkim
    from harness.bench.report import BenchError

    try:
        report = run_dkim(min(signatures, 200) if quick else signatures, size, 3 if quick else 20)
    except BenchError as exc:
        raise CliError(str(exc)) from None
    show_report(report, as_json=as_json, check=check)
