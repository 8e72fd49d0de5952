"""MX delivery with real parts: an authoritative DNS server on loopback (harness.dns),
aiosmtpd MX hosts on 127.0.0.2–127.0.0.9 at one high port (the relay's ``mx_port``),
the delivery engine against a real store. Assertions are on order, counts, replies and
events — never on seconds."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from harness.bench.destinations import free_port_on_every
from harness.dns import DnsServer
from harness.sink import CaptureSink
from relay.delivery import DeliveryEngine
from relay.delivery.destinations import (
    DestinationTable,
    destination_share,
    group_by_destination,
    recipient_domain,
)
from relay.store import open_store
from relay.store import queue as q
from relay.store.routing import add_route, destination_rows
from relay.store.settings import Keys, set_setting
from relay.store.suppressions import list_suppressions
from tests.delivery.conftest import (
    counting_smtp,
    enqueue,
    eventually,
    fast_config,
    message,
    running_engine,
)


class SilentHost:
    """Accepts TCP connections and never says a word (an MX that never answers)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self._writers.append(writer)
            with contextlib.suppress(Exception):
                await reader.read()

        self._server = await asyncio.start_server(hold, self.host, self.port, reuse_address=True)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)


class SlowDeferringHost:
    """An MX that thinks before every RCPT, then answers 451: counts the connections
    it holds at once (the engine must never give one destination all of ``parallel``)."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.host, self.port, self.delay = host, port, delay
        self.open = 0
        self.most_open = 0
        self.rcpts = 0
        self._server: Any = None

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        self.rcpts += 1
        await asyncio.sleep(self.delay)
        return "451 4.7.1 slow down, try later"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        outer = self

        Counting = counting_smtp(outer)

        self._server = await loop.create_server(
            lambda: Counting(self, hostname="slow.mx.test"), host=self.host, port=self.port, reuse_address=True,
        )

    async def stop(self) -> None:
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)


HOSTS = [f"127.0.0.{n}" for n in range(2, 10)]


@pytest.fixture
def mx_port() -> int:
    return free_port_on_every(HOSTS)


def point_at_mx(db: Any, dns: DnsServer, *, parallel: int = 4) -> None:
    set_setting(db, Keys.DNS_RESOLVER, f"127.0.0.1:{dns.port}")
    q.set_next_hop(db, "mx")
    q.set_parallel(db, parallel)


def reasons(db: Any) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in db.execute("SELECT reason, detail FROM events ORDER BY id")]


def by_subject(db: Any) -> dict[str, tuple[str, str | None]]:
    return {r.subject: (r.state, r.last_reply) for r in q.list_messages(db, state="all", limit=1000)}


# ---------------------------------------------------------------------------
# Pure parts


def test_destination_share_never_takes_every_connection() -> None:
    assert destination_share(10, 4) == 3
    assert destination_share(2, 4) == 2
    assert destination_share(10, 1) == 1  # one connection: it is everyone's
    assert destination_share(10, 2) == 1
    assert destination_share(1, 256) == 1


def test_recipients_group_by_domain_in_first_seen_order() -> None:
    groups = group_by_destination(["a@B.test", "x@c.test", "b@b.TEST", '"q@x"@c.test'])
    assert groups == {"b.test": ["a@B.test", "b@b.TEST"], "c.test": ["x@c.test", '"q@x"@c.test']}
    assert recipient_domain("postmaster") == ""


ODD_ADDRESSES = ['"a@b"@C.test', "x@Y.Test", '"@@"@ex.ample', "nodomain", "u@BÜ.de", "@", "a@"]


def test_the_store_and_the_engine_agree_on_a_recipients_domain_after_the_last_at(store_path: Path) -> None:
    """A quoted local part may hold an "@": the destination is after the LAST one —
    for the store's generated recipients.domain (also on a store migrated from V7, the
    first-@ version) and for the engine's grouping alike."""
    from relay.store.sqlite.schema import MIGRATIONS, V7_DESTINATIONS

    old = open_store(store_path, migrate_to=MIGRATIONS.index(V7_DESTINATIONS) + 1)
    enqueue(old, [message(1, to=ODD_ADDRESSES[:4])])
    old.close()
    db = open_store(store_path)
    try:
        enqueue(db, [message(2, to=ODD_ADDRESSES[3:])])
        stored = db.execute("SELECT address, domain FROM recipients").fetchall()
        assert sorted((a, d) for a, d in stored) == sorted((a, recipient_domain(a)) for a in ODD_ADDRESSES[:4] + ODD_ADDRESSES[3:])
        assert recipient_domain('"a@b"@C.test') == "c.test" and recipient_domain("nodomain") == ""
    finally:
        db.close()


