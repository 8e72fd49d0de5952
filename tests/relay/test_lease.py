"""One relay per store: the lease, its heartbeat, takeover of a dead relay."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from relay.reasons import Reason
from relay.service import RelayService
from relay.store import lease
from relay.store.lease import RelayAlreadyRunning
from relay.store.settings import Keys, get_setting
from relay.store.sqlite.lock import StoreLock, lock_state
from tests.relay.support import Seeded, events, relay_config, rows, running_relay


async def test_second_relay_on_a_live_store_is_refused(relay: RelayService, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    second = RelayService(seeded.store_path, relay_config(tmp_path, tls_files))
    with pytest.raises(RelayAlreadyRunning) as refused:
        await second.start()
    message = str(refused.value)
    assert "already running" in message and "pid" in message and "\n" not in message
    # The refused relay left the live one's lease alone.
    status = rows(seeded.store_path, lease.relay_status)
    assert status.alive and status.owner == relay.owner


async def test_status_while_running_and_after_stop(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files, ports="0*3")) as relay:
        status = rows(seeded.store_path, lease.relay_status)
        assert status.alive and status.ready and status.listen_host == "127.0.0.1"
        assert sorted(status.served) == sorted(relay.served) and len(status.served) == 3
        assert status.tls_fingerprint == relay.tls.fingerprint  # type: ignore[union-attr]
        assert status.paused is True  # seeded by the test config
        assert rows(seeded.store_path, get_setting, Keys.TLS_CERT_PEM).startswith("-----BEGIN CERTIFICATE-----")
    status = rows(seeded.store_path, lease.relay_status)
    assert not status.alive and status.stopped_at is not None
    lifecycle = {str(Reason.RELAY_STARTED), str(Reason.RELAY_STOPPED)}
    reasons = [e.reason for e in events(seeded.store_path, kind="relay") if e.reason in lifecycle]
    assert reasons == [str(Reason.RELAY_STARTED), str(Reason.RELAY_STOPPED)]


async def test_stale_heartbeat_is_taken_over_at_once(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    # A relay that died 11 s ago without releasing its lease.
    rows(seeded.store_path, lease.acquire, "dead-relay", 4242, "oldhost", "127.0.0.1", 10.0, now=time.time() - 11)
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files)) as relay:
        assert relay.took_over and relay.reclaimed_from == "dead-relay"
    [event] = events(seeded.store_path, reason=str(Reason.RELAY_TAKEOVER))
    assert "4242" in event.detail


async def test_a_cleanly_stopped_relay_is_not_a_takeover(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files)) as first:
        pass
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files)) as second:
        assert second.reclaimed_from == first.owner and not second.took_over
    assert events(seeded.store_path, reason=str(Reason.RELAY_TAKEOVER)) == []


def test_lease_functions(seeded: Seeded) -> None:
    now = 1_000_000.0
    assert rows(seeded.store_path, lease.acquire, "a", 1, "h", "0.0.0.0", 10.0, now=now) is None
    with pytest.raises(RelayAlreadyRunning) as refused:
        rows(seeded.store_path, lease.acquire, "b", 2, "h2", "0.0.0.0", 10.0, now=now + 9.5)
    assert refused.value.pid == 1 and refused.value.age == pytest.approx(9.5)
    assert rows(seeded.store_path, lease.heartbeat, "a", now=now + 9) is True
    assert rows(seeded.store_path, lease.relay_status, 10.0, now=now + 18).alive
    assert not rows(seeded.store_path, lease.relay_status, 10.0, now=now + 19.5).alive
    assert rows(seeded.store_path, lease.acquire, "b", 2, "h2", "0.0.0.0", 10.0, now=now + 19.5) == "a"
    assert rows(seeded.store_path, lease.heartbeat, "a", now=now + 20) is False  # "a" lost it
    rows(seeded.store_path, lease.release, "a")  # not the owner: nothing happens
    assert rows(seeded.store_path, lease.relay_status, 10.0, now=now + 20).owner == "b"


def test_ready_only_after_this_relay_published_its_ports(seeded: Seeded) -> None:
    """A relay is alive from its lease on, but ready (`status --wait`) only once it marked
    its lease listening: a previous relay's ports are never taken for its own."""
    now = time.time()
    rows(seeded.store_path, lease.acquire, "a", 1, "h", "0.0.0.0", 10.0, now=now)
    assert rows(seeded.store_path, lease.relay_status, 10.0, now=now).alive
    assert not rows(seeded.store_path, lease.relay_status, 10.0, now=now).ready
    rows(seeded.store_path, lease.mark_listening, "b")  # not the owner: nothing happens
    assert not rows(seeded.store_path, lease.relay_status, 10.0, now=now).ready
    rows(seeded.store_path, lease.mark_listening, "a", now=now)
    assert rows(seeded.store_path, lease.heartbeat, "a", now=now + 5) is True  # keeps the mark
    assert rows(seeded.store_path, lease.relay_status, 10.0, now=now + 5).ready
    assert not rows(seeded.store_path, lease.relay_status, 10.0, now=now + 20).ready  # dead: not ready
    rows(seeded.store_path, lease.release, "a", now=now + 6)
    # The next relay's lease starts over: not ready until it publishes its own ports.
    rows(seeded.store_path, lease.acquire, "b", 2, "h", "0.0.0.0", 10.0, now=now + 7)
    status = rows(seeded.store_path, lease.relay_status, 10.0, now=now + 7)
    assert status.alive and status.owner == "b" and not status.ready


