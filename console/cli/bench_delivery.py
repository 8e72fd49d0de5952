"""``smtpplus harness bench e2e`` and ``… bench priority``: delivery benchmarks.

Both run a real relay (:class:`relay.service.RelayService`, in this process, on
127.0.0.1 with one ephemeral port), a capture sink as its next hop and the load
on one event loop, against a fresh store: in a temporary directory, or at
``--db PATH`` (a new file, kept after the run so its queue and events can be read
with ``smtpplus queue ls --db PATH``; the relay's certificate goes in
``<PATH stem>-bench-data`` beside it, and the dequeue measurement uses a temporary
store in the same directory).

- ``e2e``: N messages over C connections (STARTTLS + AUTH once per connection),
  delivery unthrottled. The accept rate is N over the time until the last ``250``;
  the delivered rate is N over the time until the last arrival at the sink. Target:
  delivered / accepted ≥ 0.5. Also the dequeue cost (one claim with 100,000 queued),
  target ≤ 0.5 ms.
- ``priority``: a campaign of M members draining at rate R, and P priority-1 probes
  sent through SMTP at random moments; each probe's latency from its ``250`` to its
  arrival at the sink. Target: p99 ≤ 2/R + 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from console.cli import common
from console.cli.common import CliError

PASSWORD = "bench-password-not-secret"
BODY = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n" * 24).encode()


@dataclass
class BenchResult:
    name: str
    figures: dict[str, float | int | str] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    passed: dict[str, bool] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"bench": self.name, "figures": self.figures, "targets": self.targets, "passed": self.passed,
                "ok": all(self.passed.values())}


def _print(result: BenchResult, as_json: bool) -> None:
    if as_json:
        common.print_json(result.to_json())
        return
    from rich import box
    from rich.table import Table

    table = Table(title=f"bench {result.name}", box=box.SIMPLE_HEAD)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target")
    for key, value in result.figures.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        target = result.targets.get(key, "")
        if key in result.passed:
            target += "  ✓" if result.passed[key] else "  ✗"
        table.add_row(key, shown, target)
    common.stdout_console().print(table)


# ---------------------------------------------------------------------------
# Setup: a store with a list, users and a verified domain; relay; sink


@dataclass
class Rig:
    store_path: Path
    relay_port: int
    sink: Any
    service: Any
    users: dict[int, str]  # priority -> username


def _prepare_store(store_path: Path, members: int) -> dict[int, str]:
    from relay.passwords import hash_password
    from relay.store import directory, open_store

    db = open_store(store_path)
    try:
        directory.create_list(db, "bench")
        password_hash = hash_password(PASSWORD)
        users = {}
        for priority in (1, 3):
            info = directory.create_user(
                db, list_name="bench", password_hash=password_hash, username=f"bench-p{priority}",
                priority=priority, domains=["bench.example"], active=True,
            )
            users[priority] = info.username
        directory.approve_identities(db, ["bench.example"], "benchmark setup")
        if members:
            for start in range(0, members, 5000):
                directory.import_members(
                    db, "bench", [(f"member{n:06d}@sink.example", "") for n in range(start, min(members, start + 5000))]
                )
    finally:
        db.close()
    return users


@contextlib.contextmanager
def _scratch(db_path: Path | None) -> Iterator[tuple[Path, Path]]:
    """(store file, data directory) for one bench run: ``--db PATH`` when given (a
    new file, kept), else both in a temporary directory removed afterwards."""
    if db_path is None:
        with tempfile.TemporaryDirectory(prefix="smtpplus-bench-") as tmp:
            yield Path(tmp) / "bench.db", Path(tmp) / "data"
        return
    yield db_path, db_path.parent / f"{db_path.stem}-bench-data"


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


@contextlib.asynccontextmanager
async def _rig(store_path: Path, data_dir: Path, *, rate: float, parallel: int, members: int = 0,
               paused: bool = False) -> AsyncIterator[Rig]:
    import logging

    from harness.sink import CaptureSink
    from relay.config import RelayConfig
    from relay.service import RelayService

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    users = await asyncio.to_thread(_prepare_store, store_path, members)
    sink = CaptureSink(port=0, keep_data=False)
    await sink.start()
    config = RelayConfig(
        host="127.0.0.1", ports="0", data_dir=data_dir, server_name="bench.localhost",
        next_hop=f"127.0.0.1:{sink.port}", rate=rate, parallel=parallel, paused=paused,
        message_lease=60.0, retry_base=1.0, retry_max=5.0,
    )
    service = RelayService(store_path, config)
    await service.start()
    try:
        yield Rig(store_path, service.served[0], sink, service, users)
    finally:
        await service.stop(grace=2)
        await sink.stop()


def _message(sender: str, rcpt: str, message_id: str, subject: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\r\n"
    ).encode() + BODY


async def _client(port: int, username: str) -> Any:
    import aiosmtplib

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=context,
                             local_hostname="bench.client", timeout=60)
    await client.connect()
    await client.login(username, PASSWORD)
    return client


# ---------------------------------------------------------------------------
# e2e


async def run_e2e(messages: int, connections: int, parallel: int, dequeue_size: int,
                  db_path: Path | None = None) -> BenchResult:
    with _scratch(db_path) as (store_path, data_dir):
        async with _rig(store_path, data_dir, rate=0, parallel=parallel) as rig:
            clients = [await _client(rig.relay_port, rig.users[3]) for _ in range(connections)]
            counter = iter(range(messages))
            accepted_at: list[float] = []
            start = time.perf_counter()
            wall_start = time.time()

            async def drive(client: Any) -> None:
                for n in counter:
                    await client.sendmail("load@bench.example", [f"rcpt{n}@sink.example"],
                                          _message("load@bench.example", f"rcpt{n}@sink.example", f"e2e{n}@bench", f"e2e {n}"))
                    accepted_at.append(time.perf_counter())

            await asyncio.gather(*(drive(c) for c in clients))
            accept_seconds = max(accepted_at) - start
            await rig.sink.wait_for(messages, within=max(60.0, messages / 50))
            delivered_seconds = max(r.at for r in rig.sink.messages) - wall_start
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.quit()
    accept_rate = messages / accept_seconds
    delivered_rate = messages / max(delivered_seconds, 1e-9)
    ratio = delivered_rate / accept_rate
    dequeue_ms = await asyncio.to_thread(measure_dequeue, dequeue_size, where=db_path.parent if db_path else None)
    result = BenchResult("e2e")
    result.figures = {
        "messages": messages, "connections": connections, "parallel": parallel,
        "accept_rate_msg_s": accept_rate, "delivered_rate_msg_s": delivered_rate, "ratio": ratio,
        "dequeue_queued": dequeue_size, "dequeue_ms_p50": dequeue_ms[0], "dequeue_ms_p99": dequeue_ms[1],
        "dequeue_cpu_ms_p50": dequeue_ms[2],
    }
    result.targets = {"ratio": "≥ 0.5", "dequeue_cpu_ms_p50": "≤ 0.5 ms"}
    result.passed = {"ratio": ratio >= 0.5, "dequeue_cpu_ms_p50": dequeue_ms[2] <= 0.5}
    return result


def measure_dequeue(queued: int, samples: int = 300, *, where: Path | None = None) -> tuple[float, float, float]:
    """Milliseconds for one claim round (claim + dispatch event + commit) with
    ``queued`` messages of mixed priority waiting: wall-clock p50 and p99, and the
    p50 of the thread's CPU time (the cost itself, not waiting for a busy CPU)."""
    from relay.store import open_store
    from relay.store import queue as q
    from relay.store.intake import NewMessage, insert_messages

    with tempfile.TemporaryDirectory(prefix="smtpplus-dequeue-", dir=where) as tmp:
        db = open_store(Path(tmp) / "dequeue.db")
        try:
            hop = "127.0.0.1:9"
            q.set_next_hop(db, hop)
            body = b"Subject: dequeue\r\n\r\nx\r\n"
            for start in range(0, queued, 5000):
                insert_messages(db, [
                    NewMessage(mail_from="a@bench.example", recipients=["r@sink.example"], data=body, priority=1 + n % 5)
                    for n in range(start, min(queued, start + 5000))
                ])
            times, cpu = [], []
            for _ in range(samples):
                began, began_cpu = time.perf_counter(), time.thread_time()
                q.dispatch_round(db, q.RoundRequest(owner="bench", lease_seconds=60, budget=1, hop=hop, force=True))
                times.append((time.perf_counter() - began) * 1000)
                cpu.append((time.thread_time() - began_cpu) * 1000)
        finally:
            db.close()
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))], statistics.median(cpu)


