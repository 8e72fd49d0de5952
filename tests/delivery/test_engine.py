"""The delivery engine against a real capture sink: ordering, retries, bounces,
next-hop outages, TLS modes, live controls, leases."""

from __future__ import annotations

import asyncio
import email
import ssl
import time
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from harness.sink import CaptureSink, Chaos
from relay.reasons import EventKind, Reason
from relay.store import queue as q
from relay.store import transaction
from relay.store.events import find_events
from relay.store.settings import Keys, get_setting
from tests.delivery.conftest import (
    enqueue,
    eventually,
    fast_config,
    message,
    point_at,
    running_engine,
    states,
)


def dispatch_order(db: Any) -> list[int]:
    """Message ids in the order the engine dispatched them (delivery-attempt events)."""
    events = find_events(db, kind=str(EventKind.DELIVERY), reason=str(Reason.DELIVERY_ATTEMPT), limit=100_000)
    return [e.message_id for e in sorted(events, key=lambda e: e.id) if e.message_id is not None]


async def test_batch_queued_while_paused_arrives_in_priority_then_fifo_order(db: Any, store_path: Path, sink: CaptureSink) -> None:
    point_at(db, sink, parallel=1, paused=True)
    batch = []
    priorities = [3, 1, 5, 2, 4, 3, 1, 5, 2, 4, 2, 2, 1, 5, 3, 4, 1, 3, 5, 2, 4, 1, 3, 2, 5, 1, 4, 3, 2, 1]
    origins = ["smtp", "campaign", "system"]
    for n, priority in enumerate(priorities):
        origin = origins[n % 3]
        batch.append(message(n, priority=priority, origin=origin, mail_from="" if origin == "system" else "sender@example.com"))
    queued = enqueue(db, batch)
    async with running_engine(store_path) as engine:
        await eventually(lambda: (get_setting(db, Keys.STATUS) or {}).get("state") == "paused")
        assert sink.messages == [] and engine.counters.dispatched == 0
        q.set_paused(db, False)
        records = await sink.wait_for(len(batch))
    expected = [f"m{n} p{p}" for n, p in sorted(enumerate(priorities), key=lambda item: (item[1], item[0]))]
    assert [r.subject for r in records] == expected
    ids = {qd.message_id: n for n, qd in enumerate(queued)}
    assert [f"m{ids[i]} p{priorities[ids[i]]}" for i in dispatch_order(db)] == expected
    # One connection carried every message (reused, not one per message).
    assert len({r.peer for r in records}) == 1
    assert states(db) == {"sent": len(batch)}


async def test_mail_committed_while_a_round_waits_for_the_write_lock_is_ready_for_that_round(
    db: Any, store_path: Path, sink: CaptureSink
) -> None:
    """A round that had to wait for the store's write lock decides with what is
    committed when it gets the lock: a priority-1 message committed meanwhile goes
    before the priority-3 messages already waiting (the claim's clock is read under
    the lock, not when the round was planned)."""
    point_at(db, sink, parallel=1)
    enqueue(db, [message(n) for n in range(6)])
    async with running_engine(store_path):
        await sink.wait_for(1)
        # Another writer (the SMTP side, another process) holds the lock: the engine's
        # next round (the outcome of the delivery under way + the next claim) waits for it.
        with transaction(db):
            await asyncio.sleep(0.5)
            [urgent] = enqueue(db, [message(99, priority=1)])
        records = await sink.wait_for(7)
    accepted = next(e for e in q.message_detail(db, urgent.queue_id).events if e.reason == str(Reason.ACCEPTED))
    attempts = find_events(db, reason=str(Reason.DELIVERY_ATTEMPT), limit=100)
    after = [e.message_id for e in sorted(attempts, key=lambda e: e.id) if e.id > accepted.id]
    assert after[0] == urgent.message_id, "a priority-3 delivery started while a priority-1 message was ready"
    assert sorted(str(r.subject) for r in records) == sorted([*(f"m{n} p3" for n in range(6)), "m99 p1"])


async def test_temporary_failures_are_retried_until_delivered(db: Any, store_path: Path) -> None:
    async with CaptureSink(port=0, chaos=Chaos(temp_first=2)) as flaky:
        point_at(db, flaky)
        [queued] = enqueue(db, [message(1)])
        async with running_engine(store_path):
            records = await flaky.wait_for(1)
            await eventually(lambda: states(db) == {"sent": 1})
    assert records[0].subject == "m1 p3"
    detail = q.message_detail(db, queued.queue_id)
    assert detail.message.attempts == 3
    reasons = [e.reason for e in detail.events]
    assert reasons.count(str(Reason.DEFERRED_4XX)) == 2
    assert reasons[-1] == str(Reason.DELIVERED)
    assert detail.recipients[0].state == "sent"