async def test_a_relay_whose_lease_was_taken_stops_by_itself(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = relay_config(tmp_path, tls_files, heartbeat_interval=0.1)
    async with running_relay(seeded.store_path, config) as relay:
        # Another relay presumed this one dead (a stale_after of 0 s) and took the lease.
        rows(seeded.store_path, lease.acquire, "usurper", 99, "elsewhere", "127.0.0.1", 0.0, now=time.time() + 1)
        await asyncio.wait_for(relay.wait_stopped(), 10)
        assert not relay.running
    assert rows(seeded.store_path, lease.relay_status).owner == "usurper"


async def test_heartbeat_keeps_the_lease_fresh(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = relay_config(tmp_path, tls_files, heartbeat_interval=0.1)
    async with running_relay(seeded.store_path, config):
        first = rows(seeded.store_path, get_setting, Keys.LEASE)["heartbeat_at"]
        for _ in range(100):
            await asyncio.sleep(0.05)
            if rows(seeded.store_path, get_setting, Keys.LEASE)["heartbeat_at"] > first:
                break
        assert rows(seeded.store_path, get_setting, Keys.LEASE)["heartbeat_at"] > first


async def test_stop_lets_a_transaction_finish_and_turns_idle_sessions_away(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    from tests.relay.support import Raw, stored_messages

    relay = RelayService(seeded.store_path, relay_config(tmp_path, tls_files))
    await relay.start()
    idle = await Raw.connect(relay.served[0])
    await idle.starttls(tls_files)
    assert (await idle.login("alice"))[0] == 235
    busy = await Raw.connect(relay.served[1])
    await busy.starttls(tls_files)
    assert (await busy.login("alice"))[0] == 235
    await busy.command("MAIL FROM:<x@a.example>")
    await busy.command("RCPT TO:<r@d.example>")
    assert (await busy.command("DATA"))[0] == 354
    await busy.send(b"From: x@a.example\r\n\r\nfirst half\r\n")

    stopping = asyncio.create_task(relay.stop(grace=10))
    code, text = await idle.reply()
    assert (code, text) == (421, "421 4.3.2 Service shutting down, try again later")
    assert await idle.closed()
    # No new connections once stopping.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", relay.served[0])
    # The transaction under way completes and is acknowledged, then the session ends.
    await busy.send(b"second half\r\n.\r\n")
    code, text = await busy.reply()
    assert code == 250 and "queued as" in text
    assert (await busy.reply())[0] == 421
    await asyncio.wait_for(stopping, 10)
    assert len(stored_messages(seeded.store_path)) == 1
    assert not rows(seeded.store_path, lease.relay_status).alive


# ---------------------------------------------------------------------------
# The OS lock: liveness a stall or a full disk cannot fake


def _age_heartbeat(store_path: Path, seconds: float) -> None:
    """Make the live relay's heartbeat look ``seconds`` old (what a stalled loop or a
    full disk leaves behind)."""
    from relay.store.settings import set_setting

    current = rows(store_path, get_setting, Keys.LEASE)
    current["heartbeat_at"] = time.time() - seconds
    rows(store_path, set_setting, Keys.LEASE, current)


async def test_a_stalled_heartbeat_does_not_make_a_live_relay_dead(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = relay_config(tmp_path, tls_files, heartbeat_interval=3600.0)  # no beat during the test
    async with running_relay(seeded.store_path, config) as relay:
        _age_heartbeat(seeded.store_path, 120)
        status = rows(seeded.store_path, lease.relay_status)
        assert status.alive and status.liveness == "lock" and status.heartbeat_age is not None and status.heartbeat_age > 100
        # The takeover trap of a stall: a second relay is refused, not let in.
        second = RelayService(seeded.store_path, relay_config(tmp_path, tls_files))
        with pytest.raises(RelayAlreadyRunning) as refused:
            await second.start()
        assert f"pid {os.getpid()}" in str(refused.value) and "-relay.lock" in str(refused.value)
        assert relay.running and rows(seeded.store_path, lease.relay_status).owner == relay.owner
    assert not rows(seeded.store_path, lease.relay_status).alive


def test_the_lock_is_held_exactly_while_a_holder_lives(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    assert lock_state(store).held is None  # never locked: the heartbeat decides
    holder = StoreLock(store)
    holder.acquire({"pid": 4242, "host": "here"})
    try:
        state = lock_state(store)
        assert state.held is True and state.facts["pid"] == 4242
        with pytest.raises(RelayAlreadyRunning) as refused:
            StoreLock(store).acquire({"pid": 1})
        assert "pid 4242 on here" in str(refused.value) and "\n" not in str(refused.value)
        holder.note(stopped="store corrupt")
    finally:
        holder.release()
    state = lock_state(store)
    assert state.held is False and state.facts["stopped"] == "store corrupt"


def test_status_of_a_killed_relay_on_this_host_is_dead_at_once(seeded: Seeded) -> None:
    import socket

    # A lease with a fresh heartbeat, from this host, whose lock nobody holds: the
    # process is gone (kill -9), whatever the heartbeat says.
    rows(seeded.store_path, lease.acquire, "killed", 4242, socket.gethostname(), "127.0.0.1", 10.0)
    assert rows(seeded.store_path, lease.relay_status).alive  # no lock file yet: heartbeat rule
    holder = StoreLock(seeded.store_path)
    holder.acquire({"pid": 4242})
    holder.release()
    status = rows(seeded.store_path, lease.relay_status)
    assert not status.alive and status.liveness == "lock"


def test_status_names_a_relay_that_holds_the_lock_before_it_takes_the_lease(seeded: Seeded) -> None:
    rows(seeded.store_path, lease.acquire, "old", 1, "h", "0.0.0.0", 10.0)
    rows(seeded.store_path, lease.release, "old")
    starting = StoreLock(seeded.store_path)
    starting.acquire({"owner": "new", "pid": 4242, "host": "here", "listen_host": "127.0.0.1"})
    try:
        status = rows(seeded.store_path, lease.relay_status)
        assert status.alive and (status.owner, status.pid, status.host) == ("new", 4242, "here")
        assert status.stopped_at is None and status.heartbeat_age is None
    finally:
        starting.release()
    assert not rows(seeded.store_path, lease.relay_status).alive