def test_destination_table_blocks_backing_off_and_full_destinations() -> None:
    table = DestinationTable(backoff_base=1.0, backoff_max=10.0)
    rng = random.Random(1)
    table.start(["a.test", "b.test"])
    assert table.blocked(100.0, share=2) == []
    table.start(["a.test"])
    assert table.blocked(100.0, share=2) == ["a.test"]  # in flight fills its share
    # A claimed message waiting for b.test counts toward its share too.
    waiting = q.Claimed(1, "Q1", "smtp", None, None, None, "", 3, 1, 0.0, recipients=["x@b.test"])
    assert table.blocked(100.0, share=2, waiting=[waiting]) == ["a.test", "b.test"]
    was_up, retry_at = table.failed("c.test", "451 later", 100.0, rng)
    assert was_up and retry_at > 100.0
    assert table.failed("c.test", "451 again", 100.5, rng) == (False, retry_at)  # a parallel failure: same wait
    assert "c.test" in table.blocked(100.5, share=2) and "c.test" not in table.blocked(retry_at, share=2)
    table.start(["c.test"])  # its backoff ran out: one probe, and no more until one succeeds
    assert "c.test" in table.blocked(retry_at, share=2)
    table.finish(["c.test"])
    assert table.has_room(["a.test", "c.test"], 100.5, share=2) is False
    assert table.has_room(["a.test", "b.test"], 100.5, share=2) is True
    assert table.answered("c.test", "250 ok", 101.0) is True and table.answered("c.test", "250 ok", 102.0) is False
    changes = {d.domain: d for d in table.take_changes()}
    assert changes["a.test"].in_flight == 2 and changes["c.test"].backoff_until is None
    assert changes["c.test"].last_reply == "250 ok" and table.take_changes() == []
    table.finish(["a.test"])
    assert [d.in_flight for d in table.take_changes()] == [1]


def test_the_claim_passes_over_messages_whose_destinations_cannot_take_mail(db: Any) -> None:
    q.set_next_hop(db, "mx")
    enqueue(db, [
        message(1, priority=1, to=["a@slow.test"]),
        message(2, priority=1, to=["b@slow.test", "c@fast.test"]),
        message(3, priority=3, to=["d@fast.test"]),
    ])
    result = q.dispatch_round(db, q.RoundRequest("t", 60, 10, "mx", skip_destinations=["slow.test"]))
    # Strict priority among what can go: the mixed message (priority 1) first, the
    # slow-only one passed over.
    assert [m.recipients for m in result.claimed] == [["b@slow.test", "c@fast.test"], ["d@fast.test"]]
    result = q.dispatch_round(db, q.RoundRequest("t", 60, 10, "mx"))
    assert [m.recipients for m in result.claimed] == [["a@slow.test"]]


# ---------------------------------------------------------------------------
# The engine against DNS and MX hosts


