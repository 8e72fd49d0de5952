"""``smtpplus harness bench e2e --destinations N``: MX delivery against the smarthost.

Three runs of the same load (N messages over C connections, STARTTLS + AUTH once per
connection before the clock starts), each on a fresh store with an in-process relay:

1. smarthost: every message to one capture sink (the ``e2e`` baseline);
2. MX: the recipients spread over ``destinations`` domains, each with an MX record on a
   loopback authoritative DNS server (:mod:`harness.dns`), their MX hosts capture sinks
   on 127.0.0.2–127.0.0.9 at one port (the relay's ``mx_port``);
3. MX with one destination slow and deferring (it thinks, then answers 451 to every
   recipient), the others as in 2.

Figures: the MX delivered rate as a ratio of the smarthost's (target ≥ 0.7), and the
other destinations' p99 accept→delivered latency in run 3 against run 2 (target ≤ 1.2).
With ``dkim`` (``--dkim ed25519``, as the issue's figure asks) the sender domain gets a
key for the MX runs, so every message they deliver is signed; the smarthost baseline
is never signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.bench.delivery import (
    Rig,
    _failures_note,
    _load,
    _message,
    _percentile,
    _prepare_store,
    _wait,
    scratch,
)
from harness.bench.loadgen import LoadResult, run_load
from harness.bench.report import BenchError, BenchReport, Measurement

MX_HOSTS = [f"127.0.0.{n}" for n in range(2, 10)]
SLOW_HOST = "127.0.0.10"
SLOW_DELAY = 0.5  # seconds the slow destination thinks before each 451


def free_port_on_every(hosts: list[str]) -> int:
    """One port free on every address (MX hosts all listen on the relay's mx_port;
    tried a few times: another process may take one meanwhile)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise BenchError("no port is free on every loopback address 127.0.0.2–127.0.0.10")


class _SlowDeferring:
    """The slow destination's MX: thinks, then answers 451 to each recipient."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        await asyncio.sleep(SLOW_DELAY)
        return "451 4.7.1 slow down, try later (bench)"


@dataclass
class _Run:
    load: LoadResult
    delivered_seconds: float
    latencies_ms: list[float] = field(default_factory=list)  # per message delivered, to the fast destinations


@contextlib.asynccontextmanager
async def _mx_rig(
    store_path: Path, data_dir: Path, parallel: int, destinations: int, slow: bool, dkim: str | None,
) -> AsyncIterator[Rig]:
    """A relay in MX mode: DNS on loopback, one capture sink per MX address."""
    import logging

    from aiosmtpd.smtp import SMTP

    from harness.dns import DnsServer
    from harness.sink import CaptureSink
    from relay.config import RelayConfig
    from relay.service import RelayService
    from relay.store import open_store
    from relay.store import queue as store_queue
    from relay.store.settings import Keys, set_setting

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    users = await asyncio.to_thread(_prepare_store, store_path, 0, dkim)
    port = free_port_on_every([*MX_HOSTS, SLOW_HOST])
    dns = DnsServer()
    await dns.start()
    sinks = [CaptureSink(host, port, keep_data=False) for host in MX_HOSTS]
    for sink in sinks:
        await sink.start()
    slow_server = None
    for n in range(destinations):
        dns.mail_domain(_domain(n), MX_HOSTS[n % len(MX_HOSTS)])
    if slow:
        dns.mail_domain(_domain(0), SLOW_HOST)
        loop = asyncio.get_running_loop()
        slow_server = await loop.create_server(lambda: SMTP(_SlowDeferring(), hostname="slow.bench"), SLOW_HOST, port)
    db = open_store(store_path)
    try:
        set_setting(db, Keys.DNS_RESOLVER, f"127.0.0.1:{dns.port}")
        store_queue.set_next_hop(db, "mx")
        store_queue.set_parallel(db, parallel)
    finally:
        db.close()
    config = RelayConfig(
        host="127.0.0.1", ports="0", data_dir=data_dir, server_name="bench.localhost", mx_port=port,
        message_lease=60.0, retry_base=30.0, retry_max=60.0,
    )
    service = RelayService(store_path, config)
    await service.start()
    merged = _Merged(sinks)
    try:
        yield Rig(store_path, service.served[0], merged, service, users)
    finally:
        await service.stop(grace=2)
        for sink in sinks:
            await sink.stop()
        if slow_server is not None:
            slow_server.close()
        await dns.stop()


class _Merged:
    """The MX sinks seen as one: every message that arrived anywhere."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    @property
    def messages(self) -> list[Any]:
        return [m for sink in self.sinks for m in sink.messages]

    async def wait_for(self, count: int, within: float) -> list[Any]:
        deadline = time.monotonic() + within
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the MX sinks got {len(self.messages)} of {count} message(s) within {within:.0f} s")
            await asyncio.sleep(0.05)
        return self.messages


