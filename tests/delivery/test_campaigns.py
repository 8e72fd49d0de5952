"""Campaigns: expansion in batches, preemption by priority traffic (paused and
resumed by itself), operator pause/resume/cancel, nothing lost or duplicated."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from harness.sink import CaptureSink
from relay.campaigns import build_template
from relay.reasons import EventKind, Reason
from relay.store import campaigns as store_campaigns
from relay.store import directory
from relay.store import queue as q
from relay.store.events import find_events
from tests.delivery.conftest import enqueue, eventually, message, point_at, running_engine, states


def make_list(db: Any, name: str, members: int) -> list[str]:
    directory.create_list(db, name)
    addresses = [f"member{n:06d}@example.org" for n in range(members)]
    directory.import_members(db, name, [(a, f"Member {n}") for n, a in enumerate(addresses)])
    return addresses


def new_campaign(db: Any, list_name: str, **kw: Any) -> store_campaigns.CampaignInfo:
    template, subject, _ = build_template(subject="Spring news", mail_from="news@example.com", body="Hello members.")
    return store_campaigns.create_campaign(db, list_name, subject=subject, template=template, mail_from="news@example.com", **kw)


async def test_a_large_campaign_yields_to_priority_one_mail_and_completes(db: Any, store_path: Path, sink: CaptureSink) -> None:
    members = make_list(db, "news", 5000)
    point_at(db, sink, parallel=4)
    campaign = new_campaign(db, "news")
    urgent: list[Any] = []
    async with running_engine(store_path):
        for k in range(5):
            await sink.wait_for(600 + 800 * k, within=60)
            urgent += enqueue(db, [message(9000 + k, priority=1, to=[f"ceo{k}@example.net"])])
        records = await sink.wait_for(5005, within=90)
        await eventually(lambda: store_campaigns.get_campaign(db, campaign.id).state == "done", within=20)
    campaign_records = [r for r in records if r.subject == "Spring news"]
    first, last = campaign_records[0].at, campaign_records[-1].at
    print(f"campaign drained at {len(campaign_records) / max(last - first, 1e-6):.0f} msg/s")

    # Nothing lost, nothing duplicated.
    assert sorted(rcpt for r in campaign_records for rcpt in r.rcpt_tos) == members
    assert len({r.message_id for r in records}) == 5005
    assert states(db) == {"sent": 5005}

    # Each priority-1 message was dispatched before any further campaign message started.
    attempts = sorted(find_events(db, reason=str(Reason.DELIVERY_ATTEMPT), limit=100_000), key=lambda e: e.id)
    campaign_ids = {r.id for r in q.list_messages(db, state="all", campaign_id=campaign.id, limit=100_000)}
    assert len(campaign_ids) == 5000
    for queued in urgent:
        queued_event = next(e for e in q.message_detail(db, queued.queue_id).events if e.reason == str(Reason.ACCEPTED))
        dispatched = next(e for e in attempts if e.message_id == queued.message_id)
        between = [e for e in attempts if queued_event.id < e.id < dispatched.id and e.message_id in campaign_ids]
        assert between == [], f"campaign messages dispatched while {queued.queue_id} (priority 1) was ready"

    # The campaign showed "paused: priority traffic" and resumed by itself, then finished.
    campaign_events = find_events(db, kind=str(EventKind.CAMPAIGN), limit=1000)
    reasons = [e.reason for e in sorted(campaign_events, key=lambda e: e.id)]
    assert reasons.count(str(Reason.CAMPAIGN_PAUSED_PRIORITY)) >= 1
    assert reasons.count(str(Reason.CAMPAIGN_RESUMED)) >= reasons.count(str(Reason.CAMPAIGN_PAUSED_PRIORITY))
    assert reasons[-1] == str(Reason.CAMPAIGN_DONE)
    assert reasons[:2] == [str(Reason.CAMPAIGN_CREATED), str(Reason.CAMPAIGN_STARTED)]
    done = store_campaigns.get_campaign(db, campaign.id)
    assert (done.sent, done.failed, done.pending, done.total, done.display_state) == (5000, 0, 0, 5000, "done")


async def test_preempted_campaign_shows_paused_priority_traffic(db: Any, store_path: Path, sink: CaptureSink) -> None:
    make_list(db, "small", 20)
    point_at(db, sink, parallel=1, paused=True)
    campaign = new_campaign(db, "small")
    async with running_engine(store_path):
        await eventually(lambda: store_campaigns.get_campaign(db, campaign.id).expand_done)
        enqueue(db, [message(n, priority=1) for n in range(3)])
        q.set_paused(db, False)
        await sink.wait_for(23)
    paused = find_events(db, reason=str(Reason.CAMPAIGN_PAUSED_PRIORITY))
    assert len(paused) == 1 and "paused: priority traffic" in paused[0].detail
    assert store_campaigns.get_campaign(db, campaign.id).state in ("sending", "done")
    # What the console and `campaigns ls` show while preempted.
    row = store_campaigns.get_campaign(db, campaign.id)
    preempted = dataclasses.replace(row, state="paused", paused_reason="priority")
    assert preempted.display_state == "paused: priority traffic"


async def test_operator_pause_resume_and_cancel(db: Any, store_path: Path, sink: CaptureSink) -> None:
    make_list(db, "ops", 30)
    point_at(db, sink, parallel=1, paused=True)
    first = new_campaign(db, "ops")
    second = new_campaign(db, "ops", priority=4)
    async with running_engine(store_path):
        await eventually(lambda: store_campaigns.get_campaign(db, second.id).expand_done)
        store_campaigns.pause_campaign(db, first.id)
        store_campaigns.cancel_campaign(db, second.id)
        q.set_paused(db, False)
        await eventually(lambda: states(db).get("held") == 30 and "queued" not in states(db))
        assert store_campaigns.get_campaign(db, first.id).display_state == "paused"
        assert sink.messages == []
        store_campaigns.resume_campaign(db, first.id)
        await sink.wait_for(30)
        await eventually(lambda: store_campaigns.get_campaign(db, first.id).state == "done")
    cancelled = store_campaigns.get_campaign(db, second.id)
    assert cancelled.state == "cancelled" and cancelled.pending == 0 and cancelled.sent == 0
    assert len(sink.messages) == 30  # the cancelled one sent nothing
    reasons = {e.reason for e in find_events(db, kind=str(EventKind.CAMPAIGN), limit=100)}
    assert {str(Reason.CAMPAIGN_PAUSED), str(Reason.CAMPAIGN_RESUMED), str(Reason.CAMPAIGN_CANCELLED)} <= reasons


def test_expansion_is_batched_and_resumes_from_its_cursor(db: Any) -> None:
    members = make_list(db, "big", 1234)
    campaign = new_campaign(db, "big", priority=2)
    assert store_campaigns.start_due_campaigns(db) == [campaign.id]
    sizes = []
    while True:
        created = store_campaigns.expand_batch(db, campaign.id, batch=500, server_name="relay.test")
        if not created:
            break
        sizes.append(created)
        # A crash between batches loses nothing: the cursor is committed with each batch.
    assert sizes == [500, 500, 234]
    rows = q.list_messages(db, state="all", campaign_id=campaign.id, limit=10_000)
    assert len(rows) == 1234 and {r.priority for r in rows} == {2}
    details = [q.message_detail(db, rows[i].queue_id) for i in (0, 777)]
    for d in details:
        assert d.recipients[0].address in members
        first_line = d.headers.split("\r\n")[0]
        assert first_line.startswith("To: ") and f"<{d.recipients[0].address}>" in first_line
        assert f"Message-ID: <{d.message.queue_id}@relay.test>" in d.headers
    info = store_campaigns.get_campaign(db, campaign.id)
    assert info.expand_done and info.total == 1234 and info.pending == 1234


def test_a_scheduled_campaign_waits_for_its_time(db: Any) -> None:
    make_list(db, "later", 3)
    campaign = new_campaign(db, "later", scheduled_at=time.time() + 3600)
    assert store_campaigns.start_due_campaigns(db) == []
    assert store_campaigns.get_campaign(db, campaign.id).state == "scheduled"
    assert store_campaigns.start_due_campaigns(db, now=time.time() + 3601) == [campaign.id]