async def test_mx_routing_preference_fallback_null_mx_nxdomain_routes(store_path: Path, dns: DnsServer, mx_port: int) -> None:
    good, backup, implicit, routed = (CaptureSink(host, mx_port) for host in ("127.0.0.2", "127.0.0.4", "127.0.0.5", "127.0.0.6"))
    silent = SilentHost("127.0.0.3", mx_port)
    dns.set("good.test", "MX", "10 mx1.good.test", "20 mx2.good.test")
    dns.set("mx1.good.test", "A", "127.0.0.2")
    dns.set("mx2.good.test", "A", "127.0.0.9")  # never used: the first answers
    dns.set("backup.test", "MX", "10 dead.backup.test", "20 alive.backup.test")
    dns.set("dead.backup.test", "A", "127.0.0.3")
    dns.set("alive.backup.test", "A", "127.0.0.4")
    dns.set("implicit.test", "A", "127.0.0.5")
    dns.null_mx("null.test")
    # routed.test has no DNS at all: the route decides.
    for sink in (good, backup, implicit, routed):
        await sink.start()
    await silent.start()
    db = open_store(store_path)
    try:
        point_at_mx(db, dns)
        add_route(db, "routed.test", "127.0.0.6", mx_port)
        enqueue(db, [
            message(1, to=["a@good.test"]),
            message(2, to=["b@backup.test"]),
            message(3, to=["c@implicit.test"]),
            message(4, to=["d@null.test"]),
            message(5, to=["e@gone.test"]),
            message(6, to=["f@routed.test"]),
            message(7, to=["g@good.test", "h@null.test"]),
        ])
        config = fast_config(mx_port=mx_port, connect_timeout=0.5)
        async with running_engine(store_path, config):
            await eventually(lambda: sum(s in ("sent", "failed") for s, _r in by_subject(db).values()) == 7)
            found = by_subject(db)
        # One transaction per destination: m7's good.test recipient alone, its null.test one failed.
        assert sorted(m.rcpt_tos[0] for m in good.messages) == ["a@good.test", "g@good.test"]
        assert all(len(m.rcpt_tos) == 1 for m in good.messages)
        assert [m.rcpt_tos for m in backup.messages] == [["b@backup.test"]]
        assert silent.connections >= 1  # tried first (preference 10), then the next host
        assert [m.rcpt_tos for m in implicit.messages] == [["c@implicit.test"]]
        assert [m.rcpt_tos for m in routed.messages] == [["f@routed.test"]]
        assert found["m4 p3"][0] == "failed" and "5.1.10" in (found["m4 p3"][1] or "")
        assert found["m5 p3"][0] == "failed" and "5.1.2" in (found["m5 p3"][1] or "")
        assert found["m7 p3"][0] == "sent"  # one recipient delivered, the other failed for good
        events = reasons(db)
        assert any(r == "mx-host-failed" and "dead.backup.test" in d for r, d in events)
        assert any(r == "failed-null-mx" for r, _d in events)
        assert any(r == "failed-no-domain" for r, _d in events)
        # A null MX fails the recipient at once with a bounce (sender is not null).
        assert sum(r == "bounce-queued" for r, _d in events) >= 3
        null_rcpt = db.execute("SELECT state, last_reply FROM recipients WHERE address = 'h@null.test'").fetchone()
        assert null_rcpt[0] == "failed" and null_rcpt[1].startswith("556 5.1.10")
        # The relay's own DNS verdicts (null MX, no such domain) suppress nobody.
        assert list_suppressions(db) == []
    finally:
        db.close()
        for sink in (good, backup, implicit, routed):
            await sink.stop()
        await silent.stop()


async def test_a_dns_timeout_defers_and_the_destination_backs_off(store_path: Path, dns: DnsServer, mx_port: int) -> None:
    fast = CaptureSink("127.0.0.2", mx_port)
    await fast.start()
    dns.set("fast.test", "MX", "10 mx.fast.test")
    dns.set("mx.fast.test", "A", "127.0.0.2")
    dns.behave("slowdns.test", "silent")
    db = open_store(store_path)
    try:
        point_at_mx(db, dns)
        enqueue(db, [message(1, priority=1, to=["a@slowdns.test"]), message(2, priority=3, to=["b@fast.test"])])
        engine = DeliveryEngine(store_path, fast_config(mx_port=mx_port), owner="engine-test")
        engine.dns_timeout = 0.5  # a DNS timeout in half a second
        await engine.start()
        try:
            await fast.wait_for(1)
            await eventually(lambda: by_subject(db)["m1 p1"][0] == "deferred")
            await eventually(lambda: any(r.domain == "slowdns.test" and r.last_reply for r in destination_rows(db)))
        finally:
            await engine.stop()
        found = by_subject(db)
        assert found["m1 p1"][0] == "deferred" and "4.4.3" in (found["m1 p1"][1] or "")
        assert any(r == "deferred-dns" for r, _d in reasons(db))
        assert any(r == "destination-down" and "slowdns.test" in d for r, d in reasons(db))
        rows = {r.domain: r for r in destination_rows(db)}
        assert rows["slowdns.test"].queued == 1 and rows["slowdns.test"].backoff_until is not None
        assert rows["fast.test"].queued == 0 and (rows["fast.test"].last_reply or "").startswith("250")
    finally:
        db.close()
        await fast.stop()


