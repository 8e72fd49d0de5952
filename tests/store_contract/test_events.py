"""The event log: appended in order, read newest first a page at a time, filtered,
client text escaped once on the way in."""

from __future__ import annotations

from typing import Any

from relay.reasons import EventKind, Reason
from relay.store.events import NewEvent
from tests.store_contract.conftest import Case


def _event(n: int, **fields: Any) -> NewEvent:
    defaults: dict[str, Any] = {"kind": EventKind.QUEUED, "reason": Reason.ACCEPTED, "detail": f"event {n}", "at": 1000.0 + n}
    return NewEvent(**{**defaults, **fields})


def test_events_come_back_newest_first_in_pages(backend: Case, conn: Any) -> None:
    log = backend.backend.events
    first = log.record_event(conn, _event(0))
    log.record_events(conn, [_event(n) for n in range(1, 5)])
    page = log.find_events(conn, limit=3)
    assert [e.detail for e in page] == ["event 4", "event 3", "event 2"]
    rest = log.find_events(conn, before_id=page[-1].id, limit=3)
    assert [e.detail for e in rest] == ["event 1", "event 0"]
    assert rest[-1].id == first


def test_filters_and_time_bounds(backend: Case, conn: Any) -> None:
    log = backend.backend.events
    log.record_events(conn, [
        _event(1, username="ann", port=587),
        _event(2, username="bob", kind=EventKind.REFUSED, reason=Reason.AUTH_BAD_CREDENTIALS, port=465),
        _event(3, username="ann", kind=EventKind.REFUSED, reason=Reason.AUTH_BAD_CREDENTIALS, port=587),
    ])
    assert [e.detail for e in log.find_events(conn, username="ann")] == ["event 3", "event 1"]
    assert [e.detail for e in log.find_events(conn, kind=str(EventKind.REFUSED), port=465)] == ["event 2"]
    assert [e.detail for e in log.find_events(conn, reason=str(Reason.AUTH_BAD_CREDENTIALS))] == ["event 3", "event 2"]
    assert [e.detail for e in log.find_events(conn, since=1002.0, until=1003.0)] == ["event 2"]
    kinds = [str(EventKind.QUEUED), str(EventKind.REFUSED)]
    assert len(log.find_events(conn, kinds=kinds)) == 3


def test_one_messages_events_in_order(backend: Case, conn: Any) -> None:
    log = backend.backend.events
    log.record_events(conn, [_event(1, message_id=7), _event(2, message_id=8), _event(3, message_id=7)])
    assert [e.detail for e in log.events_for_message(conn, 7)] == ["event 1", "event 3"]
    assert log.events_for_message(conn, 9) == []


def test_client_text_is_escaped_on_the_way_in(backend: Case, conn: Any) -> None:
    log = backend.backend.events
    log.record_event(conn, _event(1, username="evil\x1b[31m", client="1.2.3.4\r\n", detail="bad\x07"))
    [event] = log.find_events(conn)
    for text in (event.username, event.client, event.detail):
        assert text is not None and "\x1b" not in text and "\r" not in text and "\x07" not in text
