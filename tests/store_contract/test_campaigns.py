"""Campaigns (through the backend's ``Campaigns`` interface): expansion in batches
from a committed cursor, scheduling, and what a campaign shows while delivery is
paused. (Preemption and the engine: tests/delivery/test_campaigns.py.)"""

from __future__ import annotations

import time
from typing import Any

from tests.delivery.test_campaigns import make_list, new_campaign
from tests.store_contract.conftest import ops


def test_expansion_is_batched_and_resumes_from_its_cursor(db: Any) -> None:
    members = make_list(db, "big", 1234)
    campaign = new_campaign(db, "big", priority=2)
    assert ops(db).campaigns.start_due_campaigns(db) == [campaign.id]
    sizes = []
    while True:
        created = ops(db).campaigns.expand_batch(db, campaign.id, batch=500, server_name="relay.test")
        if not created:
            break
        sizes.append(created)
        # A crash between batches loses nothing: the cursor is committed with each batch.
    assert sizes == [500, 500, 234]
    rows = ops(db).queue.list_messages(db, state="all", campaign_id=campaign.id, limit=10_000)
    assert len(rows) == 1234 and {r.priority for r in rows} == {2}
    details = [ops(db).queue.message_detail(db, rows[i].queue_id) for i in (0, 777)]
    for d in details:
        assert d.recipients[0].address in members
        first_line = d.headers.split("\r\n")[0]
        assert first_line.startswith("To: ") and f"<{d.recipients[0].address}>" in first_line
        assert f"Message-ID: <{d.message.queue_id}@relay.test>" in d.headers
    info = ops(db).campaigns.get_campaign(db, campaign.id)
    assert info.expand_done and info.total == 1234 and info.pending == 1234


def test_a_scheduled_campaign_waits_for_its_time(db: Any) -> None:
    make_list(db, "later", 3)
    campaign = new_campaign(db, "later", scheduled_at=time.time() + 3600)
    assert ops(db).campaigns.start_due_campaigns(db) == []
    assert ops(db).campaigns.get_campaign(db, campaign.id).state == "scheduled"
    assert ops(db).campaigns.start_due_campaigns(db, now=time.time() + 3601) == [campaign.id]


def test_campaigns_show_that_all_delivery_is_paused(db: Any) -> None:
    make_list(db, "p", 3)
    campaign = new_campaign(db, "p")
    ops(db).campaigns.start_due_campaigns(db)
    assert ops(db).campaigns.get_campaign(db, campaign.id).display_state == "sending"
    ops(db).queue.set_paused(db, True)
    assert ops(db).campaigns.get_campaign(db, campaign.id).display_state == "paused (all delivery paused)"
    assert ops(db).campaigns.list_campaigns(db)[0].display_state == "paused (all delivery paused)"
    ops(db).campaigns.pause_campaign(db, campaign.id)  # an operator's own pause says so
    assert ops(db).campaigns.get_campaign(db, campaign.id).display_state == "paused"
    ops(db).queue.set_paused(db, False)
    ops(db).campaigns.resume_campaign(db, campaign.id)
    assert ops(db).campaigns.get_campaign(db, campaign.id).display_state == "sending"