async def test_a_slow_deferring_destination_never_holds_back_another(store_path: Path, dns: DnsServer, mx_port: int) -> None:
    """Six messages to a destination that thinks, then answers 451, queued first and at
    a higher priority; twenty to one that takes everything. With parallel 3 the slow
    one holds at most 2 connections (parallel - 1), so every fast message is delivered
    while the slow ones are still deferred."""
    slow = SlowDeferringHost("127.0.0.7", mx_port, delay=0.3)
    fast = CaptureSink("127.0.0.8", mx_port)
    await slow.start()
    await fast.start()
    dns.set("slow.test", "MX", "10 mx.slow.test")
    dns.set("mx.slow.test", "A", "127.0.0.7")
    dns.set("fast.test", "MX", "10 mx.fast.test")
    dns.set("mx.fast.test", "A", "127.0.0.8")
    db = open_store(store_path)
    try:
        point_at_mx(db, dns, parallel=3)
        enqueue(db, [message(n, priority=1, to=[f"s{n}@slow.test"]) for n in range(6)])
        enqueue(db, [message(100 + n, priority=3, to=[f"f{n}@fast.test"]) for n in range(20)])
        config = fast_config(mx_port=mx_port, retry_base=30.0, retry_max=60.0)
        async with running_engine(store_path, config):
            await fast.wait_for(20)
            found = by_subject(db)
            # The slow destination's first answers (451) come in after its think time.
            await eventually(lambda: any(r.domain == "slow.test" and r.last_reply for r in destination_rows(db)))
        assert len(fast.messages) == 20
        assert slow.rcpts >= 1  # it was tried, and deferred
        assert 1 <= slow.most_open <= 2  # its share: parallel - 1
        assert all(found[f"m{n} p1"][0] in ("queued", "deferred", "sending") for n in range(6))
        assert not any(found[f"m{n} p1"][0] == "sent" for n in range(6))
        assert {m.rcpt_tos[0] for m in fast.messages} == {f"f{n}@fast.test" for n in range(20)}
        rows = {r.domain: r for r in destination_rows(db)}
        assert rows["slow.test"].queued == 6 and (rows["slow.test"].last_reply or "").startswith("451")
        assert rows["slow.test"].in_flight == 0  # the engine stopped: nothing in flight any more
    finally:
        db.close()
        await slow.stop()
        await fast.stop()


async def test_mx_delivery_needs_a_dotted_server_name(store_path: Path, dns: DnsServer, mx_port: int) -> None:
    db = open_store(store_path)
    try:
        point_at_mx(db, dns)
        enqueue(db, [message(1, to=["a@good.test"])])
        async with running_engine(store_path, fast_config(mx_port=mx_port, server_name="vm")) as engine:
            await eventually(lambda: engine.status[0] == "no server name")
            assert "server_name" in engine.status[1]
            assert engine.counters.dispatched == 0
        assert any(r == "mx-needs-server-name" for r, _d in reasons(db))
        assert by_subject(db)["m1 p3"][0] == "queued"
    finally:
        db.close()


