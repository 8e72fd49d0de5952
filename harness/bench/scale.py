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
4. **dequeue p99 on PostgreSQL** — ``queued`` messages (default 1,000,000, mixed
   priorities 1–5) bulk-loaded (``COPY``, then ``VACUUM (ANALYZE)`` as after any bulk
   load, and a ``CHECKPOINT``: the PostgreSQL dialect's bulk load; the fill's time is
   a run of its own), then
   the engine's claim round timed for ``dequeue_seconds``: one message claimed with the
   round's housekeeping (due retries made ready, expired leases reclaimed every
   second), its attempt event, COMMIT (target p99 ≤ 2 ms). Untimed rounds between
   them deliver the claimed mail and more (about 20 messages per timed round), and
   delivered mail is pruned every few seconds: the dead index entries a claim walks
   past build up as in a store a busy relay drains, and autovacuum runs meanwhile.

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
DEQUEUE_WARMUP = 100  # rounds left out of the dequeue figures (a new connection's first statements)
DEQUEUE_CHURN = 20  # messages delivered (untimed) per timed claim round
PRUNE_EVERY = 5.0  # seconds between deletes of the delivered mail in the dequeue rounds


@dataclass
class ScaleParams:
    connections: int = 16
    messages: int = 10_000  # per accept run (upper bound): 3,000 were 2–3 s, too short for a steady CPU figure
    seconds: float = 10.0  # per accept run (upper bound)
    size: int = 2048
    queued: int = 1_000_000  # for the dequeue p99
    dequeue_seconds: float = 60.0  # of claim rounds (autovacuum looks at a database once a minute)
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


@dataclass
class Dequeued:
    fill_seconds: float
    rounds: list[float]  # milliseconds per timed claim round, warm-up left out
    delivered: int
    pruned: int
    seconds: float


def _delivered(claimed: list[Any]) -> list[Any]:
    from relay.reasons import Reason
    from relay.store import queue as q

    return [
        q.Outcome(m, "sent", Reason.DELIVERED, "250 2.0.0 ok", [q.RecipientResult(a, "sent", "250 2.0.0 ok") for a in m.recipients])
        for m in claimed
    ]


def _dequeue(store: str, queued: int, seconds: float, *, warmup: int = DEQUEUE_WARMUP, churn: int = DEQUEUE_CHURN) -> Dequeued:
    """Fill the store with ``queued`` messages of mixed priority (the dialect's bulk
    load), then time the engine's claim round against it for ``seconds``: one message
    claimed in one transaction with the engine's housekeeping (due retries made ready;
    expired leases reclaimed every second), committed. Between two timed rounds an
    untimed one, as the engine's next round would, records what was claimed as
    delivered (message and recipient) and claims ``churn`` more, delivered in the next:
    the queue drains at many times the timed rate, and delivered mail is pruned every
    few seconds, as retention does. So the index entries a claim walks past — rows
    claimed, delivered, deleted — build up as in a store a busy relay delivers from,
    and autovacuum's work is part of the time measured. The first ``warmup`` timed
    rounds (a new connection's first statements) are left out."""
    from relay.store import open_store
    from relay.store import queue as q
    from relay.store.bulk import queue_bulk
    from relay.store.claim_floors import ClaimFloors

    churn = max(1, min(churn, queued // 1000))  # a small queue (a quick run) lasts its seconds
    db = open_store(store, create=False)
    try:
        began = time.perf_counter()
        queue_bulk(db, queued)
        fill = time.perf_counter() - began
        hop = "127.0.0.1:9"
        q.set_next_hop(db, hop)
        q.set_paused(db, False)  # the delivery runs before paused it: a paused round claims nothing
        times: list[float] = []
        floors = ClaimFloors()  # the engine's: where its claims start, kept from round to round
        pending: list[q.Claimed] = []
        delivered = pruned = 0
        started = time.perf_counter()
        last_reclaim = last_prune = started
        while len(times) < warmup + 100 or (
            time.perf_counter() - started < seconds and queued - delivered - len(pending) > churn + 1
        ):
            began = time.perf_counter()
            reclaim = began - last_reclaim >= 1.0
            result = q.dispatch_round(db, q.RoundRequest(
                owner="bench-dequeue", lease_seconds=60, budget=1, hop=hop, reclaim_expired=reclaim, promote_due=True,
                force=True, versioned=False,  # as the engine's rounds: it follows the change feed instead
                floors=floors,
            ))
            times.append((time.perf_counter() - began) * 1000)
            last_reclaim = began if reclaim else last_reclaim
            if not result.claimed:
                raise BenchError(f"dequeue: nothing left to claim after {len(times)} rounds — queue more (--queued)")
            outcomes = _delivered(pending + result.claimed)
            pending = q.dispatch_round(db, q.RoundRequest(
                owner="bench-dequeue", lease_seconds=60, budget=churn, hop=hop, outcomes=outcomes, force=True,
                versioned=False, floors=floors,
            )).claimed
            delivered += len(outcomes)
            if time.perf_counter() - last_prune >= PRUNE_EVERY:
                pruned += q.prune(db, before=time.time()).messages
                last_prune = time.perf_counter()
        return Dequeued(fill, times[warmup:], delivered, pruned, time.perf_counter() - started)
    finally:
        db.close()


def _percentile(times: list[float], share: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


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
                    "size": params.size, "queued": params.queued, "dequeue_seconds": params.dequeue_seconds,
                    "loop": params.loop},
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
        dq = await asyncio.to_thread(_dequeue, pg, params.queued, params.dequeue_seconds)
        report.add(Measurement(f"fill: {params.queued:,} queued (bulk load, PostgreSQL)", params.queued, dq.fill_seconds))
        report.add(Measurement(
            f"dequeue rounds with {params.queued:,} queued (PostgreSQL)", len(dq.rounds), dq.seconds, 0,
            {"delivered": dq.delivered, "pruned": dq.pruned, "p50_ms": round(_percentile(dq.rounds, 0.5), 3),
             "p99_ms": round(_percentile(dq.rounds, 0.99), 3)},
        ))
        report.figure(f"dequeue p50 with {params.queued:,} queued (PostgreSQL)", round(_percentile(dq.rounds, 0.5), 3), "ms")
        report.figure(f"dequeue p99 with {params.queued:,} queued (PostgreSQL)", round(_percentile(dq.rounds, 0.99), 3), "ms",
                      at_most=2.0, about="the engine's claim round (one message, housekeeping, attempt event, commit) "
                      "while untimed rounds deliver and prune; mixed priorities")
        return report
