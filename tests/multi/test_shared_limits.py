"""Limits that are totals across the relays of one PostgreSQL store, seen from outside:
two ``smtpplus relay`` subprocesses delivering in MX mode through a route to one slow
capture sink never hold more connections to that destination at once than
``max_connections_per_destination`` — the sink counts them — and the connection pools
of four relays, a console and a CLI call fit PostgreSQL's default ``max_connections``,
counted in ``pg_stat_activity``."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from harness.sink import CaptureSink, SinkRecord
from relay.config import RelayConfig
from relay.passwords import hash_password
from relay.store import directory, open_store
from relay.store import queue as q
from relay.store.intake import insert_messages
from relay.store.routing import add_route
from relay.store.settings import Keys, set_setting
from tests.delivery.conftest import counting_smtp, message
from tests.delivery.test_crash import PASSWORD, send_load
from tests.multi.test_two_relays import Relay, _env, _status

PER_DESTINATION = 4  # a total across the relays: 2 each while two are live
# How long an engine may go on with the relay count it saw last (it counts the live
# relays every min(5 s, lease / 2): relay/delivery/engine.py), plus a margin.
RECOUNT = 5.0 + 3.0


class CountingSink(CaptureSink):
    """A capture sink that counts the connections it holds at once (``most_open``);
    each message takes 0.4 s to accept, so the relays always want more connections."""

    def __init__(self) -> None:
        super().__init__(port=0, keep_data=False)
        self.open = 0
        self.most_open = 0

    async def start(self) -> int:
        port = await super().start()
        assert self._server is not None
        self._server.close()  # listen again on its port, with a protocol that counts
        await self._server.wait_closed()
        outer = self
        made = self._protocols

        Counting = counting_smtp(outer)

        handler = _Recording(self)

        def factory() -> SMTP:
            protocol = Counting(handler, data_size_limit=None, decode_data=False, hostname="dest.test")
            made.add(protocol)
            return protocol

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(factory, host=self.host, port=port, reuse_address=True)
        return port

    async def record(self, envelope: Envelope, session: Session) -> SinkRecord:
        await asyncio.sleep(0.4)
        return await super().record(envelope, session)


class _Recording:
    def __init__(self, sink: CountingSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self.sink.record(envelope, session)
        return "250 2.0.0 Ok"


async def test_connections_per_destination_are_a_total_across_relays(pg_url: str, tmp_path: Path) -> None:
    env = _env(pg_url, tmp_path)
    env["SMTPPLUS_MAX_CONNECTIONS_PER_DESTINATION"] = str(PER_DESTINATION)
    db = open_store(pg_url)
    try:
        set_setting(db, Keys.PAUSED, True)
        q.set_parallel(db, 20)  # far above: only the per-destination limit binds
        async with CountingSink() as sink:
            q.set_next_hop(db, "mx")  # the store's value wins over the relays' --next-hop
            add_route(db, "dest.test", "127.0.0.1", sink.port)  # MX mode, routed: no DNS needed
            insert_messages(db, [message(n, to=[f"r{n}@dest.test"]) for n in range(40)])
            one, two = Relay(env, tmp_path, "one", sink.port), Relay(env, tmp_path, "two", sink.port)
            try:
                await one.ready()
                await two.ready()
                deadline = asyncio.get_running_loop().time() + 30
                while len((await _status(env)).get("relays") or []) < 2:
                    assert asyncio.get_running_loop().time() < deadline, "the two relays are not both listed"
                    await asyncio.sleep(0.2)
                await asyncio.sleep(RECOUNT)  # each engine has counted both relays
                set_setting(db, Keys.PAUSED, False)
                records = await sink.wait_for(40, within=120)
            finally:
                codes = [await one.stop(), await two.stop()]
        assert codes == [0, 0]
        assert sorted(r.subject or "" for r in records) == sorted(f"m{n} p3" for n in range(40))
        # Each relay alone may hold 4; together they hold at most 4, and more than one
        # relay's share (2) shows both were delivering at once.
        assert 2 < sink.most_open <= PER_DESTINATION, sink.most_open
    finally:
        db.close()


# What a relay process holds besides its pool: one listening connection per change feed
# (the delivery engine's and the metrics') and the connection holding its advisory lock
# (relay/store/postgres/relays.py). A console: its store and its watcher's feed. A CLI
# call: one (docs/postgresql.md).
RELAY_EXTRAS = 2 + 1
CONSOLE = 2
CLI_CALL = 1
RELAYS = 4


def _connections(db: Any) -> Counter[str]:
    """This database's client connections now, by application name (not the asker's)."""
    rows = db.execute(
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    ).fetchall()
    return Counter(str(row[0]) for row in rows)


async def test_four_relays_a_console_and_a_cli_call_fit_postgresqls_default_max_connections(
    pg_url: str, tmp_path: Path
) -> None:
    """The bound from the settings' real defaults fits the server's compiled-in default
    ``max_connections`` less its reserved slots; four relays under load (mail accepted
    and delivered by each) never hold more than that bound in ``pg_stat_activity``."""
    db = open_store(pg_url)
    try:
        # PostgreSQL's defaults (boot_val: what a server has when nobody set them; the
        # test cluster itself runs with more).
        defaults = dict(db.execute(
            "SELECT name, boot_val FROM pg_settings WHERE name IN "
            "('max_connections', 'superuser_reserved_connections', 'reserved_connections')"
        ).fetchall())
        usable = int(defaults["max_connections"]) - int(defaults["superuser_reserved_connections"]) - int(
            defaults.get("reserved_connections") or 0)
        per_relay = RelayConfig().store_pool_size + RELAY_EXTRAS
        worst = RELAYS * per_relay + CONSOLE + CLI_CALL
        # With headroom: 40 % of the usable slots stay free for more consoles, CLI calls, other clients.
        assert worst <= usable * 0.6, (worst, usable)

        directory.create_list(db, "crash")
        directory.create_user(db, list_name="crash", username="crash-user", password_hash=hash_password(PASSWORD),
                              domains=["crash.example"], active=True)
        directory.approve_identities(db, ["crash.example"], "test setup")
        env = _env(pg_url, tmp_path)
        most = 0
        seen: Counter[str] = Counter()
        async with CaptureSink(port=0, keep_data=False) as sink:
            relays = [Relay(env, tmp_path, f"r{n}", sink.port) for n in range(RELAYS)]
            try:
                ports = [(await relay.ready())["served"][0] for relay in relays]
                accepted: dict[str, str] = {}
                stop = asyncio.Event()
                loads = [asyncio.create_task(send_load(port, n * 100_000, accepted, stop, connections=2))
                         for n, port in enumerate(ports)]
                deadline = asyncio.get_running_loop().time() + 60
                while len(accepted) < 200 or len(sink.messages) < 100:
                    assert asyncio.get_running_loop().time() < deadline, (len(accepted), len(sink.messages))
                    now = _connections(db)
                    if now.total() > most:
                        most, seen = now.total(), now
                    await asyncio.sleep(0.05)
                status = await _status(env)  # a CLI call while they run
                stop.set()
                await asyncio.gather(*loads)
            finally:
                codes = [await relay.stop() for relay in relays]
        assert codes == [0] * RELAYS
        assert len(status["relays"]) == RELAYS
        assert seen["smtpplus-relay"] <= RELAYS  # one advisory-lock connection each
        assert 0 < most <= RELAYS * per_relay, seen
    finally:
        db.close()