def test_cli_routes_and_mx_mode(cli: Any) -> None:
    assert cli("queue", "next-hop", "mx", check=True).stdout.startswith("Delivery: each recipient domain's MX hosts")
    assert cli.json("queue", "next-hop")["next_hop"] == "mx"
    refused = cli("queue", "next-hop", "mx", "--auth-user", "bob")
    assert refused.returncode == 1 and "never get AUTH" in refused.stderr and "Traceback" not in refused.stderr
    assert cli.json("routes", "add", "Partner.EXAMPLE.", "127.0.0.1:2525") == {
        "domain": "partner.example", "host": "127.0.0.1", "port": 2525,
    }
    assert [r["domain"] for r in cli.json("routes", "ls")] == ["partner.example"]
    bad = cli("routes", "add", "not a domain", "127.0.0.1:25")
    assert bad.returncode == 1 and "is not a domain name" in bad.stderr
    bad_hop = cli("routes", "add", "x.example", "nohost")
    assert bad_hop.returncode == 1 and "HOST:PORT" in bad_hop.stderr
    assert cli.json("routes", "rm", "partner.example") == {"domain": "partner.example", "removed": True}
    missing = cli("routes", "rm", "partner.example")
    assert missing.returncode == 1 and "no route for partner.example" in missing.stderr
    assert cli.json("queue", "destinations") == []
    assert "Smarthost" not in cli("queue", "next-hop", "127.0.0.1:2525", check=True).stdout
    assert cli.json("queue", "next-hop")["next_hop"] == "127.0.0.1:2525"
    # A relay that published an undotted server name will not start MX delivery: the
    # switch says so at once (stored all the same), and not for a dotted name.
    db = open_store(cli.store)
    try:
        set_setting(db, Keys.SERVER_NAME, "vm")
    finally:
        db.close()
    warned = cli("queue", "next-hop", "mx", check=True)
    assert warned.stderr.strip().splitlines() == [
        "warning: the relay's server name 'vm' has no dot, so MX delivery waits — "
        "set server_name (SMTPPLUS_SERVER_NAME or the TOML file) and restart the relay"
    ]
    assert cli.json("queue", "next-hop")["next_hop"] == "mx"
    db = open_store(cli.store)
    try:
        set_setting(db, Keys.SERVER_NAME, "relay.example.test")
    finally:
        db.close()
    assert cli("queue", "next-hop", "mx", check=True).stderr == ""