# ---------------------------------------------------------------------------
# priority


async def run_priority(members: int, rate: float, probes: int, parallel: int, seed: int,
                       db_path: Path | None = None) -> BenchResult:
    from relay.campaigns import build_template
    from relay.store import campaigns as store_campaigns
    from relay.store import open_store

    rng = random.Random(seed)
    with _scratch(db_path) as (store_path, data_dir):
        async with _rig(store_path, data_dir, rate=rate, parallel=parallel, members=members) as rig:
            arrivals: dict[str, float] = {}
            rig.sink.on_message = lambda record: arrivals.__setitem__(record.message_id or "", record.at)
            client = await _client(rig.relay_port, rig.users[1])
            template, subject, _ = build_template(subject="Bench campaign", mail_from="news@bench.example", body="Hello.")

            def create() -> None:
                db = open_store(rig.store_path)
                try:
                    store_campaigns.create_campaign(db, "bench", subject=subject, template=template,
                                                    mail_from="news@bench.example", priority=3)
                finally:
                    db.close()

            await asyncio.to_thread(create)
            began = time.monotonic()
            await rig.sink.wait_for(1, within=60)  # the campaign is draining
            # Probes land while the campaign still has mail waiting (its last tenth is left alone).
            drain = members / rate
            moments = sorted(rng.uniform(0.05 * drain, 0.85 * drain) for _ in range(probes))
            accepted: dict[str, float] = {}
            for n, moment in enumerate(moments):
                delay = moment - (time.monotonic() - began)
                if delay > 0:
                    await asyncio.sleep(delay)
                message_id = f"probe{n}@bench"
                await client.sendmail("ceo@bench.example", [f"probe{n}@sink.example"],
                                      _message("ceo@bench.example", f"probe{n}@sink.example", message_id, f"probe {n}"))
                accepted[f"<{message_id}>"] = time.time()
            await rig.sink.wait_until(lambda _m: all(k in arrivals for k in accepted), within=60)
            with contextlib.suppress(Exception):
                await client.quit()
            campaign_delivered = sum(1 for k in arrivals if k.startswith("<") and "probe" not in k)
    latencies = sorted((arrivals[k] - accepted[k]) * 1000 for k in accepted)
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    target = 2000 / rate + 50
    result = BenchResult("priority")
    result.figures = {
        "campaign_members": members, "rate_msg_s": rate, "probes": probes, "parallel": parallel,
        "campaign_delivered_during_run": campaign_delivered,
        "probe_latency_ms_p50": p50, "probe_latency_ms_p99": p99, "probe_latency_ms_max": latencies[-1],
    }
    result.targets = {"probe_latency_ms_p99": f"≤ 2/R + 50 ms = {target:.0f} ms"}
    result.passed = {"probe_latency_ms_p99": p99 <= target}
    return result


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # not on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