async def test_permanent_failure_fails_with_the_reply_and_bounces_to_the_sender(db: Any, store_path: Path) -> None:
    async with CaptureSink(port=0, chaos=Chaos(perm_match="bad*")) as picky:
        point_at(db, picky)
        [failing] = enqueue(db, [message(1, to=["bad@example.net"])])
        async with running_engine(store_path):
            [bounce] = await picky.wait_for(1)
            await eventually(lambda: q.message_detail(db, failing.queue_id).message.state == "failed")
            # A message with an empty sender fails without a bounce (no bounce of a bounce).
            [silent] = enqueue(db, [message(2, mail_from="", to=["bad2@example.net"])])
            await eventually(lambda: q.message_detail(db, silent.queue_id).message.state == "failed")
            partial_msg = message(3, to=["good@example.net", "bad3@example.net"])
            [partial] = enqueue(db, [partial_msg])
            records = await picky.wait_for(3)
    failed = q.message_detail(db, failing.queue_id).message
    assert failed.last_reply is not None and "550 5.1.1" in failed.last_reply
    assert bounce.mail_from == "" and bounce.rcpt_tos == ["sender@example.com"]
    report = email.message_from_bytes(bounce.data, policy=default_policy)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = [p.get_content_type() for p in report.iter_parts()]
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = bounce.data.decode()
    assert "Final-Recipient: rfc822; bad@example.net" in status and "Status: 5.1.1" in status
    assert "Subject: m1 p3" in status  # the original headers come back
    # Exactly one bounce for the two failed messages: none for the empty sender.
    system = [r for r in q.list_messages(db, state="all", limit=100) if r.origin == "system"]
    assert len([r for r in system if r.mail_from == ""]) == 2  # m1's bounce and the partial one's
    # The partial message: delivered to the good recipient, a bounce for the bad one.
    detail = q.message_detail(db, partial.queue_id)
    assert detail.message.state == "sent"
    assert {r.address: r.state for r in detail.recipients} == {"good@example.net": "sent", "bad3@example.net": "failed"}
    subjects = sorted(r.subject or "" for r in records)
    assert subjects == ["Undelivered Mail Returned to Sender", "Undelivered Mail Returned to Sender", "m3 p3"]


async def test_lifetime_exceeded_fails_and_bounces(db: Any, store_path: Path) -> None:
    async with CaptureSink(port=0, chaos=Chaos(temp_match="*@example.net")) as busy:
        point_at(db, busy)
        [queued] = enqueue(db, [message(1)])
        async with running_engine(store_path, fast_config(queue_lifetime=1.0, retry_base=0.2, retry_max=0.3)):
            [bounce] = await busy.wait_for(1)
    detail = q.message_detail(db, queued.queue_id)
    assert detail.message.state == "failed"
    assert detail.message.attempts >= 2
    assert "queue lifetime exceeded" in (detail.message.last_reply or "")
    assert detail.events[-2].reason == str(Reason.FAILED_LIFETIME)
    assert detail.events[-1].reason == str(Reason.BOUNCE_QUEUED)
    assert "Status: 4.3.0" in bounce.data.decode()


async def test_next_hop_down_then_up_delivers_everything_without_hammering(db: Any, store_path: Path) -> None:
    first = CaptureSink(port=0)
    port = await first.start()
    await first.stop()  # the next hop is down: connections are refused
    q.set_next_hop(db, f"127.0.0.1:{port}")
    q.set_parallel(db, 4)
    enqueue(db, [message(n) for n in range(20)])
    started_at = time.time()
    async with running_engine(store_path, fast_config(retry_base=0.3, retry_max=0.6)) as engine:
        await eventually(lambda: find_events(db, reason=str(Reason.NEXT_HOP_DOWN)))
        await eventually(lambda: (get_setting(db, Keys.STATUS) or {}).get("state") == "next hop down")
        await asyncio.sleep(1.0)  # a while of outage: probes, not one connection per message
        # The first round may fail all 4 connections at once; after that one probe per
        # interval (>= 0.48 s once the backoff is at its 0.6 s cap, -20 % jitter). The
        # bound follows the time that really passed, so a slow machine cannot break it.
        probes = 4 + int((time.time() - started_at) / 0.48) + 1
        untouched = [r for r in q.list_messages(db, limit=100) if r.attempts == 0]
        assert engine.counters.hop_failures <= probes
        assert len(untouched) >= 20 - probes
        second = CaptureSink(port=port)
        await second.start()
        try:
            records = await second.wait_for(20)
            await eventually(lambda: states(db) == {"sent": 20})
        finally:
            await second.stop()
    assert sorted(r.subject or "" for r in records) == sorted(f"m{n} p3" for n in range(20))
    assert find_events(db, reason=str(Reason.NEXT_HOP_UP))