class EhloSink(CaptureSink):
    """A capture sink that also notes the name each client gave in EHLO."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ehlo_names: list[str] = []

    async def record(self, envelope: Envelope, session: Session) -> Any:
        self.ehlo_names.append(str(session.host_name))
        return await super().record(envelope, session)


async def test_starttls_to_mx_is_opportunistic_verified_by_mx_name_when_required_and_never_auth(
    store_path: Path, dns: DnsServer, mx_port: int, tls_ca: Any, tmp_path: Path,
) -> None:
    import ssl

    cert = tls_ca.issue_cert("mx.tls.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(ca)
    secure = EhloSink("127.0.0.2", mx_port, tls_context=context, accept_auth=True)
    plain = EhloSink("127.0.0.3", mx_port, accept_auth=True)  # no STARTTLS at all
    for sink in (secure, plain):
        await sink.start()
    dns.set("tls.test", "MX", "10 mx.tls.test")
    dns.set("mx.tls.test", "A", "127.0.0.2")
    dns.set("plain.test", "MX", "10 mx.plain.test")
    dns.set("mx.plain.test", "A", "127.0.0.3")
    db = open_store(store_path)
    try:
        from relay.admin import dkim as dkim_admin

        dkim_admin.add(db, "example.com", algorithm="ed25519")  # the test messages' sender domain
        # An AUTH user left over from a smarthost: an MX never gets it.
        q.set_next_hop(db, "127.0.0.1:2525", user="smarthost-user", password="secret")
        point_at_mx(db, dns)
        enqueue(db, [message(1, to=["a@tls.test"]), message(2, to=["b@plain.test"])])
        async with running_engine(store_path, fast_config(mx_port=mx_port, server_name="relay.example.test")):
            await secure.wait_for(1)
            await plain.wait_for(1)
        assert secure.messages[0].tls and not plain.messages[0].tls  # opportunistic: TLS where offered
        assert secure.messages[0].auth_user is None and plain.messages[0].auth_user is None
        assert secure.ehlo_names == ["relay.example.test"] and plain.ehlo_names == ["relay.example.test"]
        # DKIM: mail from a domain with a key arrives signed through MX delivery too.
        assert all(b"DKIM-Signature:" in m.data for m in (secure.messages[0], plain.messages[0]))

        # Required: the MX's certificate is checked against its MX name (the connection goes
        # to its address); a host without STARTTLS defers.
        q.set_next_hop(db, "mx", tls="required", cafile=str(ca))
        enqueue(db, [message(3, to=["c@tls.test"]), message(4, to=["d@plain.test"])])
        async with running_engine(store_path, fast_config(mx_port=mx_port, server_name="relay.example.test")):
            await secure.wait_for(2)
            await eventually(lambda: by_subject(db)["m4 p3"][0] == "deferred")
        assert secure.messages[1].tls and len(plain.messages) == 1
        assert "STARTTLS" in (by_subject(db)["m4 p3"][1] or "")
    finally:
        db.close()
        for sink in (secure, plain):
            await sink.stop()


def spawn_relay(env: dict[str, str], ready: Path, mx_port: int) -> Any:
    import subprocess
    import sys

    from tests.conftest import ROOT

    return subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "relay", "--host", "127.0.0.1", "--ports", "0",
         "--mx-port", str(mx_port), "--ready-file", str(ready)],
        # Not a pipe: one nobody reads while the relay runs fills and blocks its loop.
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def test_a_running_relay_switches_from_smarthost_to_mx_and_back(
    cli: Any, dns: DnsServer, mx_port: int, tmp_path: Path,
) -> None:
    """`smtpplus relay --mx-port` as a real process; `queue next-hop mx` and back while it runs."""
    import json

    smarthost = CaptureSink("127.0.0.1", 0)
    mx = CaptureSink("127.0.0.2", mx_port)
    await smarthost.start()
    await mx.start()
    dns.mail_domain("switch.test", "127.0.0.2")
    env = dict(cli.env)
    env.update({
        "SMTPPLUS_DATA_DIR": str(tmp_path / "relay-data"), "SMTPPLUS_SERVER_NAME": "relay.example.test",
        "SMTPPLUS_DNS_RESOLVER": f"127.0.0.1:{dns.port}", "SMTPPLUS_RETRY_BASE": "0.2", "SMTPPLUS_RETRY_MAX": "0.5",
    })
    ready = tmp_path / "ready.json"

    async def smtpplus(*args: str) -> str:  # off the loop: the sinks live on it
        return str((await asyncio.to_thread(cli, *args, check=True)).stdout)

    def delivery_detail() -> str:
        return q.queue_overview(db).delivery_state[1]

    await smtpplus("queue", "next-hop", f"127.0.0.1:{smarthost.port}")
    proc = spawn_relay(env, ready, mx_port)
    db = open_store(cli.store)
    try:
        await eventually(lambda: ready.exists() and json.loads(ready.read_text())["served"], within=30)
        enqueue(db, [message(1, to=["a@switch.test"])])
        await smarthost.wait_for(1)
        assert (await smtpplus("queue", "next-hop", "mx")).startswith("Delivery: each recipient domain's MX hosts")
        await eventually(lambda: delivery_detail() == "to each domain's MX hosts")
        enqueue(db, [message(2, to=["b@switch.test"])])
        await mx.wait_for(1)
        await smtpplus("queue", "next-hop", f"127.0.0.1:{smarthost.port}")
        await eventually(lambda: delivery_detail() == f"to 127.0.0.1:{smarthost.port}")
        enqueue(db, [message(3, to=["c@switch.test"])])
        await smarthost.wait_for(2)
        assert [m.subject for m in smarthost.messages] == ["m1 p3", "m3 p3"]
        assert [m.subject for m in mx.messages] == ["m2 p3"]
    finally:
        db.close()
        proc.terminate()
        await eventually(lambda: proc.poll() is not None, within=15)
        await smarthost.stop()
        await mx.stop()


async def test_an_mx_host_at_the_relays_public_address_is_this_relay(store_path: Path, dns: DnsServer, mx_port: int) -> None:
    """Behind NAT the relay's public address is not one of its interfaces (Postfix's
    proxy_interfaces): with `domains settings --public-address`, an MX host there is
    this relay — never dialled; nothing better is a loop (5.4.6), a better host takes
    the mail."""
    public, better = CaptureSink("127.0.0.5", mx_port), CaptureSink("127.0.0.2", mx_port)
    dns.set("nat.test", "MX", "10 mx.nat.test")
    dns.set("mx.nat.test", "A", "127.0.0.5")  # the NAT's address, forwarded to this relay
    dns.set("backup.test", "MX", "10 mx.backup.test", "20 mx.nat.test")  # this relay as the backup MX
    dns.set("mx.backup.test", "A", "127.0.0.2")
    for sink in (public, better):
        await sink.start()
    db = open_store(store_path)
    try:
        point_at_mx(db, dns)
        set_setting(db, Keys.PUBLIC_ADDRESS, "127.0.0.5")
        enqueue(db, [message(1, to=["a@nat.test"]), message(2, to=["b@backup.test"])])
        config = fast_config(mx_port=mx_port, connect_timeout=0.5)
        async with running_engine(store_path, config, own_addresses=[("127.0.0.1", mx_port)]):
            await eventually(lambda: [by_subject(db)[f"m{n} p3"][0] for n in (1, 2)] == ["failed", "sent"])
            found = by_subject(db)
        assert (found["m1 p3"][1] or "").startswith("550 5.4.6 mail for nat.test loops back to myself")
        assert public.messages == [] and [m.rcpt_tos for m in better.messages] == [["b@backup.test"]]
    finally:
        db.close()
        for sink in (public, better):
            await sink.stop()


async def test_mx_hosts_and_routes_that_are_this_relay_are_never_dialled(store_path: Path, dns: DnsServer, mx_port: int) -> None:
    """An MX host or a route at one of the relay's own listeners would loop: an MX list
    cut at this relay (Postfix's rule) with nothing better fails 5.4.6; a route to
    itself is the operator's mistake — the mail waits, as with a next hop that is itself."""
    better, worse = CaptureSink("127.0.0.2", mx_port), CaptureSink("127.0.0.3", mx_port)
    dns.set("loop.test", "MX", "10 self.loop.test")
    dns.set("self.loop.test", "A", "127.0.0.1")
    dns.set("ok.test", "MX", "10 mx.ok.test", "20 self.loop.test")  # this relay as the backup MX
    dns.set("mx.ok.test", "A", "127.0.0.2")
    dns.set("backup.test", "MX", "10 self.loop.test", "20 mx.backup.test")  # this relay is the best MX
    dns.set("mx.backup.test", "A", "127.0.0.3")
    for sink in (better, worse):
        await sink.start()
    db = open_store(store_path)
    try:
        point_at_mx(db, dns)
        add_route(db, "routed-self.test", "127.0.0.1", mx_port)
        enqueue(db, [
            message(1, to=["a@loop.test"]), message(2, to=["b@ok.test"]),
            message(3, to=["c@backup.test"]), message(4, to=["d@routed-self.test"]),
        ])
        config = fast_config(mx_port=mx_port, connect_timeout=0.5)
        async with running_engine(store_path, config, own_addresses=[("127.0.0.1", mx_port)]):
            await eventually(lambda: [by_subject(db)[f"m{n} p3"][0] for n in (1, 2, 3)] == ["failed", "sent", "failed"])
            await eventually(lambda: any(r == "route-self" for r, _d in reasons(db)))
            found = by_subject(db)
        assert (found["m1 p3"][1] or "").startswith("550 5.4.6 mail for loop.test loops back to myself")
        assert (found["m3 p3"][1] or "").startswith("550 5.4.6 mail for backup.test loops back to myself")
        assert [m.rcpt_tos for m in better.messages] == [["b@ok.test"]]
        assert worse.messages == []  # worse than this relay: never tried
        assert found["m4 p3"][0] == "deferred" and (found["m4 p3"][1] or "").startswith("451 4.4.6 route for routed-self.test")
        assert sum(r == "failed-mx-loop" for r, _d in reasons(db)) == 2
        assert sum(r == "bounce-queued" for r, _d in reasons(db)) == 2
    finally:
        db.close()
        for sink in (better, worse):
            await sink.stop()
