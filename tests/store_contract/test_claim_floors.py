"""Claims that start each priority at the engine's floors (relay.store.claim_floors):
the same order as claims from the front, on both backends (SQLite has no floors to
use: the same answers), including mail made ready again under a floor."""

from __future__ import annotations

import time
from typing import Any

from relay.reasons import Reason
from relay.store import queue as q
from relay.store.claim_floors import ClaimFloors
from relay.store.intake import Queued
from tests.delivery.conftest import message
from tests.store_contract.conftest import ops

HOP = "127.0.0.1:2525"


def quick_floors() -> ClaimFloors:
    """Floors that ripen at once (a claim is a floor for the next round) and look from
    the front only in the first round."""
    return ClaimFloors(lag=0.0, step=0.0, check=3600.0)


def enqueue(db: Any, priorities: list[int], start: int = 0) -> list[Queued]:
    return ops(db).intake.insert_messages(db, [message(start + n, priority=p) for n, p in enumerate(priorities)])


def claim(db: Any, budget: int, floors: ClaimFloors, **kw: Any) -> list[q.Claimed]:
    if ops(db).queue.delivery_settings(db).next_hop != HOP:
        ops(db).queue.set_next_hop(db, HOP)
    request = q.RoundRequest(
        owner=kw.pop("owner", "a"), lease_seconds=kw.pop("lease", 60.0), budget=budget, hop=HOP, force=True,
        floors=floors, **kw,
    )
    return ops(db).queue.dispatch_round(db, request).claimed


def defer(db: Any, m: q.Claimed, due: float) -> None:
    outcome = q.Outcome(m, "deferred", Reason.DEFERRED_4XX, "451 later", [q.RecipientResult(m.recipients[0], "deferred", "451 later")], due)
    ops(db).queue.dispatch_round(db, q.RoundRequest(owner="a", lease_seconds=60, budget=0, hop=HOP, outcomes=[outcome], force=True))


def test_claims_from_floors_take_priority_then_fifo_as_claims_from_the_front(db: Any) -> None:
    floors = quick_floors()
    ready: dict[int, int] = {}  # id -> priority: what a claim from the front would choose from
    taken: list[int] = []
    for wave in range(4):
        for queued, priority in zip(enqueue(db, [3, 1, 2, 5, 1, 4, 2, 3], start=wave * 10), [3, 1, 2, 5, 1, 4, 2, 3], strict=True):
            ready[queued.message_id] = priority
        for _ in range(2):
            expected = sorted(ready, key=lambda i: (ready[i], i))[:3]
            got = [c.id for c in claim(db, 3, floors)]
            assert got == expected
            for i in got:
                del ready[i]
            taken += got
    assert len(taken) == len(set(taken)) == 24


def test_a_due_retry_under_a_floor_is_claimed_before_later_and_lower_priority_mail(db: Any) -> None:
    floors = quick_floors()
    first, second, low = enqueue(db, [1, 1, 3])
    [m] = claim(db, 1, floors)
    assert m.id == first.message_id
    defer(db, m, time.time() - 1)  # due at once: the next claiming round makes it ready again
    [again] = claim(db, 1, floors, promote_due=True)
    assert again.id == first.message_id and again.attempts == 2
    assert [c.id for c in claim(db, 1, floors)] == [second.message_id]
    # Again, with nothing of its priority left above the floor: never the lower priority first.
    defer(db, again, time.time() - 1)
    assert [c.id for c in claim(db, 1, floors, promote_due=True)] == [first.message_id]
    assert [c.id for c in claim(db, 1, floors)] == [low.message_id]


def test_an_expired_lease_under_a_floor_is_reclaimed_and_claimed_first(db: Any) -> None:
    floors = quick_floors()
    lost, later, low = enqueue(db, [2, 2, 4])
    [m] = claim(db, 1, floors, owner="dead", lease=0.01)
    assert m.id == lost.message_id
    time.sleep(0.05)
    result = ops(db).queue.dispatch_round(db, q.RoundRequest(
        owner="a", lease_seconds=60, budget=2, hop=HOP, reclaim_expired=True, force=True, floors=floors,
    ))
    assert result.reclaimed == 1
    assert [c.id for c in result.claimed] == [lost.message_id, later.message_id]
    assert [c.id for c in claim(db, 1, floors)] == [low.message_id]


def test_mail_an_operator_makes_ready_under_a_floor_is_claimed_once_the_floors_are_forgotten_or_checked(db: Any) -> None:
    floors = quick_floors()
    a, b, c, d = enqueue(db, [1, 1, 1, 1])
    ops(db).queue.hold(db, [b.queue_id])
    assert [m.id for m in claim(db, 2, floors)] == [a.message_id, c.message_id]
    ops(db).queue.release(db, [b.queue_id])  # ready again, under the floor (another process: the feed says so)
    floors.forget()  # what the engine does when its change feed brings such news
    assert [m.id for m in claim(db, 1, floors)] == [b.message_id]
    # Without the news: the look from the front (every CHECK seconds) finds it.
    e, f, g = enqueue(db, [1, 1, 1], start=10)
    ops(db).queue.hold(db, [e.queue_id])
    assert [m.id for m in claim(db, 2, floors)] == [d.message_id, f.message_id]
    assert [m.id for m in claim(db, 1, floors)] == [g.message_id]  # confirms the floor past f
    ops(db).queue.release(db, [e.queue_id])
    before = floors.forgotten
    floors.check = 0.0
    assert [m.id for m in claim(db, 1, floors)] == [e.message_id]
    # On PostgreSQL the look found mail under a floor, so the floors start over.
    assert floors.forgotten - before == (1 if db.dialect == "postgresql" else 0)


def test_mail_made_ready_in_a_round_that_claims_nothing_is_claimed_next(db: Any) -> None:
    # Every slot busy: the engine's round promotes a due retry and reclaims an expired
    # lease but claims nothing. The next claim, from the floors, must still take them
    # before later and lower-priority mail.
    floors = quick_floors()
    first, second, third, lost, low = enqueue(db, [1, 1, 1, 2, 4])
    [m] = claim(db, 1, floors)
    assert m.id == first.message_id
    [gone] = claim(db, 1, floors, owner="dead", lease=0.01)
    assert gone.id == second.message_id
    assert [c.id for c in claim(db, 1, floors)] == [third.message_id]  # the floors now pass all three
    defer(db, m, time.time() - 1)
    time.sleep(0.05)
    result = ops(db).queue.dispatch_round(db, q.RoundRequest(
        owner="a", lease_seconds=60, budget=0, hop=HOP, promote_due=True, reclaim_expired=True, force=True, floors=floors,
    ))
    assert result.claimed == [] and result.reclaimed == 1
    assert [c.id for c in claim(db, 3, floors)] == [first.message_id, second.message_id, lost.message_id]
    assert [c.id for c in claim(db, 1, floors)] == [low.message_id]
