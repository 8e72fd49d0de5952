"""``--metrics-listen``: a scrape parsed by prometheus-client after known traffic counts
what the store's events say; ``/healthz`` follows the lease and the store."""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.bench.destinations import free_port_on_every
from harness.dns import DnsServer
from harness.sink import CaptureSink, Chaos
from relay.metrics import LABEL_VALUES, METRICS, RelayMetrics, parse_listen
from relay.reasons import EventKind, Reason
from relay.store import open_store, transaction
from relay.store.events import NewEvent, count_events_after, last_event_id, record_events
from tests.conftest import ROOT, Cli
from tests.delivery.test_mx import HOSTS
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


def total(samples: Samples, name: str) -> float:
    return sum(v for (sample, _), v in samples.items() if sample == name)


def last_event(store_path: Path) -> int:
    db = open_store(store_path)
    try:
        return last_event_id(db)
    finally:
        db.close()


def event_counts(store_path: Path, after: int = 0) -> collections.Counter[tuple[str, str]]:
    return collections.Counter((e.kind, e.reason) for e in events(store_path) if e.id > after)


def assert_bounded(samples: Samples) -> None:
    """Every series is a metric of the registry, every label value one of its closed set."""
    for name, labels in samples:
        family = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        assert family in METRICS, name
        for label, text in labels:
            assert label in METRICS[family][1] or label == "le", (name, label)
            assert label == "le" or text in LABEL_VALUES[label], (name, label, text)


