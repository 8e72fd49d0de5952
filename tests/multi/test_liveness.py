"""Many relays on one PostgreSQL store: liveness by each relay's advisory lock, the
heartbeat rows, and taking over a dead relay's claims (real server: tests/pg.py)."""

from __future__ import annotations

import time
from typing import Any

from relay.store import open_store
from relay.store.postgres.connection import transaction
from relay.store.postgres.relays import PgMemberLock, key_of
from relay.store.relays import beat, leave, live_relays, reclaim_dead, share


def _sending(db: Any, queue_id: str, owner: str) -> None:
    with transaction(db):
        db.execute(
            "INSERT INTO messages(queue_id, origin, mail_from, size, header_priority, user_priority, priority, "
            "state, next_attempt_at, lease_owner, lease_until, created_at, updated_at) "
            "VALUES (?, 'smtp', 'a@example.org', 10, 3, 3, 3, 'sending', 0, ?, ?, 0, 0)",
            (queue_id, owner, time.time() + 3600),
        )


def _kill(db: Any, lock: PgMemberLock) -> None:
    # What kill -9 of the relay does to its lock: the server ends its session.
    assert lock._conn is not None
    pid = lock._conn.info.backend_pid
    db.execute("SELECT pg_terminate_backend(?)", (pid,))
    deadline = time.monotonic() + 30
    while any(r.owner for r in live_relays(db) if key_of(r.owner) == lock.key) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_every_live_relay_is_listed_and_a_dead_ones_claims_are_taken_over(pg_url: str) -> None:
    db = open_store(pg_url)
    a, b = PgMemberLock(pg_url), PgMemberLock(pg_url)
    try:
        a.acquire({"owner": "a" * 32})
        b.acquire({"owner": "b" * 32})
        beat(db, "a" * 32, {"host": "one.example", "pid": 11, "ports": [2525], "tls_fingerprint": "sha256:aa",
                            "stale_after": 0.5})
        beat(db, "b" * 32, {"host": "two.example", "pid": 22, "ports": [2525, 4650], "tls_fingerprint": "sha256:bb"})
        relays = live_relays(db)
        assert [(r.host, r.pid, r.ports, r.tls_fingerprint) for r in relays] == [
            ("one.example", 11, [2525], "sha256:aa"),
            ("two.example", 22, [2525, 4650], "sha256:bb"),
        ]
        assert all(r.beat_age is not None and r.beat_age < 60 for r in relays)
        _sending(db, "Q1", "a" * 32)
        _sending(db, "Q2", "b" * 32)
        assert reclaim_dead(db).messages == 0  # both alive: nothing is taken

        _kill(db, a)
        assert [r.host for r in live_relays(db)] == ["two.example"]
        # Dead once its lock is free and its last beat is stale_after old (the database's clock).
        deadline = time.monotonic() + 30
        while not (taken := reclaim_dead(db)).relays and time.monotonic() < deadline:
            time.sleep(0.05)
        assert taken.messages == 1 and taken.relays == ["a" * 32]
        assert [(e.reason, e.detail.startswith(f"took over from relay {'a' * 32} (pid 11 on one.example)")) for e in taken.events] == [
            ("relay-takeover", True)
        ]
        recorded = db.execute("SELECT detail FROM events WHERE reason = 'relay-takeover'").fetchall()
        assert [r[0] for r in recorded] == [taken.events[0].detail] and "1 message(s) in flight" in recorded[0][0]
        states = dict(db.execute("SELECT queue_id, state FROM messages").fetchall())
        assert states == {"Q1": "queued", "Q2": "sending"}
        reasons = [r[0] for r in db.execute("SELECT reason FROM events WHERE queue_id = 'Q1'").fetchall()]
        assert "lease-reclaimed" in reasons
        assert reclaim_dead(db).messages == 0  # once

        leave(db, "b" * 32)
        assert live_relays(db) == []
    finally:
        a.release()
        b.release()
        db.close()


