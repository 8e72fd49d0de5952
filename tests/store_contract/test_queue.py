"""The queue (through the backend's ``Queue`` interface): atomic claims under lease,
priority order, operator actions, runtime controls, retention and list statistics."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from relay.reasons import EventKind, Reason
from relay.store import queue as q
from relay.store.errors import InvalidInput, NotFound
from relay.store.events import NewEvent
from relay.store.intake import NewMessage, Queued
from relay.store.stats import list_stats
from tests.delivery.conftest import message
from tests.store_contract.conftest import Case, ops

HOP = "127.0.0.1:2525"


def enqueue(db: Any, messages: list[NewMessage]) -> list[Queued]:
    return ops(db).intake.insert_messages(db, messages)


def claim(db: Any, owner: str, budget: int, **kw: Any) -> list[q.Claimed]:
    ops(db).queue.set_next_hop(db, HOP) if ops(db).queue.delivery_settings(db).next_hop != HOP else None
    request = q.RoundRequest(owner=owner, lease_seconds=kw.pop("lease", 60.0), budget=budget, hop=HOP, force=True, **kw)
    return ops(db).queue.dispatch_round(db, request).claimed


def test_claims_follow_priority_then_fifo_and_carry_what_delivery_needs(db: Any) -> None:
    queued = enqueue(db, [message(n, priority=p) for n, p in enumerate([3, 1, 2, 1, 3])])
    claimed = claim(db, "a", 10)
    assert [c.id for c in claimed] == [queued[i].message_id for i in (1, 3, 2, 0, 4)]
    first = claimed[0]
    assert first.recipients == ["rcpt1@example.net"] and first.data.startswith(b"From: ")
    assert first.attempts == 1 and first.priority == 1
    row = ops(db).queue.message_detail(db, first.queue_id).message
    assert (row.state, row.lease_owner) == ("sending", "a")
    assert row.lease_until is not None and row.lease_until > time.time() + 50


def test_concurrent_claims_never_hand_out_a_message_twice(backend: Case, db: Any) -> None:
    enqueue(db, [message(n) for n in range(600)])
    ops(db).queue.set_next_hop(db, HOP)
    got: dict[str, list[int]] = {}
    start = threading.Barrier(3)

    def worker(owner: str) -> None:
        conn = backend.open()
        mine: list[int] = []
        start.wait()
        first_round = True
        while True:
            time.sleep(0.0005)  # let the others in between claims
            claimed = ops(conn).queue.dispatch_round(conn, q.RoundRequest(owner=owner, lease_seconds=60, budget=7, hop=HOP, force=True)).claimed
            if first_round:
                # Every worker makes its first claim (racing the others) before any
                # makes a second, so all three take part however the OS schedules them.
                first_round = False
                start.wait()
            if not claimed:
                break
            mine += [c.id for c in claimed]
        got[owner] = mine
        conn.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in got.values() for i in ids]
    assert len(every) == len(set(every)) == 600
    assert all(got[f"w{i}"] for i in range(3))


def test_paused_or_a_changed_next_hop_claims_nothing(db: Any) -> None:
    enqueue(db, [message(1)])
    ops(db).queue.set_next_hop(db, HOP)
    ops(db).queue.set_paused(db, True)
    assert claim(db, "a", 5) == []
    ops(db).queue.set_paused(db, False)
    stale = q.RoundRequest(owner="a", lease_seconds=60, budget=5, hop="127.0.0.1:1", force=True)
    result = ops(db).queue.dispatch_round(db, stale)
    assert result.claimed == [] and result.settings is not None and result.settings.next_hop == HOP
    assert len(claim(db, "a", 5)) == 1


def test_a_claim_carries_the_body_the_recipients_left_and_their_dsn_also_on_a_retry(db: Any) -> None:
    # What an attempt needs comes with the claim (PostgreSQL: in the claim's own
    # statement; SQLite: read after it), also for the oldest-lower pick claimed apart.
    from relay.store.intake import RecipientDsn

    dsn = {"b@example.net": RecipientDsn(notify="SUCCESS,FAILURE", orcpt="rfc822;b@example.net")}
    first = message(1, to=["c@example.net", "a@example.net", "b@example.net"])
    first.recipient_dsn = dsn
    [queued, low] = enqueue(db, [first, message(2, priority=5)])
    [m] = claim(db, "a", 1)
    assert (m.id, m.recipients, m.recipient_dsn, m.delivered_before) == (
        queued.message_id, ["a@example.net", "b@example.net", "c@example.net"], dsn, 0)
    assert m.data == first.data
    results = [q.RecipientResult("a@example.net", "sent", "250 ok"), q.RecipientResult("b@example.net", "deferred", "451"),
               q.RecipientResult("c@example.net", "deferred", "451")]
    outcome = q.Outcome(m, "deferred", Reason.DEFERRED_4XX, "451", results, time.time() - 1)
    ops(db).queue.dispatch_round(db, q.RoundRequest(owner="a", lease_seconds=60, budget=0, hop=HOP, outcomes=[outcome], force=True))
    again = claim(db, "a", 2, promote_due=True, oldest_lower=True)
    assert [c.id for c in again] == [low.message_id, queued.message_id]  # the oldest lower one first
    assert (again[1].recipients, again[1].recipient_dsn, again[1].delivered_before, again[1].attempts) == (
        ["b@example.net", "c@example.net"], dsn, 1, 2)
    assert again[0].recipients == ["rcpt2@example.net"] and again[0].data.startswith(b"From: ")


def test_a_pause_stored_in_another_form_stops_claims_and_promotions_as_a_pause(db: Any) -> None:
    # The claim may go in one batch with the read of the controls (PostgreSQL: one
    # round trip), checking them in its own WHERE: a value the controls read as
    # "paused" must stop it, and one they read as "not paused" must not.
    from relay.store.settings import Keys, set_setting

    [first, second] = enqueue(db, [message(1), message(2)])
    [m] = claim(db, "a", 1)
    due = time.time() - 1
    outcome = q.Outcome(m, "deferred", Reason.DEFERRED_4XX, "451 later", [q.RecipientResult(m.recipients[0], "deferred", "451 later")], due)
    ops(db).queue.dispatch_round(db, q.RoundRequest(owner="a", lease_seconds=60, budget=0, hop=HOP, outcomes=[outcome], force=True))
    set_setting(db, Keys.PAUSED, 1)  # truthy, not `true`
    woken = q.RoundRequest(owner="a", lease_seconds=60, budget=5, hop=HOP)  # promotes only when it may claim
    assert ops(db).queue.dispatch_round(db, woken).claimed == []
    assert ops(db).queue.message_detail(db, first.queue_id).message.state == "deferred"
    set_setting(db, Keys.PAUSED, 0)  # falsy, not `false`
    claimed = ops(db).queue.dispatch_round(db, q.RoundRequest(owner="a", lease_seconds=60, budget=5, hop=HOP)).claimed
    assert [c.id for c in claimed] == [first.message_id, second.message_id]


def test_a_round_settles_outcomes_and_renews_before_it_reclaims(db: Any) -> None:
    # An attempt that ends (or a lease renewed) in the round that reclaims expired
    # leases is its owner's: settled or renewed, never reclaimed in the same round.
    enqueue(db, [message(1), message(2), message(3)])
    [done, kept] = claim(db, "a", 2, lease=0.01)
    time.sleep(0.05)
    outcome = q.Outcome(done, "deferred", Reason.DEFERRED_4XX, "451 later", [q.RecipientResult(done.recipients[0], "deferred", "451 later")], time.time() + 60)
    result = ops(db).queue.dispatch_round(db, q.RoundRequest(
        owner="a", lease_seconds=60, budget=1, hop=HOP, outcomes=[outcome], renew=[kept.id], reclaim_expired=True, force=True,
    ))
    assert result.reclaimed == 0 and len(result.claimed) == 1
    assert ops(db).queue.message_detail(db, done.queue_id).message.state == "deferred"
    assert ops(db).queue.message_detail(db, kept.queue_id).message.state == "sending"
    details = [e.detail for e in ops(db).events.find_events(db, reason=str(Reason.DEFERRED_4XX))]
    assert details and not any("lease lost" in d for d in details)


def test_a_claim_round_reclaims_promotes_and_claims_in_priority_order_with_its_events(db: Any) -> None:
    # One round: the expired lease reclaimed, the due retry promoted (not asked for:
    # the round may claim), both claimed before lower-priority mail; the events in
    # that order (reclaimed, then the attempts).
    lost, retry, low = enqueue(db, [message(1, priority=2), message(2, priority=1), message(3, priority=4)])
    claim(db, "dead", 1, lease=0.01)  # takes `retry` (priority 1)
    [again] = claim(db, "a", 1)  # takes `lost`
    assert again.id == lost.message_id
    outcome = q.Outcome(again, "deferred", Reason.DEFERRED_4XX, "451", [q.RecipientResult(again.recipients[0], "deferred", "451")], time.time() - 1)
    ops(db).queue.dispatch_round(db, q.RoundRequest(owner="a", lease_seconds=60, budget=0, hop=HOP, outcomes=[outcome], force=True))
    time.sleep(0.05)
    result = ops(db).queue.dispatch_round(db, q.RoundRequest(owner="b", lease_seconds=60, budget=3, hop=HOP, reclaim_expired=True))
    assert result.reclaimed == 1
    assert [c.id for c in result.claimed] == [retry.message_id, lost.message_id, low.message_id]
    assert result.next_due_checked and result.next_due is None
    events = ops(db).events.find_events(db, kind=str(EventKind.DELIVERY), limit=100)[::-1]  # oldest first
    last = [(e.reason, e.message_id) for e in events][-4:]
    assert last == [
        (str(Reason.LEASE_RECLAIMED), retry.message_id), (str(Reason.DELIVERY_ATTEMPT), retry.message_id),
        (str(Reason.DELIVERY_ATTEMPT), lost.message_id), (str(Reason.DELIVERY_ATTEMPT), low.message_id),
    ]


def test_an_idle_round_is_skipped_until_another_connection_commits(backend: Case, db: Any) -> None:
    ops(db).queue.set_next_hop(db, HOP)
    first = ops(db).queue.dispatch_round(db, q.RoundRequest(owner="a", lease_seconds=60, budget=1, hop=HOP, force=True))
    idle = ops(db).queue.dispatch_round(db, q.RoundRequest(owner="a", lease_seconds=60, budget=1, hop=HOP, seen_version=first.version))
    assert idle.skipped
    other = backend.open()
    enqueue(other, [message(1)])
    other.close()
    woken = ops(db).queue.dispatch_round(db, q.RoundRequest(owner="a", lease_seconds=60, budget=1, hop=HOP, seen_version=first.version))
    assert not woken.skipped and len(woken.claimed) == 1


def test_deferred_mail_becomes_ready_when_its_time_comes(db: Any) -> None:
    enqueue(db, [message(1)])
    [m] = claim(db, "a", 1)
    later = time.time() + 30
    outcome = q.Outcome(m, "deferred", Reason.DEFERRED_4XX, "451 later", [q.RecipientResult(m.recipients[0], "deferred", "451 later")], later)
    result = ops(db).queue.dispatch_round(db, q.RoundRequest(owner="a", lease_seconds=60, budget=1, hop=HOP, outcomes=[outcome], force=True))
    assert result.claimed == [] and result.next_due == pytest.approx(later)
    assert claim(db, "a", 1, promote_due=True) == []
    [again] = claim(db, "a", 1, promote_due=True, now=later + 1)
    assert again.id == m.id and again.attempts == 2


def test_expired_leases_are_reclaimed(db: Any) -> None:
    enqueue(db, [message(1), message(2)])
    claim(db, "dead", 1, lease=0.01)
    claim(db, "alive", 1, lease=60)
    time.sleep(0.02)
    assert ops(db).queue.reclaim_expired(db) == 1
    assert ops(db).queue.reclaim_owner(db, "alive") == 1
    assert {r.state for r in ops(db).queue.list_messages(db)} == {"queued"}
    assert len(ops(db).events.find_events(db, reason=str(Reason.LEASE_RECLAIMED))) == 2


def test_hold_release_retry_and_delete_are_operator_events(db: Any) -> None:
    a, b, c = enqueue(db, [message(1), message(2), message(3)])
    held = ops(db).queue.hold(db, [a.queue_id, b.queue_id.lower()])
    assert [(r.before, r.after) for r in held] == [("queued", "held"), ("queued", "held")]
    assert claim(db, "x", 10)[0].id == c.message_id  # held mail is not dispatched
    assert ops(db).queue.hold(db, [c.queue_id])[0].note.startswith("being sent")
    assert [r.after for r in ops(db).queue.release(db, [a.queue_id])] == ["queued"]
    assert [r.after for r in ops(db).queue.retry(db, [b.queue_id])] == ["queued"]
    deleted = ops(db).queue.delete(db, [a.queue_id])
    assert deleted[0].before == "queued"
    with pytest.raises(NotFound, match="no message with queue id NOPE"):
        ops(db).queue.hold(db, ["NOPE", b.queue_id])
    assert ops(db).queue.message_detail(db, b.queue_id).message.state == "queued"  # all or nothing
    reasons = [e.reason for e in ops(db).events.find_events(db, kind=str(EventKind.OPERATOR), limit=100)]
    for reason in (Reason.MESSAGE_HELD, Reason.MESSAGE_RELEASED, Reason.MESSAGE_RETRY, Reason.MESSAGE_DELETED):
        assert str(reason) in reasons
    with pytest.raises(NotFound):
        ops(db).queue.message_detail(db, a.queue_id)


def test_retry_brings_a_failed_message_back(db: Any) -> None:
    [queued] = enqueue(db, [message(1)])
    [m] = claim(db, "a", 1)
    outcome = q.Outcome(m, "failed", Reason.FAILED_5XX, "550 no", [q.RecipientResult(m.recipients[0], "failed", "550 no")])
    ops(db).queue.dispatch_round(db, q.RoundRequest(owner="a", lease_seconds=60, budget=0, hop=HOP, outcomes=[outcome], force=True))
    assert ops(db).queue.message_detail(db, queued.queue_id).message.state == "failed"
    ops(db).queue.retry(db, [queued.queue_id])
    [again] = claim(db, "a", 1)
    assert again.recipients == ["rcpt1@example.net"]


def test_runtime_controls_validate_their_input(db: Any) -> None:
    ops(db).queue.set_rate(db, "12.5")  # type: ignore[arg-type]
    ops(db).queue.set_parallel(db, "3")  # type: ignore[arg-type]
    assert ops(db).queue.set_next_hop(db, "smarthost.example:587", tls="required") == "smarthost.example:587"
    assert ops(db).queue.set_next_hop(db, "[::1]:25") == "[::1]:25"
    s = ops(db).queue.delivery_settings(db)
    assert (s.rate, s.parallel, s.next_hop, s.next_hop_tls) == (12.5, 3, "[::1]:25", "required")
    for bad, pattern in (("fast", "not a number"), ("-1", "0 \\(unlimited\\)")):
        with pytest.raises(InvalidInput, match=pattern):
            ops(db).queue.set_rate(db, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="from 1 to 256"):
        ops(db).queue.set_parallel(db, 0)
    for bad in ("smarthost", "host:0", "host:port", "a b:25"):
        with pytest.raises(InvalidInput):
            ops(db).queue.set_next_hop(db, bad)
    with pytest.raises(InvalidInput, match="TLS mode"):
        ops(db).queue.set_next_hop(db, HOP, tls="sometimes")
    details = [e.detail for e in ops(db).events.find_events(db, reason=str(Reason.SETTING_CHANGED), limit=100)]
    assert any("rate set to 12.5 msg/s" in d for d in details)


def test_retention_prunes_finished_mail_and_old_events_but_keeps_list_totals(db: Any) -> None:
    info = ops(db).directory.create_list(db, "team")
    old = time.time() - 40 * 86400
    for n in range(3):
        ops(db).events.record_event(db, NewEvent(EventKind.QUEUED, Reason.ACCEPTED, list_id=info.id, at=old + n))
    ops(db).events.record_event(db, NewEvent(EventKind.SENT, Reason.DELIVERED, list_id=info.id, at=old))
    ops(db).events.record_event(db, NewEvent(EventKind.QUEUED, Reason.ACCEPTED, list_id=info.id))
    ops(db).events.record_event(db, NewEvent(EventKind.REFUSED, Reason.SENDER_NOT_AUTHORIZED, list_id=info.id))
    queued = enqueue(db, [message(1), message(2)])
    [m, _] = claim(db, "a", 2)
    done = q.Outcome(m, "sent", Reason.DELIVERED, "250 ok", [q.RecipientResult(m.recipients[0], "sent", "250 ok")])
    ops(db).queue.dispatch_round(db, q.RoundRequest(owner="a", lease_seconds=60, budget=0, hop=HOP, outcomes=[done], force=True, now=old))
    before = list_stats(db, "team")
    pruned = ops(db).queue.prune(db, before=time.time() - 30 * 86400, batch=2)
    assert pruned.messages == 1 and pruned.events >= 4
    assert [r.queue_id for r in ops(db).queue.list_messages(db, state="all")] == [queued[1].queue_id]
    assert db.execute("SELECT count(*) FROM message_bodies").fetchone()[0] == 1
    after = list_stats(db, "team")
    assert after == before
    assert (after.total.accepted, after.total.delivered, after.total.refused) == (4, 1, 1)
    assert (after.today.accepted, after.today.delivered, after.today.refused) == (1, 0, 1)


def test_queue_overview_counts_per_priority_with_the_oldest_wait(db: Any) -> None:
    enqueue(db, [message(1, priority=1), message(2, priority=1), message(3, priority=4)])
    claim(db, "a", 1)
    overview = ops(db).queue.queue_overview(db)
    lanes = {lane.priority: lane for lane in overview.lanes}
    assert (lanes[1].queued, lanes[1].sending, lanes[4].queued) == (1, 1, 1)
    wait = lanes[4].oldest_wait(time.time() + 5)
    assert lanes[2].oldest_created_at is None and wait is not None and wait >= 5


def test_a_due_retry_is_ready_for_any_claim_and_goes_before_lower_priority_mail(db: Any) -> None:
    """Readiness is decided in the claiming transaction: a priority-1 retry whose time
    has come goes before waiting priority-3 mail, whether or not the caller asked
    for due retries to be promoted."""
    enqueue(db, [message(1, priority=1)])
    [m] = claim(db, "a", 1)
    due = time.time() + 0.05
    outcome = q.Outcome(m, "deferred", Reason.DEFERRED_4XX, "451 later", [q.RecipientResult(m.recipients[0], "deferred", "451 later")], due)
    ops(db).queue.dispatch_round(db, q.RoundRequest(owner="a", lease_seconds=60, budget=0, hop=HOP, outcomes=[outcome], force=True))
    waiting = enqueue(db, [message(n) for n in range(2, 5)])
    time.sleep(0.1)
    result = ops(db).queue.dispatch_round(db, q.RoundRequest(owner="a", lease_seconds=60, budget=2, hop=HOP))
    assert [c.id for c in result.claimed] == [m.id, waiting[0].message_id]
    assert result.next_due_checked and result.next_due is None  # nothing deferred is left




def test_a_bulk_queueing_streams_whole_messages_that_claims_and_intake_carry_on_from(db: Any) -> None:
    # The dialect's load_rows (SQLite executemany, PostgreSQL COPY): every message with
    # its body and recipient, the counts right, priority order for the claim, and the
    # next message taken in normally gets a new id.
    from relay.store.bulk import queue_bulk
    from relay.store.counts import state_counts

    assert queue_bulk(db, 1203, priorities=(3, 1, 2)) == 1203
    counts = state_counts(db)
    assert {p: counts.get(("queued", p), 0) for p in (1, 2, 3)} == {1: 401, 2: 401, 3: 401}
    claimed = claim(db, "a", 3)
    assert [c.priority for c in claimed] == [1, 1, 1] and [c.id for c in claimed] == sorted(c.id for c in claimed)
    assert all(c.data.startswith(b"From: bench@") and len(c.recipients) == 1 for c in claimed)
    assert claimed[0].recipients[0] in claimed[0].data.decode()
    later = enqueue(db, [message(0, priority=1)])[0]
    assert later.message_id > max(c.id for c in claimed) and later.message_id > 1203