@click.command("e2e")
@click.option("--messages", type=click.IntRange(1), default=5000, show_default=True, help="Messages to send.")
@click.option("--connections", type=click.IntRange(1, 256), default=16, show_default=True, help="Client connections.")
@click.option("--parallel", type=click.IntRange(1, 256), default=8, show_default=True, help="Next-hop connections.")
@click.option("--dequeue-size", type=click.IntRange(1), default=100_000, show_default=True,
              help="Queued messages for the dequeue-cost measurement.")
@click.option("--quick", is_flag=True, help="A smoke run in seconds (500 messages, 10,000 queued).")
@common.json_option
@_scratch_option
def e2e(messages: int, connections: int, parallel: int, dequeue_size: int, quick: bool, as_json: bool,
        db_path: Path | None) -> None:
    """Unthrottled accept→delivered rate as a ratio of the accept rate (target ≥ 0.5)."""
    scratch = check_scratch_db(db_path)
    if quick:
        messages, connections, dequeue_size = min(messages, 500), min(connections, 8), min(dequeue_size, 10_000)
    _print(_run(run_e2e(messages, connections, parallel, dequeue_size, scratch)), as_json)


@click.command("priority")
@click.option("--members", type=click.IntRange(1), default=20_000, show_default=True, help="Campaign size.")
@click.option("--rate", type=click.FloatRange(1), default=200.0, show_default=True, help="Delivery rate R (msg/s).")
@click.option("--probes", type=click.IntRange(1), default=200, show_default=True, help="Priority-1 probes.")
@click.option("--parallel", type=click.IntRange(1, 256), default=4, show_default=True, help="Next-hop connections.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed for the probe moments.")
@click.option("--quick", is_flag=True, help="A smoke run in seconds (1,000 members, 20 probes).")
@common.json_option
@_scratch_option
def priority(members: int, rate: float, probes: int, parallel: int, seed: int, quick: bool, as_json: bool,
             db_path: Path | None) -> None:
    """Priority-1 probe latency through a campaign draining at rate R (target p99 ≤ 2/R + 50 ms)."""
    scratch = check_scratch_db(db_path)
    if quick:
        members, probes = min(members, 1000), min(probes, 20)
    _print(_run(run_priority(members, rate, probes, parallel, seed, scratch)), as_json)
