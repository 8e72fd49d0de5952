"""One relay per store (through the backend's ``Lease`` interface): the lease is taken,
refused to a second relay while the first is alive, taken over once its heartbeat
went stale (recorded), and released. The relay's OS-level lock is the backend's own
(SQLite: tests/relay/test_lease.py).

One relay per store is SQLite's rule: on PostgreSQL the same interface admits any
number of relays (relay.store.relays; tested in tests/multi/test_liveness.py), so these
run on SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay.reasons import Reason
from relay.store.errors import RelayAlreadyRunning
from tests.store_contract.conftest import BACKENDS, Case, ops

T0 = 1_800_000_000.0
HOST = "relay-host.example"  # not this host: only the heartbeat decides here


@pytest.fixture
def backend(tmp_path: Path) -> Case:
    return BACKENDS["sqlite"](tmp_path)


def test_a_fresh_lease_refuses_a_second_relay_and_a_stale_one_is_taken_over(db: Any) -> None:
    lease = ops(db).lease
    first = lease.acquire_lease(db, "a", 101, HOST, "127.0.0.1", 10.0, now=T0)
    assert (first.previous_owner, first.died) == (None, False)
    with pytest.raises(RelayAlreadyRunning, match="pid 101 on relay-host.example") as refused:
        lease.acquire_lease(db, "b", 202, HOST, "127.0.0.1", 10.0, now=T0 + 1)
    assert refused.value.pid == 101 and refused.value.owner == "a"
    assert lease.heartbeat(db, "a", now=T0 + 5)
    status = lease.relay_status(db, now=T0 + 6)
    assert status.alive and status.owner == "a" and status.heartbeat_age == pytest.approx(1.0)
    assert not status.ready
    lease.mark_listening(db, "a", now=T0 + 6)
    assert lease.relay_status(db, now=T0 + 7).ready

    taken = lease.acquire_lease(db, "b", 202, HOST, "127.0.0.1", 10.0, now=T0 + 60)
    assert (taken.previous_owner, taken.died) == ("a", True)
    assert not lease.heartbeat(db, "a", now=T0 + 61)  # the old relay learns it must stop
    takeovers = ops(db).events.find_events(db, reason=str(Reason.RELAY_TAKEOVER))
    assert len(takeovers) == 1 and "pid 101" in takeovers[0].detail


def test_a_released_lease_is_not_alive_and_the_next_relay_takes_it_at_once(db: Any) -> None:
    lease = ops(db).lease
    lease.acquire_lease(db, "a", 101, HOST, "127.0.0.1", 10.0, now=T0)
    lease.release(db, "b", now=T0 + 1)  # not its lease: nothing happens
    assert lease.relay_status(db, now=T0 + 2).alive
    lease.release(db, "a", now=T0 + 2)
    status = lease.relay_status(db, now=T0 + 3)
    assert not status.alive and status.stopped_at == T0 + 2
    after = lease.acquire_lease(db, "b", 202, HOST, "127.0.0.1", 10.0, now=T0 + 3)
    assert (after.previous_owner, after.died) == ("a", False)
    assert ops(db).events.find_events(db, reason=str(Reason.RELAY_TAKEOVER)) == []
