"""``smtpplus harness bench e2e`` and ``… bench priority``: delivery benchmarks.

Both run a real relay (:class:`relay.service.RelayService`, in this process, on
127.0.0.1 with one ephemeral port), a capture sink as its next hop and the load
(:mod:`harness.bench.loadgen`) on one event loop, against a fresh store: in a
temporary directory, or at a given path (a new file, kept after the run so its queue
and events can be read with ``smtpplus queue ls --db PATH``; the relay's certificate
goes in ``<PATH stem>-bench-data`` beside it, and the dequeue measurement uses a
temporary store in the same directory). Each message is distinct (its own recipient,
Message-ID and subject), about 2 KB.

- ``e2e``: N messages over C connections, STARTTLS + AUTH once per connection before
  the clock starts, delivery unthrottled. The accept rate is N over the time until the
  last ``250``; the delivered rate is N over the time until the last arrival at the
  sink. Target: delivered / accepted ≥ 0.5. Also the dequeue cost (one claim with
  100,000 queued), target ≤ 0.5 ms of CPU.
- ``priority``: a campaign of M members draining at rate R, and P priority-1 probes
  sent through SMTP (one connection) at random moments; each probe's latency from its
  ``250`` to its arrival at the sink. Target: p99 ≤ 2/R + 50 ms.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.bench.loadgen import LoadResult, LoadSpec, run_load
from harness.bench.report import BenchError, BenchReport, Measurement

PASSWORD = "bench-password-not-secret"
BODY = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n" * 24).encode()


# ---------------------------------------------------------------------------
# Setup: a store with a list, users and a verified domain; relay; sink


@dataclass
class Rig:
    store_path: Path
    relay_port: int
    sink: Any
    service: Any
    users: dict[int, str]  # priority -> username


def _prepare_store(store_path: Path, members: int, dkim: str | None = None) -> dict[int, str]:
    from relay.admin import users as user_admin
    from relay.admin import verification as verification_admin
    from relay.store import directory, open_store

    db = open_store(store_path)
    try:
        directory.create_list(db, "bench")
        credentials = user_admin.new_credentials(PASSWORD)  # one hash for both: argon2 is slow
        users = {}
        for priority in (1, 3):
            made = user_admin.create_user(
                db, list_name="bench", credentials=credentials, username=f"bench-p{priority}",
                priority=priority, domains=["bench.example"], active=True,
            )
            users[priority] = made.username
        verification_admin.approve(db, ["bench.example"], "benchmark setup")
        if dkim:
            from relay.admin import dkim as dkim_admin

            dkim_admin.add(db, "bench.example", algorithm=dkim)  # every message is signed at delivery
        if members:
            for start in range(0, members, 5000):
                directory.import_members(
                    db, "bench", [(f"member{n:06d}@sink.example", "") for n in range(start, min(members, start + 5000))]
                )
    finally:
        db.close()
    return users


@contextlib.contextmanager
def scratch(db_path: Path | None) -> Iterator[tuple[Path, Path]]:
    """(store file, data directory) for one bench run: ``db_path`` when given (a new
    file, kept), else both in a temporary directory removed afterwards."""
    if db_path is None:
        with tempfile.TemporaryDirectory(prefix="smtpplus-bench-") as tmp:
            yield Path(tmp) / "bench.db", Path(tmp) / "data"
        return
    yield db_path, db_path.parent / f"{db_path.stem}-bench-data"


@contextlib.asynccontextmanager
async def _rig(store_path: Path, data_dir: Path, *, rate: float, parallel: int, members: int = 0,
               paused: bool = False, dkim: str | None = None) -> AsyncIterator[Rig]:
    import logging

    from harness.sink import CaptureSink
    from relay.config import RelayConfig
    from relay.service import RelayService

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    users = await asyncio.to_thread(_prepare_store, store_path, members, dkim)
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


def _load(rig: Rig, username: str, mail_from: str, **spec: Any) -> LoadSpec:
    """The load on the rig's relay: STARTTLS (its certificate is self-signed, so not
    verified) and AUTH once per connection, before the clock starts."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return LoadSpec(ports=[rig.relay_port], starttls=True, tls_context=context, username=username, password=PASSWORD,
                    mail_from=mail_from, connect_first=True, timeout=60, **spec)


async def _wait(what: Any) -> Any:
    """The sink's wait, a timeout as a one-line :class:`BenchError`."""
    try:
        return await what
    except TimeoutError as exc:
        raise BenchError(str(exc) or "the sink waited in vain") from None


def _failures_note(report: BenchReport, label: str, load: LoadResult) -> None:
    if load.errors:
        report.notes.append(f"{label} failures: " + ", ".join(f"{n} × {e}" for e, n in load.errors.most_common(5)))


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# ---------------------------------------------------------------------------
# e2e


