"""``--metrics-listen``: a scrape parsed by prometheus-client after known traffic counts
what the store's events say; ``/healthz`` follows the lease and the store."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.sink import CaptureSink
from relay.metrics import parse_listen
from relay.reasons import EventKind, Reason
from relay.store import open_store, transaction
from tests.conftest import Cli
from tests.relay.support import PASSWORD, Seeded, client_context, events, message
from tests.relay.test_cli import RelayProcess
from tests.service.support import relay_toml

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def http_get(address: str, path: str) -> tuple[int, str]:
    host, port = parse_listen(address)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def scrape(address: str) -> Samples:
    code, text = await http_get(address, "/metrics")
    assert code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_until(address: str, done: Any) -> Samples:
    """Scrape until ``done(samples)``: an event is committed (and counted) just after
    its reply went out, so the last one may lag the client by a moment."""
    deadline = time.monotonic() + 30
    while True:
        samples = await scrape(address)
        if done(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.1)


async def send(port: int, tls_files: dict[str, Path], sender: str, *, password: str = PASSWORD["alice"]) -> int:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_context(tls_files), timeout=10)
    await client.connect()
    try:
        await client.ehlo()
        try:
            await client.auth_plain("alice", password)  # one mechanism: one attempt
        except aiosmtplib.SMTPAuthenticationError as failed:
            return failed.code
        try:
            await client.sendmail(sender, ["r@d.example"], message(sender))
        except aiosmtplib.SMTPSenderRefused as refused:
            return refused.code
        return 250
    finally:
        await client.quit()


async def health_until(address: str, done: Any) -> tuple[int, str]:
    deadline = time.monotonic() + 30
    while True:
        health = await http_get(address, "/healthz")
        if done(health[0]) or time.monotonic() > deadline:
            return health
        await asyncio.sleep(0.1)


def event_counts(store_path: Path) -> collections.Counter[tuple[str, str]]:
    return collections.Counter((e.kind, e.reason) for e in events(store_path))


def metric_counts(samples: Samples) -> collections.Counter[tuple[str, str]]:
    return collections.Counter(
        {
            (dict(labels)["kind"], dict(labels)["reason"]): int(v)
            for (name, labels), v in samples.items()
            if name == "smtpplus_events_total" and v
        }
    )


async def test_a_scrape_after_known_traffic_counts_what_the_events_say(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    async with CaptureSink("127.0.0.1", 0) as sink:
        toml = relay_toml(tmp_path, tls_files, f'next_hop = "127.0.0.1:{sink.port}"\n', paused=False)
        relay = RelayProcess(cli, tmp_path, "--config", str(toml), "--metrics-listen", "127.0.0.1:0")
        try:
            ready = relay.wait_ready()
            address, port = ready["metrics"], ready["served"][0]
            assert await send(port, tls_files, "x@z.example") == 550  # auth-ok, refused
            assert await send(port, tls_files, "x@a.example") == 250  # auth-ok, accepted
            assert await send(port, tls_files, "y@a.example") == 250  # auth-ok, accepted
            assert await send(port, tls_files, "x@a.example", password="wrong-password-1") == 535
            samples = await wait_until(
                address,
                lambda s: value(s, "smtpplus_deliveries_total", outcome="sent", reason="delivered") == 2
                and value(s, "smtpplus_auth_total", result="failure", reason="auth-bad-credentials") == 1,
            )
            assert len(sink.messages) == 2

            assert value(samples, "smtpplus_auth_total", result="success", reason="auth-ok") == 3
            assert value(samples, "smtpplus_auth_total", result="failure", reason="auth-bad-credentials") == 1
            assert value(samples, "smtpplus_refused_total", reason="sender-not-authorized") == 1
            assert value(samples, "smtpplus_messages_accepted_total") == 2
            assert value(samples, "smtpplus_deliveries_total", outcome="sent", reason="delivered") == 2
            assert value(samples, "smtpplus_delivery_latency_seconds_count") == 2
            assert 0 < value(samples, "smtpplus_delivery_latency_seconds_sum") < 60
            assert value(samples, "smtpplus_store_commit_messages_sum") == 2  # the two accepted messages
            assert value(samples, "smtpplus_store_commit_seconds_count") >= 2  # events commit too
            assert value(samples, "smtpplus_ports_served") == 2
            assert value(samples, "smtpplus_ports_not_served") == 0
            assert value(samples, "smtpplus_lease_held") == 1
            # Label values come from closed sets.
            reasons = {dict(labels)["reason"] for (_, labels) in samples if "reason" in dict(labels)}
            assert reasons <= {str(r) for r in Reason}
            kinds = {dict(labels)["kind"] for (_, labels) in samples if "kind" in dict(labels)}
            assert kinds <= {str(k) for k in EventKind}

            # Queue depth per priority and state: paused, a new message waits in lane 3.
            cli("queue", "pause", check=True)
            assert await send(port, tls_files, "x@a.example") == 250
            samples = await wait_until(address, lambda s: value(s, "smtpplus_messages_accepted_total") == 3)
            assert value(samples, "smtpplus_queue_messages", priority="3", state="queued") == 1
            assert sum(v for (name, _), v in samples.items() if name == "smtpplus_queue_messages") == 1
            assert 0 <= value(samples, "smtpplus_queue_oldest_wait_seconds", priority="3") < 60
            assert value(samples, "smtpplus_sessions_open") <= 1  # the last session may still be closing

            # Every event this relay wrote is counted. A scrape between two reads of the
            # store that agree sees a quiet relay. The CLI's pause is the CLI's event.
            before = event_counts(seeded.store_path)
            samples = await scrape(address)
            assert event_counts(seeded.store_path) == before
            assert before.pop(("operator", "delivery-paused")) == 1
            assert metric_counts(samples) == before
            assert before[("refused", "sender-not-authorized")] == 1 and before[("sent", "delivered")] == 2
        finally:
            assert relay.stop() == 0


async def test_healthz_is_503_with_the_reason_while_the_store_cannot_be_written(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    toml = relay_toml(tmp_path, tls_files, "heartbeat_interval = 0.2\n")
    relay = RelayProcess(cli, tmp_path, "--config", str(toml), "--metrics-listen", "0")
    try:
        address = relay.wait_ready()["metrics"]
        assert address.startswith("127.0.0.1:")  # a bare port listens on loopback
        assert await http_get(address, "/healthz") == (200, "ok\n")
        assert (await http_get(address, "/nowhere"))[0] == 404
        db = open_store(seeded.store_path)
        try:
            with transaction(db):  # another writer holds the store: heartbeats cannot be written
                health = await health_until(address, lambda code: code == 503)
                assert health[0] == 503 and "no heartbeat written" in health[1], health
            health = await health_until(address, lambda code: code == 200)
            assert health == (200, "ok\n")  # the store is writable again: so is the heartbeat
        finally:
            db.close()
    finally:
        assert relay.stop() == 0


@pytest.mark.parametrize(
    ("text", "address"),
    [("9325", ("127.0.0.1", 9325)), (":9325", ("127.0.0.1", 9325)), ("0.0.0.0:9325", ("0.0.0.0", 9325)),
     ("[::1]:9325", ("::1", 9325)), ("metrics.internal:80", ("metrics.internal", 80))],
)
def test_metrics_listen_forms(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


@pytest.mark.parametrize("text", ["::1:9325", "host:port", "70000", "127.0.0.1:"])
def test_a_bad_metrics_listen_is_a_one_line_error(cli: Cli, text: Any) -> None:
    proc = cli("relay", "--metrics-listen", text)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "metrics_listen" in proc.stderr


async def test_healthz_says_delivery_is_stuck_until_a_next_hop_takes_the_mail(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    # No next hop: a message accepted waits, no attempt is made.
    toml = relay_toml(tmp_path, tls_files, "stuck_after = 1.0\n", paused=False)
    relay = RelayProcess(cli, tmp_path, "--config", str(toml), "--metrics-listen", "0")
    try:
        ready = relay.wait_ready()
        address, port = ready["metrics"], ready["served"][0]
        assert await health_until(address, lambda code: code == 200) == (200, "ok\n")  # nothing waits: not stuck
        assert await send(port, tls_files, "x@a.example") == 250
        health = await health_until(address, lambda code: code == 503)
        assert health[0] == 503 and "delivery stuck: a message has been ready to send" in health[1], health

        cli("queue", "pause", check=True)  # paused on purpose: not stuck
        assert await health_until(address, lambda code: code == 200) == (200, "ok\n")
        cli("queue", "resume", check=True)
        assert (await health_until(address, lambda code: code == 503))[0] == 503

        async with CaptureSink("127.0.0.1", 0) as sink:
            cli("queue", "next-hop", f"127.0.0.1:{sink.port}", check=True)
            assert await health_until(address, lambda code: code == 200) == (200, "ok\n")
            # Healthy once an attempt is made; the message lands at the sink just after.
            assert len(await sink.wait_for(1)) == 1
    finally:
        assert relay.stop() == 0