async def send_to(port: int, tls_files: dict[str, Path], recipients: list[str]) -> int:
    """alice sends one message from x@a.example to ``recipients``, asking for no bounce
    (NOTIFY=NEVER: no report comes back through the next hop to count)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_context(tls_files), timeout=10)
    await client.connect()
    try:
        await client.ehlo()
        await client.auth_plain("alice", PASSWORD["alice"])
        try:
            await client.sendmail("x@a.example", recipients, message("x@a.example"), rcpt_options=["NOTIFY=NEVER"])
        except aiosmtplib.SMTPException as exc:
            return int(getattr(exc, "code", 0))
        return 250
    finally:
        await client.quit()


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
    started_after = last_event(seeded.store_path)
    sink_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sink_tls.load_cert_chain(tls_files["cert"], tls_files["key"])
    async with CaptureSink("127.0.0.1", 0, tls_context=sink_tls) as sink:  # STARTTLS: opportunistic
        toml = relay_toml(tmp_path, tls_files, f'next_hop = "127.0.0.1:{sink.port}"\ntls_ports = "0"\n', paused=False)
        relay = RelayProcess(cli, tmp_path, "--config", str(toml), "--metrics-listen", "127.0.0.1:0")
        try:
            ready = relay.wait_ready()
            address = ready["metrics"]
            port = next(p for p in ready["served"] if p not in ready["implicit_tls"])
            assert await send(port, tls_files, "x@z.example") == 550  # auth-ok, refused
            assert await send(port, tls_files, "x@a.example") == 250  # auth-ok, accepted
            assert await send(port, tls_files, "y@a.example") == 250  # auth-ok, accepted
            assert await send(port, tls_files, "x@a.example", password="wrong-password-1") == 535
            samples = await wait_until(
                address,
                lambda s: value(s, "smtpplus_deliveries_total", outcome="sent", reason="delivered", destination_class="smarthost") == 2
                and value(s, "smtpplus_auth_total", result="failure", reason="auth-bad-credentials") == 1,
            )
            assert len(sink.messages) == 2
            assert_bounded(samples)

            assert value(samples, "smtpplus_auth_total", result="success", reason="auth-ok") == 3
            assert value(samples, "smtpplus_auth_total", result="failure", reason="auth-bad-credentials") == 1
            assert value(samples, "smtpplus_refused_total", reason="sender-not-authorized") == 1
            assert value(samples, "smtpplus_messages_accepted_total") == 2
            assert value(samples, "smtpplus_deliveries_total", outcome="sent", reason="delivered", destination_class="smarthost") == 2
            assert total(samples, "smtpplus_deliveries_total") == 2
            assert value(samples, "smtpplus_delivery_latency_seconds_count") == 2
            assert 0 < value(samples, "smtpplus_delivery_latency_seconds_sum") < 60
            assert value(samples, "smtpplus_store_commit_messages_sum") == 2  # the two accepted messages
            assert value(samples, "smtpplus_store_commit_seconds_count") >= 2  # events commit too
            # What the next hop answered: one transaction per message, on one or two
            # connections, each with a greeting, EHLO, STARTTLS and EHLO again.
            for command in ("mail", "rcpt", "data"):
                assert value(samples, "smtpplus_next_hop_replies_total", command=command, **{"class": "2xx"}) == 2
            connections = value(samples, "smtpplus_next_hop_replies_total", command="connect", **{"class": "2xx"})
            assert 1 <= connections <= 2
            assert value(samples, "smtpplus_next_hop_replies_total", command="starttls", **{"class": "2xx"}) == connections
            assert value(samples, "smtpplus_next_hop_replies_total", command="ehlo", **{"class": "2xx"}) == 2 * connections
            assert total(samples, "smtpplus_next_hop_replies_total") == 6 + 4 * connections
            assert value(samples, "smtpplus_ports_served", tls="starttls") == 2
            assert value(samples, "smtpplus_ports_served", tls="implicit") == 1
            assert value(samples, "smtpplus_ports_not_served") == 0
            assert value(samples, "smtpplus_lease_held") == 1

            # Sessions open now: one held open, then none.
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
            await client.connect()
            await client.ehlo()
            assert value(await wait_until(address, lambda s: value(s, "smtpplus_sessions_open") == 1), "smtpplus_sessions_open") == 1
            await client.quit()
            assert value(await wait_until(address, lambda s: value(s, "smtpplus_sessions_open") == 0), "smtpplus_sessions_open") == 0

            # Queue depth per priority and state: paused, a new message waits in lane 3.
            cli("queue", "pause", check=True)
            assert await send(port, tls_files, "x@a.example") == 250
            samples = await wait_until(address, lambda s: value(s, "smtpplus_messages_accepted_total") == 3)
            assert value(samples, "smtpplus_queue_messages", priority="3", state="queued") == 1
            assert total(samples, "smtpplus_queue_messages") == 1
            assert 0 <= value(samples, "smtpplus_queue_oldest_wait_seconds", priority="3") < 60
            # ... read from the maintained counts (relay.store.counts), not a count of the
            # queue: a count made wrong on purpose shows as it is, until `store recount`.
            db = open_store(seeded.store_path)
            try:
                with transaction(db):
                    db.execute("UPDATE queue_counts SET n = n + 5 WHERE state = 'queued' AND priority = 3")
            finally:
                db.close()
            assert value(await scrape(address), "smtpplus_queue_messages", priority="3", state="queued") == 6
            cli("store", "recount", check=True)
            assert value(await scrape(address), "smtpplus_queue_messages", priority="3", state="queued") == 1

            # Every event written since the relay started is counted, whoever wrote it:
            # the CLI's pause and recount too. A scrape between two reads of the store
            # that agree sees a quiet relay.
            before = event_counts(seeded.store_path, started_after)
            samples = await scrape(address)
            assert event_counts(seeded.store_path, started_after) == before
            assert metric_counts(samples) == before
            assert before[("operator", "delivery-paused")] == 1
            assert before[("refused", "sender-not-authorized")] == 1 and before[("sent", "delivered")] == 2
            assert before[("relay", "relay-started")] == 1
        finally:
            assert relay.stop() == 0


async def test_next_hop_reply_classes_and_outcomes_match_what_the_hop_answered(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    started_after = last_event(seeded.store_path)
    chaos = Chaos(perm_match="*@perm.example", temp_match="*@temp.example")
    async with CaptureSink("127.0.0.1", 0, chaos=chaos) as sink:
        extra = f'next_hop = "127.0.0.1:{sink.port}"\nretry_base = 3600\nretry_max = 3600\n'  # no retry during the test
        toml = relay_toml(tmp_path, tls_files, extra, paused=False)
        relay = RelayProcess(cli, tmp_path, "--config", str(toml), "--metrics-listen", "127.0.0.1:0")
        try:
            ready = relay.wait_ready()
            address, port = ready["metrics"], ready["served"][0]
            # RCPT 250, 550, 451; DATA 250: deferred (one recipient waits). Then all 550: failed.
            assert await send_to(port, tls_files, ["ok@d.example", "x@perm.example", "y@temp.example"]) == 250
            assert await send_to(port, tls_files, ["z@perm.example"]) == 250
            samples = await wait_until(address, lambda s: total(s, "smtpplus_deliveries_total") == 2)
            assert_bounded(samples)
            assert value(samples, "smtpplus_deliveries_total", outcome="deferred", reason="deferred-4xx", destination_class="smarthost") == 1
            assert value(samples, "smtpplus_deliveries_total", outcome="failed", reason="failed-5xx", destination_class="smarthost") == 1

            def replies(command: str, reply_class: str) -> float:
                return value(samples, "smtpplus_next_hop_replies_total", command=command, **{"class": reply_class})

            assert sum(sink.attempts.values()) == 4 and len(sink.refused) == 3
            assert replies("rcpt", "2xx") == 1
            assert replies("rcpt", "5xx") == sum(reply.startswith("5") for _, reply in sink.refused) == 2
            assert replies("rcpt", "4xx") == sum(reply.startswith("4") for _, reply in sink.refused) == 1
            assert replies("mail", "2xx") == 2
            assert replies("data", "2xx") == 1 == len(sink.messages)  # the second message had no recipient left

            # A next hop that refuses the connection: a "connection" class, deferred-connect.
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                dead = probe.getsockname()[1]
            await asyncio.to_thread(cli, "queue", "next-hop", f"127.0.0.1:{dead}", check=True)
            assert await send_to(port, tls_files, ["ok@d.example"]) == 250
            samples = await wait_until(address, lambda s: total(s, "smtpplus_deliveries_total") == 3)
            assert value(samples, "smtpplus_deliveries_total", outcome="deferred", reason="deferred-connect", destination_class="smarthost") == 1
            assert value(samples, "smtpplus_next_hop_replies_total", command="connect", **{"class": "connection"}) == 1

            # The outcomes are the store's outcome events, one for one.
            counted = event_counts(seeded.store_path, started_after)
            outcomes = collections.Counter(
                {(dict(labels)["outcome"], dict(labels)["reason"]): int(v)
                 for (name, labels), v in samples.items() if name == "smtpplus_deliveries_total" and v}
            )
            assert outcomes == collections.Counter(
                {(kind, reason): n for (kind, reason), n in counted.items() if kind in ("sent", "deferred", "failed")}
            )
        finally:
            assert relay.stop() == 0


async def test_deliveries_by_destination_class_mx_route_and_mixed(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path], dns: DnsServer, mx_port: int
) -> None:
    mx = CaptureSink("127.0.0.2", mx_port)
    routed = CaptureSink("127.0.0.1", 0)
    await mx.start()
    await routed.start()
    try:
        dns.mail_domain("mx.test", "127.0.0.2")
        cli("domains", "settings", "--resolver", f"127.0.0.1:{dns.port}", check=True)
        cli("routes", "add", "routed.test", f"127.0.0.1:{routed.port}", check=True)
        cli("queue", "next-hop", "mx", check=True)
        toml = relay_toml(tmp_path, tls_files, f"mx_port = {mx_port}\n", paused=False)
        relay = RelayProcess(cli, tmp_path, "--config", str(toml), "--metrics-listen", "127.0.0.1:0")
        try:
            ready = relay.wait_ready()
            address, port = ready["metrics"], ready["served"][0]
            assert await send_to(port, tls_files, ["a@mx.test"]) == 250
            assert await send_to(port, tls_files, ["b@routed.test"]) == 250
            assert await send_to(port, tls_files, ["c@mx.test", "d@routed.test"]) == 250
            samples = await wait_until(address, lambda s: total(s, "smtpplus_deliveries_total") == 3)
            assert_bounded(samples)
            for destination_class in ("mx", "route", "mixed"):
                assert value(
                    samples, "smtpplus_deliveries_total", outcome="sent", reason="delivered", destination_class=destination_class
                ) == 1, destination_class
            assert len(mx.messages) == 2 and len(routed.messages) == 2
            # Four transactions (the mixed message: one per destination), each answered 250.
            for command in ("mail", "rcpt", "data"):
                assert value(samples, "smtpplus_next_hop_replies_total", command=command, **{"class": "2xx"}) == 4
        finally:
            assert relay.stop() == 0
    finally:
        await mx.stop()
        await routed.stop()


async def test_healthz_is_503_with_the_reason_while_the_store_cannot_be_written(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    toml = relay_toml(tmp_path, tls_files, "heartbeat_interval = 0.2\n")
    relay = RelayProcess(cli, tmp_path, "--config", str(toml), "--metrics-listen", "0")
    try:
        ready = relay.wait_ready()
        address = ready["metrics"]
        assert address.startswith("127.0.0.1:")  # a bare port listens on loopback
        assert sorted(ready) == sorted(re.findall(r'"([a-z_]+)"', ready_file_help().split("}")[0]))  # --help names every key
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


def ready_file_help() -> str:
    from console.cli.relay_cmd import relay as relay_command

    [option] = [p for p in relay_command.params if p.name == "ready_file"]
    return str(option.help)


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


@pytest.fixture
def mx_port() -> int:
    return free_port_on_every(HOSTS)


class _Tracker:
    sessions: list[object] = []


class _Context:
    tracker = _Tracker()


class _Service:
    """What RelayMetrics reads of a running relay: its observer lists and a few facts."""

    def __init__(self) -> None:
        self.observers: list[Any] = []
        self.outcome_observers: list[Any] = []
        self.commit_observers: list[Any] = []
        self.reply_observers: list[Any] = []
        self.context = _Context()
        self.served = [2525, 4650]
        self.implicit_tls = [4650]
        self.not_served: dict[int, str] = {}
        self.running = self.leased = True


def test_label_values_are_closed_sets_whatever_a_client_or_a_next_hop_says() -> None:
    """A user name, a reason code from another version, a strange command or reply class:
    never a label value of its own (a series per value would grow without bound)."""
    service = _Service()
    metrics = RelayMetrics(service)
    for labels in METRICS.values():
        assert set(labels[1]) <= set(LABEL_VALUES)  # every label has its closed set
    user_chosen = "mallory\x1b[31m" + "x" * 300
    for observe in service.observers:
        observe([
            NewEvent(EventKind.AUTH, user_chosen, username=user_chosen),  # type: ignore[arg-type]
            NewEvent(EventKind.REFUSED, Reason.SENDER_NOT_AUTHORIZED, detail=user_chosen),
            NewEvent(user_chosen, user_chosen),  # type: ignore[arg-type]
        ])
    for hear in service.reply_observers:
        hear(user_chosen, user_chosen)
        hear("rcpt", "4xx")

    class Outcome:
        state, reason, destination_class = "delivered-ish", user_chosen, user_chosen
        message = None

    metrics.observe_outcomes([Outcome()])
    metrics.event_counts[("other", "other")] = 1
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
    }
    assert_bounded(samples)
    assert value(samples, "smtpplus_auth_total", result="failure", reason="other") == 1
    assert value(samples, "smtpplus_next_hop_replies_total", command="other", **{"class": "other"}) == 1
    assert value(samples, "smtpplus_next_hop_replies_total", command="rcpt", **{"class": "4xx"}) == 1
    assert value(samples, "smtpplus_deliveries_total", outcome="other", reason="other", destination_class="other") == 1
    assert value(samples, "smtpplus_ports_served", tls="starttls") == 1
    assert value(samples, "smtpplus_ports_served", tls="implicit") == 1
    # The exposition names exactly the metrics of METRICS (counters without "_total" in
    # the parser's family names).
    families = {f.name + ("_total" if f.type == "counter" else "") for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert families == set(METRICS)


def test_docs_list_every_metric_with_its_labels() -> None:
    """docs/production.md's metrics table: one row per metric, its type and its labels,
    exactly as the relay serves them."""
    text = (ROOT / "docs" / "production.md").read_text()
    section = text.split("## Metrics and health", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`smtpplus_"):
            labels = tuple(re.findall(r"`([a-z_]+)`", cells[2]))
            rows[cells[0].strip("`")] = (cells[1], labels)
    assert rows == METRICS


def test_counting_new_events_reads_each_once_in_bounded_steps_and_starts_again_after_an_emptied_table(seeded: Seeded) -> None:
    db = open_store(seeded.store_path)
    try:
        start = last_event_id(db)
        with transaction(db):
            record_events(db, [NewEvent(EventKind.OPERATOR, Reason.DELIVERY_PAUSED)] * 3 + [NewEvent(EventKind.RELAY, Reason.RELAY_STARTED)])
        counts, after = count_events_after(db, start, 2)  # a reader far behind: two ids a call
        assert counts == {("operator", "delivery-paused"): 2} and after == start + 2
        counts, after = count_events_after(db, after, 2)
        assert counts == {("operator", "delivery-paused"): 1, ("relay", "relay-started"): 1} and after == start + 4
        assert count_events_after(db, after, 2) == ({}, after)  # nothing new: nothing counted
        # Retention pruned every event and ids start again below the last one read.
        with transaction(db):
            db.execute("DELETE FROM events")
            record_events(db, [NewEvent(EventKind.RELAY, Reason.RELAY_STOPPED)])
        counts, again = count_events_after(db, after, 100)
        assert counts == {("relay", "relay-stopped"): 1} and again == last_event_id(db) < after
    finally:
        db.close()


async def test_a_reload_is_counted_like_every_other_event(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    import signal

    toml = relay_toml(tmp_path, tls_files, "max_recipients = 100\n")
    relay = RelayProcess(cli, tmp_path, "--config", str(toml), "--metrics-listen", "127.0.0.1:0")
    try:
        address = relay.wait_ready()["metrics"]
        toml.write_text(toml.read_text().replace("max_recipients = 100", "max_recipients = 5"))
        relay.proc.send_signal(signal.SIGHUP)
        samples = await wait_until(address, lambda s: value(s, "smtpplus_events_total", kind="relay", reason="config-reloaded") >= 1)
        assert value(samples, "smtpplus_events_total", kind="relay", reason="config-reloaded") == 1
        assert metric_counts(samples) == event_counts(seeded.store_path)  # every event, the reload's too
    finally:
        assert relay.stop() == 0
    assert sum("config-reloaded" in line for line in relay.output().splitlines()) == 1  # its one log line


async def test_healthz_is_503_once_another_relay_holds_the_lease(
    db: Any, store_path: Path, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    """The liveness half of /healthz: a relay whose lease now names another relay is not
    healthy (it notices at its next heartbeat and stops)."""
    from relay.metrics import health
    from relay.store import AsyncStore
    from relay.store.settings import Keys, get_setting, set_setting
    from tests.delivery.conftest import eventually
    from tests.relay.support import relay_config, running_relay

    config = relay_config(tmp_path, tls_files, heartbeat_interval=0.2)
    async with running_relay(store_path, config) as service:
        store = await AsyncStore(store_path).open()
        try:
            assert await health(service, store) is None
            with transaction(db):
                set_setting(db, Keys.LEASE, {**get_setting(db, Keys.LEASE), "owner": "another-relay"})
            await eventually(lambda: not service.leased)
            assert await health(service, store) in (
                "this relay lost the store's lease to another relay",
                "the relay is not running (starting or stopping)",  # it already stopped itself
            )
        finally:
            await store.close()