async def run_e2e(messages: int, connections: int, parallel: int, dequeue_size: int,
                  db_path: Path | None = None, dkim: str | None = None) -> BenchReport:
    report = BenchReport(
        "e2e", title="Unthrottled delivery: delivered rate against accept rate",
        params={"messages": messages, "connections": connections, "parallel": parallel, "dequeue_queued": dequeue_size},
    )
    if dkim:
        report.params["dkim"] = dkim

    def message(n: int) -> tuple[list[str], bytes]:
        rcpt = f"rcpt{n}@sink.example"
        return [rcpt], _message("load@bench.example", rcpt, f"e2e{n}@bench", f"e2e {n}")

    with scratch(db_path) as (store_path, data_dir):
        async with _rig(store_path, data_dir, rate=0, parallel=parallel, dkim=dkim) as rig:
            load = await run_load(_load(rig, rig.users[3], "load@bench.example", connections=connections,
                                        messages=messages, message=message))
            if load.sent == 0:
                raise BenchError("the relay accepted no message: " + (", ".join(load.errors) or "no reply"))
            await _wait(rig.sink.wait_for(load.sent, within=max(60.0, load.sent / 50)))
            delivered_seconds = max(r.at for r in rig.sink.messages) - load.started_at
        if dkim:
            signed = await asyncio.to_thread(_count_events, store_path, "dkim-signed")
            report.figure("dkim_signed", signed, "messages", about=f"messages signed ({dkim}) on their way to the sink")
    accepted = report.add(Measurement(
        "accepted (start → last 250)", load.sent, load.last_reply, load.failed,
        extra={"p50_ms": round(load.percentile(0.5) * 1000, 2), "p99_ms": round(load.percentile(0.99) * 1000, 2)},
    ))
    delivered = report.add(Measurement("delivered (start → last arrival at the sink)", load.sent, max(delivered_seconds, 1e-9)))
    _failures_note(report, "accept", load)
    report.figure("accept_rate_msg_s", accepted.rate, "msg/s", about="messages over the time until the last 250")
    report.figure("delivered_rate_msg_s", delivered.rate, "msg/s", about="messages over the time until the last arrival")
    report.figure("ratio", delivered.rate / accepted.rate if accepted.rate else 0.0, at_least=0.5,
                  about="delivered rate / accept rate")
    dequeue = await asyncio.to_thread(measure_dequeue, dequeue_size, where=db_path.parent if db_path else None)
    report.figure("dequeue_ms_p50", dequeue[0], "ms", about="one dequeue, wall clock")
    report.figure("dequeue_ms_p99", dequeue[1], "ms", about="one dequeue, wall clock")
    report.figure("dequeue_cpu_ms_p50", dequeue[2], "ms", at_most=0.5, about="one dequeue, the thread's CPU time")
    report.notes.append(f"one dequeue: a claim round (claim + dispatch event + commit) with {dequeue_size:,} queued")
    return report


def _count_events(store_path: Path, reason: str) -> int:
    from relay.store import open_store
    from relay.store.events import find_events

    db = open_store(store_path, create=False)
    try:
        return len(find_events(db, reason=reason, limit=10_000_000))
    finally:
        db.close()


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
    return statistics.median(times), _percentile(times, 0.99), statistics.median(cpu)


# ---------------------------------------------------------------------------
# priority


async def run_priority(members: int, rate: float, probes: int, parallel: int, seed: int,
                       db_path: Path | None = None) -> BenchReport:
    from relay.admin import campaigns as campaign_admin
    from relay.campaigns import build_template
    from relay.store import open_store

    target = 2000 / rate + 50
    report = BenchReport(
        "priority", title="Priority-1 probes through a throttled campaign",
        params={"campaign_members": members, "rate_msg_s": rate, "probes": probes, "parallel": parallel, "seed": seed},
    )
    rng = random.Random(seed)
    with scratch(db_path) as (store_path, data_dir):
        async with _rig(store_path, data_dir, rate=rate, parallel=parallel, members=members) as rig:
            arrivals: dict[str, float] = {}
            rig.sink.on_message = lambda record: arrivals.__setitem__(record.message_id or "", record.at)
            template, subject, _ = build_template(subject="Bench campaign", mail_from="news@bench.example", body="Hello.")

            def create() -> None:
                db = open_store(rig.store_path)
                try:
                    campaign_admin.create_campaign(db, "bench", subject=subject, template=template,
                                                    mail_from="news@bench.example", priority=3)
                finally:
                    db.close()

            await asyncio.to_thread(create)
            began = time.monotonic()
            await _wait(rig.sink.wait_for(1, within=60))  # the campaign is draining
            # Probes land while the campaign still has mail waiting (its last tenth is left alone).
            drain = members / rate
            moments = sorted(rng.uniform(0.05 * drain, 0.85 * drain) for _ in range(probes))
            elapsed = time.monotonic() - began
            accepted: dict[str, float] = {}

            def message(n: int) -> tuple[list[str], bytes]:
                rcpt = f"probe{n}@sink.example"
                return [rcpt], _message("ceo@bench.example", rcpt, f"probe{n}@bench", f"probe {n}")

            load = await run_load(_load(
                rig, rig.users[1], "ceo@bench.example", connections=1, messages=probes, message=message,
                schedule=[moment - elapsed for moment in moments],
                on_reply=lambda n, _text: accepted.__setitem__(f"<probe{n}@bench>", time.time()),
            ))
            if not accepted:
                raise BenchError("the relay accepted no probe: " + (", ".join(load.errors) or "no reply"))
            await _wait(rig.sink.wait_until(lambda _m: all(k in arrivals for k in accepted), within=60))
            campaign_seconds = time.monotonic() - began
            campaign_delivered = sum(1 for k in arrivals if k.startswith("<") and "probe" not in k)
    latencies = sorted((arrivals[k] - accepted[k]) * 1000 for k in accepted)
    report.add(Measurement("priority-1 probes (one connection, paced)", load.sent, load.seconds, load.failed))
    report.add(Measurement("campaign, delivered meanwhile", campaign_delivered, campaign_seconds))
    _failures_note(report, "probe", load)
    report.figure("campaign_delivered_during_run", campaign_delivered, "messages", about="the campaign was draining")
    about = "a probe's 250 → its arrival at the sink"
    report.figure("probe_latency_ms_p50", statistics.median(latencies), "ms", about=about)
    report.figure("probe_latency_ms_p99", _percentile(latencies, 0.99), "ms", at_most=round(target, 3),
                  about=f"{about}; target 2/R + 50 ms")
    report.figure("probe_latency_ms_max", latencies[-1], "ms", about=about)
    return report
