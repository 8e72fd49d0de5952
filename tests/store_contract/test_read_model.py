"""The one read model of the queue that `queue ls/show` (the ``Queue`` interface) and
the console (``ReadModel``) share: keyset pages in dispatch order, one message in
full, lanes, list rows and campaign rows."""

from __future__ import annotations

import random
from typing import Any

import pytest

from relay.store.errors import NotFound
from relay.store.intake import NewMessage
from tests.store_contract.conftest import ops


@pytest.fixture
def mixed(db: Any) -> list[Any]:
    """60 messages over all five priorities in random arrival order, a few held."""
    rng = random.Random(7)
    messages = [
        NewMessage(
            mail_from="a@example.com", recipients=[f"r{n}@example.net", f"s{n}@example.net"],
            data=f"From: a@example.com\r\nSubject: m{n}\r\nX-Priority: 1\r\n\r\nbody\r\n".encode(),
            priority=rng.randint(1, 5), subject=f"m{n}",
        )
        for n in range(60)
    ]
    queued = ops(db).intake.insert_messages(db, messages, now=1_800_000_000.0)
    ops(db).queue.hold(db, [m.queue_id for m in queued[::7]])
    return queued


@pytest.mark.parametrize(("state", "priority", "page"), [("queued", None, 7), ("active", None, 5), ("all", 3, 2),
                                                          ("held", None, 1)])
def test_keyset_pages_walk_the_same_rows_as_one_listing(db: Any, mixed: list[Any], state: str,
                                                        priority: int | None, page: int) -> None:
    whole = ops(db).queue.list_messages(db, state=state, priority=priority, limit=1000)
    assert [r.dispatch_key for r in whole] == sorted(r.dispatch_key for r in whole)
    walked: list[Any] = []
    after = None
    while True:
        rows = ops(db).queue.list_messages(db, state=state, priority=priority, after=after, limit=page)
        if not rows:
            break
        walked += rows
        after = rows[-1].dispatch_key
    assert walked == whole and whole


def test_the_console_page_is_the_same_read(db: Any, mixed: list[Any]) -> None:
    first = ops(db).queue.list_messages(db, state="queued", limit=10)
    assert ops(db).read_model.queue_page(db, "queued", limit=10) == first
    assert ops(db).read_model.queue_page(db, "queued", after=first[-1].dispatch_key, limit=10) == ops(db).queue.list_messages(db, state="queued", after=first[-1].dispatch_key, limit=10
    )
    assert all(r.recipients == 2 for r in first)


def test_one_message_in_full_for_both_surfaces(db: Any, mixed: list[Any]) -> None:
    queue_id = mixed[0].queue_id
    detail = ops(db).queue.message_detail(db, queue_id)
    assert detail.message.queue_id == queue_id and detail.recipient_count == 2
    assert [r.address for r in detail.recipients] == ["r0@example.net", "s0@example.net"]
    assert detail.headers.startswith("From: a@example.com\r\n") and "body" not in detail.headers
    shown = ops(db).read_model.message_detail(db, queue_id=queue_id, max_recipients=1)
    assert shown is not None and shown.message == detail.message
    assert len(shown.recipients) == 1 and shown.recipient_count == 2
    assert ("Subject", "m0") in shown.headers and shown.events == detail.events
    assert ops(db).read_model.message_detail(db, 10**9) is None
    with pytest.raises(NotFound, match="no message with queue id"):
        ops(db).queue.message_detail(db, "QNOPE")


def test_lanes_list_rows_and_campaign_rows(db: Any, mixed: list[Any]) -> None:
    read = ops(db).read_model
    lanes = read.priority_lanes(db)
    assert [lane.priority for lane in lanes] == [1, 2, 3, 4, 5]
    assert sum(lane.queued + lane.held for lane in lanes) == 60
    assert sum(lane.held for lane in lanes) == len(mixed[::7])
    assert read.list_rows(db, since=0) == [] and read.campaign_rows(db) == []
    assert read.delivery_rate(db) == 0.0