async def test_without_next_hop_delivery_waits_and_says_so_then_follows_the_setting(db: Any, store_path: Path, sink: CaptureSink) -> None:
    [queued] = enqueue(db, [message(1)])
    async with running_engine(store_path):
        await eventually(lambda: (get_setting(db, Keys.STATUS) or {}).get("state") == "no next hop")
        assert find_events(db, reason=str(Reason.NO_NEXT_HOP))
        assert q.message_detail(db, queued.queue_id).message.attempts == 0
        q.set_next_hop(db, f"127.0.0.1:{sink.port}")  # as another process would: through the store
        await sink.wait_for(1)
        await eventually(lambda: (get_setting(db, Keys.STATUS) or {}).get("state") == "running")


async def test_the_relays_own_address_is_refused_as_next_hop(db: Any, store_path: Path, sink: CaptureSink) -> None:
    q.set_next_hop(db, f"localhost:{sink.port}")
    enqueue(db, [message(1)])
    # The sink plays the relay's own listener; 0.0.0.0 covers 127.0.0.1 and localhost.
    async with running_engine(store_path, own_addresses=[("0.0.0.0", sink.port)]) as engine:
        await eventually(lambda: (get_setting(db, Keys.STATUS) or {}).get("state") == "next hop is this relay")
        assert find_events(db, reason=str(Reason.NEXT_HOP_SELF))
        await asyncio.sleep(0.5)
        assert engine.counters.dispatched == 0 and sink.messages == []
    async with running_engine(store_path, own_addresses=[("127.0.0.1", sink.port + 1)]):
        await sink.wait_for(1)  # a different port is somebody else


async def test_starttls_required_never_sends_in_plain_text(db: Any, store_path: Path, sink: CaptureSink, tls_files: dict[str, Path]) -> None:
    q.set_next_hop(db, f"127.0.0.1:{sink.port}", tls="required")
    [queued] = enqueue(db, [message(1)])
    async with running_engine(store_path):
        await eventually(lambda: any(e.reason == str(Reason.DEFERRED_TLS) for e in q.message_detail(db, queued.queue_id).events))
    assert sink.messages == []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    async with CaptureSink(port=0, tls_context=context) as secure:
        q.set_next_hop(db, f"127.0.0.1:{secure.port}", tls="required", cafile=str(tls_files["ca"]))
        q.retry(db, [queued.queue_id])
        async with running_engine(store_path):
            [record] = await secure.wait_for(1)
    assert record.tls is True


async def test_opportunistic_starttls_is_used_when_offered(db: Any, store_path: Path, tls_files: dict[str, Path]) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    async with CaptureSink(port=0, tls_context=context, accept_auth=True) as secure:
        q.set_next_hop(db, f"127.0.0.1:{secure.port}", tls="opportunistic", user="relay", password="s3cret")
        enqueue(db, [message(1)])
        async with running_engine(store_path):
            [record] = await secure.wait_for(1)
    assert record.tls is True and record.auth_user == "relay"
    # The password is a setting, never written into an event.
    assert all("s3cret" not in e.detail for e in find_events(db, limit=1000))


async def test_a_live_rate_change_is_honoured(db: Any, store_path: Path, sink: CaptureSink) -> None:
    point_at(db, sink, parallel=4)
    q.set_rate(db, 4)
    enqueue(db, [message(n) for n in range(40)])
    # Measured from before the engine starts, not from the first arrival: a slow first
    # delivery (a loaded machine) lets later ones arrive closer together than the rate,
    # but no delivery can *start* before the bucket has earned its token.
    started_at = time.time()
    async with running_engine(store_path):
        await sink.wait_for(2)
        await asyncio.sleep(1.5)
        elapsed = time.time() - started_at
        so_far = len(sink.messages)
        # At 4/s nothing near 40 can have arrived: at most the burst (1) plus rate × time.
        assert so_far <= 1 + 4 * elapsed
        q.set_rate(db, 0)  # unlimited, from "another process" through the store
        await sink.wait_for(40, within=15)  # at 4/s this would need about 10 s more


