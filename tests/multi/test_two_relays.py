"""Two ``smtpplus relay`` subprocesses on one PostgreSQL store (a real server:
tests/pg.py) delivering to a real capture sink: exactly once without crashes, global
priority order, kill -9 of one under load (nothing acknowledged lost, its claims taken
over by the other through its free advisory lock), ``--reuse-port``, and the reports
listing both relays."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.sink import CaptureSink, SinkRecord
from relay.passwords import hash_password
from relay.store import directory, open_store
from relay.store.settings import Keys, set_setting
from tests.conftest import ROOT
from tests.delivery.conftest import eventually, message
from tests.delivery.test_crash import PASSWORD, send_load

STALE_AFTER = 2.0


@pytest.fixture
def store(pg_url: str) -> Iterator[Any]:
    db = open_store(pg_url)
    directory.create_list(db, "crash")
    directory.create_user(db, list_name="crash", username="crash-user", password_hash=hash_password(PASSWORD),
                          domains=["crash.example"], active=True)
    directory.approve_identities(db, ["crash.example"], "test setup")
    yield db
    db.close()


def _env(pg_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPPLUS_")}
    env.update({
        "SMTPPLUS_DB": pg_url,
        "HOME": str(tmp_path / "home"),
        "SMTPPLUS_DATA_DIR": str(tmp_path / "relay-data"),
        "SMTPPLUS_STALE_AFTER": str(STALE_AFTER),
        "SMTPPLUS_HEARTBEAT_INTERVAL": "0.2",
        # Long leases: a dead relay's claims can come back only by its free lock.
        "SMTPPLUS_MESSAGE_LEASE": "120",
        "SMTPPLUS_RETRY_BASE": "0.2",
        "SMTPPLUS_RETRY_MAX": "0.5",
        "SMTPPLUS_SERVER_NAME": "relay.test",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    })
    return env


class Relay:
    def __init__(self, env: dict[str, str], tmp_path: Path, name: str, sink_port: int, *args: str) -> None:
        self.ready_path = tmp_path / f"{name}.ready.json"
        self.log = (tmp_path / f"{name}.stderr").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from console.cli import main; main()", "relay", "--host", "127.0.0.1",
             "--allow-plain-auth", "--next-hop", f"127.0.0.1:{sink_port}", "--ready-file", str(self.ready_path),
             *(args or ("--ports", "0"))],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log,
        )

    async def ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while not self.ready_path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited {self.proc.returncode}: {self.output()}")
            assert time.monotonic() < deadline, "relay not ready"
            await asyncio.sleep(0.05)
        return dict(json.loads(self.ready_path.read_text()))

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()

    async def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        await eventually(lambda: self.proc.poll() is not None, within=20)  # the sink on this loop answers QUIT
        self.log.close()
        return self.proc.returncode


async def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # Off the loop: the capture sink lives on it and must keep answering the relays.
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", "from console.cli import main; main()", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


async def _status(env: dict[str, str]) -> Any:
    return json.loads((await _cli(env, "status", "--json")).stdout)


def _all_of(expected: set[str], records: list[SinkRecord]) -> bool:
    return {r.message_id for r in records} >= expected


async def test_mail_accepted_by_either_relay_is_delivered_exactly_once_and_both_are_reported(
    store: Any, pg_url: str, tmp_path: Path
) -> None:
    env = _env(pg_url, tmp_path)
    async with CaptureSink(port=0, keep_data=False) as sink:
        one, two = Relay(env, tmp_path, "one", sink.port), Relay(env, tmp_path, "two", sink.port)
        try:
            ports = [(await one.ready())["served"][0], (await two.ready())["served"][0]]
            accepted: dict[str, str] = {}
            for n, port in enumerate(ports):
                stop = asyncio.Event()
                load = asyncio.create_task(send_load(port, n * 100_000, accepted, stop, connections=2))
                await eventually(lambda want=40 * (n + 1): len(accepted) >= want, within=30, every=0.01)
                stop.set()
                await load
            await sink.wait_until(functools.partial(_all_of, set(accepted)), within=60)

            status = await _status(env)
            assert status["alive"] and sorted(r["pid"] for r in status["relays"]) == sorted([one.proc.pid, two.proc.pid])
            assert all(r["tls_fingerprint"] for r in status["relays"])
            # One data dir: one generated pair, served by both (they generate it at once).
            assert len({r["tls_fingerprint"] for r in status["relays"]}) == 1
            assert sorted(p for r in status["relays"] for p in r["ports"]) == sorted(ports)
            exported = json.loads((await _cli(env, "tls", "export", "--json")).stdout)
            assert len(exported["relays"]) == 2
            shown = (await _cli(env, "lists", "show", "crash")).stdout
            assert "Relay 1" in shown and "Relay 2" in shown and "Relay 3" not in shown
        finally:
            codes = [await one.stop(), await two.stop()]
        seen = Counter(r.message_id for r in sink.messages)
    assert codes == [0, 0]
    assert len(accepted) >= 80 and all(seen[m] == 1 for m in accepted)  # no crash: exactly once


async def test_priority_is_global_across_two_relays(store: Any, pg_url: str, tmp_path: Path) -> None:
    from relay.store.intake import insert_messages

    env = _env(pg_url, tmp_path)
    set_setting(store, Keys.PAUSED, True)
    set_setting(store, Keys.PARALLEL, 2)  # a total: one connection each
    insert_messages(store, [message(n, priority=5) for n in range(30)])
    insert_messages(store, [message(100 + n, priority=1) for n in range(30)])
    async with CaptureSink(port=0, keep_data=False) as sink:
        one, two = Relay(env, tmp_path, "one", sink.port), Relay(env, tmp_path, "two", sink.port)
        try:
            await one.ready()
            await two.ready()
            deadline = time.monotonic() + 20
            while len((await _status(env)).get("relays") or []) < 2:
                assert time.monotonic() < deadline, "the two relays are not both listed"
                await asyncio.sleep(0.2)
            set_setting(store, Keys.PAUSED, False)
            records = await sink.wait_for(60, within=60)
        finally:
            await one.stop()
            await two.stop()
    order = [r.subject for r in records]
    first_low = next(i for i, s in enumerate(order) if s and s.endswith("p5"))
    late_high = [s for s in order[first_low:] if s and s.endswith("p1")]
    # When the first p5 was claimed every p1 was claimed: only those then in flight (at
    # most the total parallel, 2) may arrive after it.
    assert len(late_high) <= 2, order
    assert sorted(order) == sorted([f"m{n} p5" for n in range(30)] + [f"m{100 + n} p1" for n in range(30)])


class SlowSink(CaptureSink):
    """Each message takes 0.3 s to accept: the relays always hold claims in flight."""

    async def record(self, envelope: Any, session: Any) -> SinkRecord:
        await asyncio.sleep(0.3)
        return await super().record(envelope, session)


async def test_kill_9_of_one_relay_under_load_loses_nothing_and_the_other_takes_its_claims(
    store: Any, pg_url: str, tmp_path: Path
) -> None:
    env = _env(pg_url, tmp_path)
    async with SlowSink(port=0, keep_data=False) as sink:
        victim, survivor = Relay(env, tmp_path, "victim", sink.port), Relay(env, tmp_path, "survivor", sink.port)
        try:
            ports = [(await victim.ready())["served"][0], (await survivor.ready())["served"][0]]
            accepted: dict[str, str] = {}
            stop = asyncio.Event()
            loads = [asyncio.create_task(send_load(port, n * 100_000, accepted, stop, connections=2))
                     for n, port in enumerate(ports)]
            await eventually(lambda: len(accepted) >= 60 and len(sink.messages) >= 5, within=60, every=0.01)
            os.kill(victim.proc.pid, signal.SIGKILL)
            killed_at = store.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
            victim.proc.wait(10)
            # What it held when it died (nothing takes it over before its beat is stale_after old).
            in_flight = store.execute(
                "SELECT count(*) FROM messages WHERE state = 'sending' AND lease_owner IN "
                "(SELECT substr(key, 12) FROM settings WHERE key LIKE 'relay.live.%' AND value LIKE ?)",
                (f'%"pid": {victim.proc.pid},%',),
            ).fetchone()[0]
            # Its heartbeat row as it died (the list of live relays leaves it out now its
            # lock is free): its last beat, stamped with the database's clock.
            rows = [json.loads(value) for (value,) in store.execute(
                "SELECT value FROM settings WHERE key LIKE 'relay.live.%'").fetchall()]
            last_beat = next((float(r["beat_at"]) for r in rows if r.get("pid") == victim.proc.pid), None)
            stop.set()
            await asyncio.gather(*loads)
            await sink.wait_until(functools.partial(_all_of, set(accepted)), within=120)
            reclaimed = store.execute(
                "SELECT at FROM events WHERE reason = 'lease-reclaimed' AND detail LIKE '%died (takeover)%'"
            ).fetchall()
        finally:
            await victim.stop()
            await survivor.stop()
        survivor_log = survivor.output()
        seen = Counter(r.message_id for r in sink.messages if r.message_id in accepted)
    # The survivor's log says what it took over (every event it records is a log line).
    assert f"pid {victim.proc.pid} on" in survivor_log and "relay-takeover" in survivor_log, survivor_log[-2000:]
    assert in_flight > 0, "the victim held no claims when it was killed"
    assert len(reclaimed) >= in_flight
    # Taken over by the database's clock within stale_after + 5 s (leases are 120 s):
    # the reclaim events and the heartbeats are both stamped with the server's now(),
    # so this measures from the victim's last beat (at or before the kill) to the last
    # of its claims back in the queue — never the test's clock. Not before it was dead:
    # stale_after after its last beat.
    assert last_beat is not None, "the victim had no heartbeat row"
    assert last_beat <= killed_at
    taken_over = [at - last_beat for (at,) in reclaimed]
    assert min(taken_over) >= STALE_AFTER, taken_over
    assert max(taken_over) < STALE_AFTER + 5, taken_over
    assert set(seen) == set(accepted)  # nothing acknowledged lost; duplicates only from in-flight mail
    assert sum(n - 1 for n in seen.values()) <= in_flight


async def test_two_relays_share_one_port_with_reuse_port(store: Any, pg_url: str, tmp_path: Path) -> None:
    from tests.pg import free_port

    env = _env(pg_url, tmp_path)
    port = free_port()
    async with CaptureSink(port=0, keep_data=False) as sink:
        one = Relay(env, tmp_path, "one", sink.port, "--ports", str(port), "--tls-ports", "none", "--reuse-port")
        two = Relay(env, tmp_path, "two", sink.port, "--ports", str(port), "--tls-ports", "none", "--reuse-port")
        try:
            assert (await one.ready())["served"] == [port] and (await two.ready())["served"] == [port]
            accepted: dict[str, str] = {}
            stop = asyncio.Event()
            load = asyncio.create_task(send_load(port, 0, accepted, stop, connections=8))
            await eventually(lambda: len(accepted) >= 40, within=30, every=0.01)
            stop.set()
            await load
            await sink.wait_until(functools.partial(_all_of, set(accepted)), within=60)
            status = await _status(env)
            assert [r["ports"] for r in status["relays"]] == [[port], [port]]
        finally:
            assert [await one.stop(), await two.stop()] == [0, 0]