def test_heartbeats_are_stamped_with_the_databases_clock(pg_url: str) -> None:
    db = open_store(pg_url)
    lock = PgMemberLock(pg_url)
    try:
        lock.acquire({"owner": "c" * 32})
        beat(db, "c" * 32, {"host": "h"})
        server = db.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
        (relay,) = live_relays(db)
        assert relay.beat_at is not None and abs(server - relay.beat_at) < 60
    finally:
        lock.release()
        db.close()


def test_a_limit_that_is_a_total_is_shared_by_the_live_relays() -> None:
    assert share(10, 1) == 10 and share(10, 2) == 5 and share(5, 2) == 3 and share(1, 3) == 1
    assert share(10.0, 4) == 2.5 and share(None, 2) is None


def test_the_lease_on_postgresql_admits_every_relay_and_status_lists_them(pg_url: str) -> None:
    from relay.store import lease

    db = open_store(pg_url)
    locks = [PgMemberLock(pg_url), PgMemberLock(pg_url)]
    try:
        for n, lock in enumerate(locks):
            owner = f"{n + 1}" * 32
            lock.acquire({"owner": owner})
            lease.acquire_lease(db, owner, 100 + n, f"host{n}", "127.0.0.1", 10.0, locked=True)
            assert lease.relay_status(db).ready == (n > 0)  # ready once one relay has bound its ports
            lease.mark_listening(db, owner)
        status = lease.relay_status(db)
        assert status.ready and all(r.listening for r in status.relays)
        assert status.alive and [r.pid for r in status.relays] == [100, 101]
        assert lease.heartbeat(db, "1" * 32)
        lease.release(db, "1" * 32)
        assert [r.pid for r in lease.relay_status(db).relays] == [101]
    finally:
        for lock in locks:
            lock.release()
        db.close()


def test_delivery_settings_are_shared_by_the_live_relays(pg_url: str) -> None:
    from relay.store.queue import DeliverySettings
    from relay.store.relays import live_count, shared_settings

    total = DeliverySettings(parallel=10, rate=20.0)
    assert shared_settings(total, 1) == total
    assert (shared_settings(total, 2).parallel, shared_settings(total, 2).rate) == (5, 10.0)
    assert shared_settings(DeliverySettings(parallel=10, rate=0.0), 3).rate == 0.0  # unlimited stays so
    db = open_store(pg_url)
    locks = [PgMemberLock(pg_url) for _ in range(3)]
    try:
        assert live_count(db) == 1  # the one asking
        for n, lock in enumerate(locks):
            lock.acquire({"owner": f"{n + 4}" * 32})
            beat(db, f"{n + 4}" * 32, {"host": "h"})
        assert live_count(db) == 3
        _kill(db, locks[0])
        assert live_count(db) == 2
    finally:
        for lock in locks:
            lock.release()
        db.close()


def test_a_relay_whose_lock_connection_dropped_takes_its_lock_again_and_is_not_dead(pg_url: str) -> None:
    from relay.store import lease

    db = open_store(pg_url)
    mine, other = PgMemberLock(pg_url), PgMemberLock(pg_url)
    try:
        mine.acquire({"owner": "d" * 32})
        other.acquire({"owner": "e" * 32})
        lease.acquire_lease(db, "d" * 32, 1, "h", "127.0.0.1", 10.0)
        lease.acquire_lease(db, "e" * 32, 2, "h", "127.0.0.1", 10.0)
        _sending(db, "Q9", "d" * 32)
        _kill(db, mine)  # a server restart, as far as this lock knows
        assert reclaim_dead(db).messages == 0  # its beat is fresh: not dead
        assert lease.heartbeat(db, "d" * 32)  # the beat takes the lock again
        assert sorted(r.pid for r in live_relays(db)) == [1, 2]
        assert reclaim_dead(db).messages == 0
    finally:
        mine.release()
        other.release()
        db.close()