def _domain(n: int) -> str:
    return f"d{n:03d}.bench.test"


async def _measure(rig: Rig, messages: int, connections: int, domains: int, slow: bool) -> _Run:
    """The load; then wait for every message to a fast destination (run 3: not the slow one's)."""
    accepted: dict[str, float] = {}

    def message(n: int) -> tuple[list[str], bytes]:
        rcpt = f"rcpt{n}@{_domain(n % domains)}" if domains else f"rcpt{n}@sink.example"
        return [rcpt], _message("load@bench.example", rcpt, f"dest{n}@bench", f"dest {n}")

    load = await run_load(_load(
        rig, rig.users[3], "load@bench.example", connections=connections, messages=messages, message=message,
        on_reply=lambda n, _text: accepted.__setitem__(f"<dest{n}@bench>", time.time()),
    ))
    if load.sent == 0:
        raise BenchError("the relay accepted no message: " + (", ".join(load.errors) or "no reply"))
    expected = sum(1 for key in accepted if not (slow and int(key[5:].split("@")[0]) % domains == 0))
    await _wait(rig.sink.wait_for(expected, within=max(60.0, expected / 20)))
    arrived = {m.message_id: m.at for m in rig.sink.messages}
    delivered_seconds = max(arrived.values()) - load.started_at
    latencies = sorted((arrived[k] - accepted[k]) * 1000 for k in accepted if k in arrived)
    return _Run(load, max(delivered_seconds, 1e-9), latencies)


async def run_destinations(messages: int, connections: int, parallel: int, destinations: int,
                           db_path: Path | None = None, dkim: str | None = None) -> BenchReport:
    from harness.bench.delivery import _count_events, _rig

    report = BenchReport(
        "e2e-destinations", title="MX delivery to many destinations against the smarthost",
        params={"messages": messages, "connections": connections, "parallel": parallel, "destinations": destinations},
    )
    if dkim:
        report.params["dkim"] = dkim
    runs: dict[str, _Run] = {}
    signed = 0
    for name in ("smarthost", "mx", "mx-slow"):
        where = None if db_path is None else db_path.with_name(f"{db_path.stem}-{name}{db_path.suffix}")
        with scratch(where) as (store_path, data_dir):
            if name == "smarthost":
                async with _rig(store_path, data_dir, rate=0, parallel=parallel) as rig:
                    runs[name] = await _measure(rig, messages, connections, 0, False)
            else:
                async with _mx_rig(store_path, data_dir, parallel, destinations, name == "mx-slow", dkim) as rig:
                    runs[name] = await _measure(rig, messages, connections, destinations, name == "mx-slow")
                if dkim and name == "mx":
                    signed = await asyncio.to_thread(_count_events, store_path, "dkim-signed")
    labels = {
        "smarthost": "smarthost (one capture sink)",
        "mx": f"MX, {destinations} destinations on 127.0.0.2–9" + (f", DKIM {dkim}" if dkim else ""),
        "mx-slow": "MX, one destination slow and deferring (the others)",
    }
    for name, run in runs.items():
        delivered = len(run.latencies_ms)
        report.add(Measurement(labels[name], delivered, run.delivered_seconds, run.load.failed, extra={
            "p50_ms": round(_percentile(run.latencies_ms, 0.5), 1) if run.latencies_ms else None,
            "p99_ms": round(_percentile(run.latencies_ms, 0.99), 1) if run.latencies_ms else None,
        }))
        _failures_note(report, name, run.load)
    smarthost = report.runs[0].rate  # type: ignore[union-attr]
    mx = report.runs[1].rate  # type: ignore[union-attr]
    report.figure("mx_delivered_rate_msg_s", mx, "msg/s", about="delivered over the time until the last arrival")
    report.figure("smarthost_delivered_rate_msg_s", smarthost, "msg/s", about="the same load to one sink")
    report.figure("mx_ratio", mx / smarthost if smarthost else 0.0, at_least=0.7, about="MX delivered rate / smarthost's")
    p99 = _percentile(runs["mx"].latencies_ms, 0.99)
    p99_slow = _percentile(runs["mx-slow"].latencies_ms, 0.99)
    report.figure("others_p99_ms", p99_slow, "ms", about="accept → delivered, the other destinations, one slow")
    report.figure("others_p99_ratio", p99_slow / p99 if p99 else 0.0, at_most=1.2,
                  about="their p99 with one destination slow / without")
    if dkim:
        report.figure("dkim_signed", signed, "messages", about=f"MX run: messages signed ({dkim}) on their way")
    else:
        report.notes.append("no DKIM signing in these runs: --dkim ed25519 signs the MX runs' mail")
    return report
