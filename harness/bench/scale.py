"""``smtpplus harness bench scale``: many relays on one PostgreSQL store, in one run.

Relays run as ``smtpplus relay`` processes on 127.0.0.1 (the same certificate, the
same event loop) and the same load drives them (:mod:`harness.bench.loadgen`:
STARTTLS + AUTH once per connection). In order:

1. **accept, PostgreSQL over SQLite** — one relay on a SQLite scratch store, then one
   on the PostgreSQL store (delivery paused): the ratio of their acceptance rates
   (target ≥ 0.6).
2. **delivered, two relays over one** — the mail step 1 queued in PostgreSQL is
   delivered to a capture sink by that one relay; then two relays sharing its port
   (``--reuse-port``) accept a second load, and deliver it together: the ratio of the
   delivered rates (target ≥ 0.9 on a 2-core machine where the load generator shares
   the cores; the CPU split is in the runs' columns).
3. **server CPU per accepted message, two relays over one** — the relays' own CPU
   (``/proc``) per accepted message in the two accept runs on PostgreSQL (target ≤ 1.1:
   the work spreads without overhead).
4. **dequeue p99 on PostgreSQL** — one claim round (claim + commit) with ``queued``
   messages waiting (target ≤ 2 ms).

The PostgreSQL database must be empty (a scratch database: the bench fills it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.bench.accept import PASSWORD, USER, _wait_ready, _workdir, cpu_seconds, prepare_store
from harness.bench.loadgen import LoadSpec, run_load
from harness.bench.report import BenchError, BenchReport, Measurement
from harness.sink import CaptureSink

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "bench.example"


@dataclass
class ScaleParams:
    connections: int = 16
    messages: int = 3000  # per accept run (upper bound)
    seconds: float = 10.0  # per accept run (upper bound)
    size: int = 2048
    queued: int = 100_000  # for the dequeue p99
    samples: int = 300
    loop: str = "uvloop" if sys.platform.startswith("linux") else "asyncio"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def relays(
    where: Path, store: str, cert: Path, key: Path, loop: str, count: int, port: int | None
) -> AsyncIterator[list[int]]:
    """``count`` relay processes on ``store``; with ``port``, all on it (--reuse-port).
    Yields their pids (ports: ``port``, or the one ephemeral port of a single relay)."""
    procs: list[subprocess.Popen[bytes]] = []
    if count > 1 and port is None:
        port = _free_port()  # several relays share one port (--reuse-port)
    env = dict(os.environ, SMTPPLUS_EVENT_LOOP=loop)
    env.pop("SMTPPLUS_CONFIG", None)
    try:
        for n in range(count):
            ready = where / f"scale{n}.ready.json"
            ready.unlink(missing_ok=True)
            config = where / f"scale{n}.toml"
            config.write_text(
                f'host = "127.0.0.1"\nports = "{port or 0}"\ntls_ports = ""\nserver_name = "bench.localhost"\n'
                f'tls_cert = "{cert}"\ntls_key = "{key}"\ndata_dir = "{where / "data"}"\n'
                + ("reuse_port = true\n" if port else "")
            )
            proc = _spawn(config, store, ready, env)
            procs.append(proc)
            served = (await asyncio.to_thread(_wait_ready, proc, ready, f"relay {n + 1}"))["served"]
            if port is None:
                port = int(served[0])
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        # Waited for without blocking the loop: the capture sink on it answers the relays' QUIT.
        for _ in range(600):  # 30 s
            if all(proc.poll() is not None for proc in procs):
                break
            await asyncio.sleep(0.05)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _spawn(config: Path, store: str, ready: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "relay", "--config", str(config),
         "--db", store, "--ready-file", str(ready)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _port_of(where: Path) -> int:
    import json

    return int(json.loads((where / "scale0.ready.json").read_text())["served"][0])


async def _accept(label: str, port: int, pids: list[int], params: ScaleParams, context: ssl.SSLContext) -> Measurement:
    def spec(messages: int, seconds: float) -> LoadSpec:
        return LoadSpec(ports=[port], connections=params.connections, messages=messages, seconds=seconds,
                        size=params.size, starttls=True, tls_context=context, username=USER, password=PASSWORD,
                        mail_from=f"load@{DOMAIN}")

    await run_load(spec(min(200, params.messages), 10.0))  # warm-up
    before = [cpu_seconds(pid) or 0.0 for pid in pids]
    result = await run_load(spec(params.messages, params.seconds))
    after = [cpu_seconds(pid) or 0.0 for pid in pids]
    used = [b - a for a, b in zip(before, after, strict=True)]
    extra: dict[str, Any] = {"p99_ms": round(result.percentile(0.99) * 1000, 2)}
    if result.sent:
        extra["server_cpu_us_per_msg"] = round(sum(used) / result.sent * 1e6, 1)
        extra["cpu_split"] = "/".join(f"{u / sum(used):.2f}" for u in used) if sum(used) > 0 else "-"
    if not result.sent:
        raise BenchError(f"{label}: nothing was accepted ({dict(result.errors.most_common(3))})")
    return Measurement(label, result.sent, result.seconds, result.failed, extra)


def _controls(store: str, *, paused: bool, hop: str | None = None) -> None:
    from relay.store import open_store
    from relay.store import queue as q

    db = open_store(store, create=False)
    try:
        if hop is not None:
            q.set_next_hop(db, hop)
        q.set_paused(db, paused)
    finally:
        db.close()


def _waiting(store: str) -> int:
    from relay.store import open_store
    from relay.store.counts import state_counts

    db = open_store(store, create=False)
    try:
        return sum(n for (state, _), n in state_counts(db).items() if state in ("queued", "sending", "deferred"))
    finally:
        db.close()


async def _deliver(label: str, store: str, sink: CaptureSink, pids: list[int]) -> Measurement:
    """Resume delivery and time until nothing is waiting; then pause again."""
    waiting = await asyncio.to_thread(_waiting, store)
    before, cpu = len(sink.messages), [cpu_seconds(pid) or 0.0 for pid in pids]
    started = time.perf_counter()
    await asyncio.to_thread(_controls, store, paused=False, hop=f"127.0.0.1:{sink.port}")
    deadline = started + 600
    while await asyncio.to_thread(_waiting, store):
        if time.perf_counter() > deadline:
            raise BenchError(f"{label}: mail still waiting after 600 s")
        await asyncio.sleep(0.1)
    seconds = time.perf_counter() - started
    await asyncio.to_thread(_controls, store, paused=True)
    used = [(cpu_seconds(pid) or 0.0) - c for pid, c in zip(pids, cpu, strict=True)]
    split = "/".join(f"{u / sum(used):.2f}" for u in used) if sum(used) > 0 else "-"
    return Measurement(label, waiting, seconds, 0, {"at_sink": len(sink.messages) - before, "cpu_split": split})


def _dequeue_p99(store: str, queued: int, samples: int) -> tuple[float, float]:
    from relay.store import open_store
    from relay.store import queue as q
    from relay.store.bulk import queue_bulk

    db = open_store(store, create=False)
    try:
        queue_bulk(db, queued)
        hop = "127.0.0.1:9"
        q.set_next_hop(db, hop)
        times = []
        for _ in range(samples):
            began = time.perf_counter()
            q.dispatch_round(db, q.RoundRequest(owner="bench-dequeue", lease_seconds=60, budget=1, hop=hop, force=True))
            times.append((time.perf_counter() - began) * 1000)
    finally:
        db.close()
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(0.99 * len(times)))]


def _check_empty(store: str) -> None:
    from relay.store import open_store
    from relay.store.directory import all_lists
    from relay.store.intake import count_messages

    db = open_store(store)
    try:
        if all_lists(db) or count_messages(db):
            raise BenchError("the PostgreSQL database is not empty — give the bench a scratch database (createdb …)")
    finally:
        db.close()


async def run_scale(pg: str, params: ScaleParams, workdir: Path | None = None) -> BenchReport:
    async with _workdir(workdir) as where:
        await asyncio.to_thread(_check_empty, pg)
        sqlite_store, cert, key = await asyncio.to_thread(prepare_store, where)
        await asyncio.to_thread(prepare_store, where, "unused.db", location=pg)
        context = ssl.create_default_context(cafile=str(cert))
        report = BenchReport(
            "scale", title="Many relays on one PostgreSQL store",
            params={"connections": params.connections, "messages_max": params.messages, "seconds_max": params.seconds,
                    "size": params.size, "queued": params.queued, "loop": params.loop},
        )
        async with relays(where, str(sqlite_store), cert, key, params.loop, 1, None) as pids:
            report.add(await _accept("accept: one relay, SQLite", _port_of(where), pids, params, context))
        port = _free_port()
        async with CaptureSink(port=0, keep_data=False) as sink:
            async with relays(where, pg, cert, key, params.loop, 1, port) as pids:
                one = report.add(await _accept("accept: one relay, PostgreSQL", port, pids, params, context))
                report.add(await _deliver("delivered: one relay", pg, sink, pids))
            async with relays(where, pg, cert, key, params.loop, 2, port) as pids:
                two = report.add(await _accept("accept: two relays, PostgreSQL, one port", port, pids, params, context))
                report.add(await _deliver("delivered: two relays", pg, sink, pids))
        report.compare("accept PostgreSQL / SQLite", "accept: one relay, PostgreSQL", "accept: one relay, SQLite",
                       at_least=0.6, about="one relay's acceptance rate into PostgreSQL over into SQLite")
        report.compare("delivered two relays / one", "delivered: two relays", "delivered: one relay", at_least=0.9,
                       about="accept→delivered to a capture sink; the load generator shares the machine's cores")
        cpu_one, cpu_two = one.extra.get("server_cpu_us_per_msg"), two.extra.get("server_cpu_us_per_msg")
        if cpu_one and cpu_two:
            report.figure("server CPU per accepted message, two relays / one", round(cpu_two / cpu_one, 3),
                          at_most=1.1, about="both relays' CPU over one relay's, per accepted message, same port")
        p50, p99 = await asyncio.to_thread(_dequeue_p99, pg, params.queued, params.samples)
        report.figure(f"dequeue p50 with {params.queued:,} queued (PostgreSQL)", round(p50, 3), "ms")
        report.figure(f"dequeue p99 with {params.queued:,} queued (PostgreSQL)", round(p99, 3), "ms", at_most=2.0,
                      about="one claim round: claim + commit, the queue of mixed priority")
        return report