async def test_anti_starvation_share_lets_the_oldest_lower_priority_message_through(db: Any, store_path: Path, sink: CaptureSink) -> None:
    point_at(db, sink, parallel=1, paused=True)
    low = enqueue(db, [message(n, priority=5) for n in range(3)])
    enqueue(db, [message(n, priority=1) for n in range(3, 13)])
    from relay.store.queue import set_starvation_share

    set_starvation_share(db, 0.25)
    async with running_engine(store_path):
        q.set_paused(db, False)
        records = await sink.wait_for(13)
    subjects = [r.subject for r in records]
    # Strict priority would send all ten priority-1 messages first; the share lets p5 in early,
    # oldest first.
    assert subjects.index("m0 p5") < subjects.index("m12 p1")
    assert subjects.index("m0 p5") < subjects.index("m1 p5") < subjects.index("m2 p5")
    order = dispatch_order(db)
    assert order.index(low[0].message_id) < 6


async def test_expired_leases_and_a_dead_relays_claims_are_delivered(db: Any, store_path: Path, sink: CaptureSink) -> None:
    point_at(db, sink, parallel=2)
    queued = enqueue(db, [message(n) for n in range(4)])
    now = time.time()
    # Two claimed by a relay that died: one lease expired, one still fresh.
    dead = q.RoundRequest(owner="dead-relay", lease_seconds=60, budget=2, hop=f"127.0.0.1:{sink.port}", now=now, force=True)
    claimed = q.dispatch_round(db, dead).claimed
    assert len(claimed) == 2
    q.dispatch_round(db, q.RoundRequest(owner="other-dead", lease_seconds=0.5, budget=1, hop=f"127.0.0.1:{sink.port}", now=now, force=True))
    async with running_engine(store_path, reclaim_from="dead-relay") as engine:
        records = await sink.wait_for(4)
        await eventually(lambda: states(db) == {"sent": 4})
    assert sorted(r.subject or "" for r in records) == [f"m{n} p3" for n in range(4)]
    reclaimed = find_events(db, reason=str(Reason.LEASE_RECLAIMED))
    assert {e.message_id for e in reclaimed} == {m.id for m in claimed} | {queued[2].message_id}
    assert engine.counters.reclaimed == 3


async def test_two_engines_on_one_store_never_deliver_the_same_message(db: Any, store_path: Path, sink: CaptureSink) -> None:
    point_at(db, sink, parallel=3)
    enqueue(db, [message(n) for n in range(300)])
    async with running_engine(store_path, owner="node-a") as a, running_engine(store_path, owner="node-b") as b:
        records = await sink.wait_for(300, within=60)
        await eventually(lambda: states(db) == {"sent": 300})
    subjects = [r.subject for r in records]
    assert len(subjects) == len(set(subjects)) == 300
    assert a.counters.dispatched + b.counters.dispatched == 300
    assert a.counters.dispatched > 0 and b.counters.dispatched > 0


async def test_mail_outlives_its_deleted_list_and_user(db: Any, store_path: Path, sink: CaptureSink) -> None:
    from relay.passwords import hash_password
    from relay.store import directory

    directory.create_list(db, "gone")
    user = directory.create_user(db, list_name="gone", username="gone-user", password_hash=hash_password("pw-for-test"))
    queued = message(1)
    queued.list_id, queued.list_name, queued.user_id, queued.username = user.list_id, "gone", user.id, user.username
    [row] = enqueue(db, [queued])
    directory.delete_list(db, "gone")
    point_at(db, sink)
    async with running_engine(store_path):
        [record] = await sink.wait_for(1)
    assert record.subject == "m1 p3"
    detail = q.message_detail(db, row.queue_id).message
    assert (detail.state, detail.list_id, detail.list_name, detail.username) == ("sent", None, "gone", "gone-user")


async def test_commits_while_paused_cost_a_look_at_the_controls_not_a_round(db: Any, store_path: Path, sink: CaptureSink) -> None:
    point_at(db, sink, parallel=1, paused=True)
    async with running_engine(store_path) as engine:
        await eventually(lambda: (get_setting(db, Keys.STATUS) or {}).get("state") == "paused")
        for n in range(200):  # one commit each, as a busy relay's group commits come
            enqueue(db, [message(n)])
            if engine.counters.held_back_looks >= 3:
                break
            await asyncio.sleep(0.01)
        assert engine.counters.held_back_looks >= 3
        assert engine.counters.dispatched == 0 and sink.messages == []
        q.set_paused(db, False)  # a change of the controls gets its round
        await sink.wait_for(n + 1)
