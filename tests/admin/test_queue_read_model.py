"""The one read model of the queue (relay.store.queue) that `queue ls/show` and the
console share: keyset pages in dispatch order, and one message in full."""

from __future__ import annotations

import random
from typing import Any

import pytest

from relay.store import queue as q
from relay.store import views
from relay.store.errors import NotFound
from relay.store.intake import NewMessage, insert_messages


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
    queued = insert_messages(db, messages, now=1_800_000_000.0)
    q.hold(db, [m.queue_id for m in queued[::7]])
    return queued


@pytest.mark.parametrize(("state", "priority", "page"), [("queued", None, 7), ("active", None, 5), ("all", 3, 2),
                                                          ("held", None, 1)])
def test_keyset_pages_walk_the_same_rows_as_one_listing(db: Any, mixed: list[Any], state: str,
                                                        priority: int | None, page: int) -> None:
    whole = q.list_messages(db, state=state, priority=priority, limit=1000)
    assert [r.dispatch_key for r in whole] == sorted(r.dispatch_key for r in whole)
    walked: list[Any] = []
    after = None
    while True:
        rows = q.list_messages(db, state=state, priority=priority, after=after, limit=page)
        if not rows:
            break
        walked += rows
        after = rows[-1].dispatch_key
    assert walked == whole and whole


def test_the_console_page_is_the_same_read(db: Any, mixed: list[Any]) -> None:
    first = q.list_messages(db, state="queued", limit=10)
    assert views.queue_page(db, "queued", limit=10) == first
    assert views.queue_page(db, "queued", after=first[-1].dispatch_key, limit=10) == q.list_messages(
        db, state="queued", after=first[-1].dispatch_key, limit=10
    )
    assert all(r.recipients == 2 for r in first)


def test_one_message_in_full_for_both_surfaces(db: Any, mixed: list[Any]) -> None:
    queue_id = mixed[0].queue_id
    detail = q.message_detail(db, queue_id)
    assert detail.message.queue_id == queue_id and detail.recipient_count == 2
    assert [r.address for r in detail.recipients] == ["r0@example.net", "s0@example.net"]
    assert detail.headers.startswith("From: a@example.com\r\n") and "body" not in detail.headers
    shown = views.message_detail(db, queue_id=queue_id, max_recipients=1)
    assert shown is not None and shown.message == detail.message
    assert len(shown.recipients) == 1 and shown.recipient_count == 2
    assert ("Subject", "m0") in shown.headers and shown.events == detail.events
    assert views.message_detail(db, 10**9) is None
    with pytest.raises(NotFound, match="no message with queue id"):
        q.message_detail(db, "QNOPE")
