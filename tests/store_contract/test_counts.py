"""Maintained queue counts: ``queue_counts`` and ``list_queue_counts`` stay equal to a
full recount after any sequence of real store operations (hypothesis), on every
backend, and a recount repairs a count that went wrong. (The migration that fills
them and ``smtpplus store recount``: tests/foundation/test_counts_cli.py.)"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from relay.admin import campaigns as admin_campaigns
from relay.campaigns import build_template
from relay.reasons import Reason
from relay.store import directory
from relay.store import queue as q
from relay.store.bulk import queue_bulk
from relay.store.errors import InvalidInput
from relay.store.intake import NewMessage
from tests.store_contract.conftest import BACKENDS, Case, ops

HOP = "127.0.0.1:2525"
SENDER = "news@example.com"
NO_LOGIN = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$RdescudvJCsgt3ub+b+dWRWJTmaaJObG7vJ6uB3sjLw"
LISTS = ("alpha", "beta")


def new_message(n: int, priority: int, list_info: directory.ListInfo | None, state: str = "queued") -> NewMessage:
    data = f"From: {SENDER}\r\nTo: r{n}@example.net\r\nSubject: m{n}\r\n\r\nbody\r\n".encode()
    return NewMessage(
        mail_from=SENDER, recipients=[f"r{n}@example.net"], data=data, priority=priority, header_priority=priority,
        user_priority=priority, subject=f"m{n}", state=state,
        list_id=list_info.id if list_info else None, list_name=list_info.name if list_info else None,
    )


def assert_counts_match(db: Any) -> None:
    assert ops(db).counts.differences(db) == []


class QueueCounts(RuleBasedStateMachine):
    """Random sequences of intake, claims, outcomes, operator actions, campaigns,
    list deletion and pruning; after every step the counts equal a full recount.
    Each example runs on a fresh store of the backend under test."""

    def __init__(self, case_for: Callable[[Path], Case]) -> None:
        super().__init__()
        self.case_for = case_for

    @initialize()
    def open(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="smtpplus-counts-")
        self.db = self.case_for(Path(self.tmp.name)).open()
        ops(self.db).queue.set_next_hop(self.db, HOP)
        ops(self.db).directory.create_list(self.db, "senders")
        ops(self.db).directory.create_user(self.db, list_name="senders", password_hash=NO_LOGIN, username="owner",
                              domains=["example.com"], active=True)
        ops(self.db).directory.approve_identities(self.db, ["example.com"], "test setup")
        for name in LISTS:
            ops(self.db).directory.create_list(self.db, name)
            ops(self.db).directory.import_members(self.db, name, [(f"m{n}@example.org", "") for n in range(3)])
        self.n = 0
        self.claimed: list[q.Claimed] = []
        self.campaigns: list[int] = []

    def teardown(self) -> None:
        if hasattr(self, "db"):
            self.db.close()
            self.tmp.cleanup()

    def _list(self, which: int) -> directory.ListInfo | None:
        if which >= len(LISTS):
            return None
        try:
            return ops(self.db).directory.get_list(self.db, LISTS[which])
        except Exception:  # deleted by an earlier step
            return None

    def _ref(self, pick: int) -> list[str]:
        ids = [r[0] for r in self.db.execute("SELECT id FROM messages ORDER BY id")]
        return [f"#{ids[pick % len(ids)]}"] if ids else []

    @rule(count=st.integers(1, 4), priority=st.integers(1, 5), which=st.integers(0, 2),
          state=st.sampled_from(["queued", "queued", "held"]))
    def intake(self, count: int, priority: int, which: int, state: str) -> None:
        target = self._list(which)
        batch = []
        for _ in range(count):
            self.n += 1
            batch.append(new_message(self.n, priority, target, state))
        ops(self.db).intake.insert_messages(self.db, batch)

    @rule(budget=st.integers(1, 5))
    def claim(self, budget: int) -> None:
        request = q.RoundRequest(owner="a", lease_seconds=60, budget=budget, hop=HOP, force=True)
        self.claimed += ops(self.db).queue.dispatch_round(self.db, request).claimed

    @precondition(lambda self: bool(self.claimed))
    @rule(outcome=st.sampled_from(["sent", "deferred", "deferred-due", "failed"]), take=st.integers(1, 3))
    def settle(self, outcome: str, take: int) -> None:
        done, self.claimed = self.claimed[:take], self.claimed[take:]
        state = outcome.split("-")[0]
        due = time.time() - 1 if outcome == "deferred-due" else time.time() + 3600
        reason = {"sent": Reason.DELIVERED, "deferred": Reason.DEFERRED_4XX, "failed": Reason.FAILED_5XX}[state]
        outcomes = [
            q.Outcome(message=m, state=state, reason=reason, reply="250 ok" if state == "sent" else "450 later",
                      next_attempt_at=due if state == "deferred" else None)
            for m in done
        ]
        ops(self.db).queue.dispatch_round(self.db, q.RoundRequest(owner="a", lease_seconds=60, budget=0, hop=HOP, outcomes=outcomes))

    @rule()
    def reclaim(self) -> None:
        ops(self.db).queue.reclaim_owner(self.db, "a")
        self.claimed = []

    @rule(action=st.sampled_from(["hold", "release", "retry", "delete"]), pick=st.integers(0, 1000))
    def operator(self, action: str, pick: int) -> None:
        refs = self._ref(pick)
        if refs:
            getattr(ops(self.db).queue, action)(self.db, refs)

    @rule(which=st.integers(0, 1), priority=st.integers(1, 5))
    def campaign(self, which: int, priority: int) -> None:
        target = self._list(which)
        if target is None:
            return
        template, subject, _ = build_template(subject="News", mail_from=SENDER, body="Hello.")
        info = admin_campaigns.create_campaign(self.db, target.name, subject=subject, template=template,
                                               mail_from=SENDER, priority=priority)
        ops(self.db).campaigns.start_due_campaigns(self.db)
        ops(self.db).campaigns.expand_batch(self.db, info.id, batch=2)
        self.campaigns.append(info.id)

    @precondition(lambda self: bool(self.campaigns))
    @rule(action=st.sampled_from(["pause", "resume", "cancel"]), pick=st.integers(0, 100))
    def campaign_action(self, action: str, pick: int) -> None:
        campaign_id = self.campaigns[pick % len(self.campaigns)]
        try:
            getattr(ops(self.db).campaigns, f"{action}_campaign")(self.db, campaign_id)
        except InvalidInput:
            pass  # e.g. resuming one that is not paused: refused, nothing changed

    @rule(which=st.integers(0, 1))
    def delete_list(self, which: int) -> None:
        target = self._list(which)
        if target is not None:
            ops(self.db).directory.delete_list(self.db, target.name)

    @rule()
    def prune(self) -> None:
        ops(self.db).queue.prune(self.db, before=time.time() + 1, batch=3)

    @rule()
    def bulk(self) -> None:
        queue_bulk(self.db, 7)

    @invariant()
    def counts_equal_a_recount(self) -> None:
        if hasattr(self, "db"):
            assert_counts_match(self.db)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_counts_equal_a_recount_after_random_operations(name: str) -> None:
    run_state_machine_as_test(
        lambda: QueueCounts(BACKENDS[name]),
        settings=settings(
            max_examples=25, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )


def test_lanes_and_list_rows_read_the_maintained_counts(db: Any) -> None:
    alpha = ops(db).directory.create_list(db, "alpha")
    ops(db).intake.insert_messages(db, [new_message(1, 1, alpha), new_message(2, 1, alpha, "held"), new_message(3, 4, None)])
    lanes = {lane.priority: lane for lane in ops(db).read_model.priority_lanes(db)}
    assert (lanes[1].queued, lanes[1].held, lanes[4].queued, lanes[2].queued) == (1, 1, 1, 0)
    assert lanes[1].oldest_at is not None and lanes[2].oldest_at is None
    rows = {r.name: r.queued for r in ops(db).read_model.list_rows(db, since=0)}
    assert rows["alpha"] == 2
    overview = ops(db).queue.queue_overview(db)
    assert [(lane.queued, lane.held) for lane in overview.lanes][:2] == [(1, 1), (0, 0)]


def test_recount_repairs_and_reports_a_wrong_count(db: Any) -> None:
    alpha = ops(db).directory.create_list(db, "alpha")
    ops(db).intake.insert_messages(db, [new_message(1, 2, alpha), new_message(2, 2, alpha)])
    assert ops(db).counts.recount(db) == []
    # One row per key says the wrong count (PostgreSQL keeps a key's count in shards).
    db.execute("DELETE FROM queue_counts WHERE state = 'queued' AND priority = 2")
    db.execute("INSERT INTO queue_counts(state, priority, n) VALUES ('queued', 2, 99)")
    db.execute("DELETE FROM list_queue_counts")
    db.execute("INSERT INTO list_queue_counts(list_id, n) VALUES (?, 5)", (alpha.id,))
    fixes = ops(db).counts.recount(db)
    assert {(f.table, f.key, f.kept, f.counted) for f in fixes} == {
        ("queue_counts", "queued/2", 99, 2), ("list_queue_counts", f"list {alpha.id}", 5, 2),
    }
    assert ops(db).counts.differences(db) == [] and ops(db).counts.recount(db) == []
