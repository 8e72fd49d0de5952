"""The console's read queries (relay/store/views.py): right answers, and index-backed
or one page — never every row — so 100,000 queued messages stay cheap."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from textual.app import App, ComposeResult

from console import format as fmt
from console.widgets.keyed_table import KeyedTable
from relay.store import open_store, transaction, views
from relay.store.bulk import queue_bulk
from relay.store.events import find_events
from tests.console.conftest import NOW, T0


@pytest.fixture
def seeded_db(seeded_store: Path):  # noqa: ANN201
    db = open_store(seeded_store)
    yield db
    db.close()


def plan(db: sqlite3.Connection, sql: str, args: tuple[object, ...] = ()) -> str:
    return " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, args))


def test_lanes_count_each_state_per_priority(seeded_db: sqlite3.Connection) -> None:
    lanes = {lane.priority: lane for lane in views.priority_lanes(seeded_db)}
    assert [lanes[p].queued for p in range(1, 6)] == [1, 1, 2, 1, 1]
    assert (lanes[3].deferred, lanes[3].held, lanes[2].sending) == (1, 1, 1)
    assert lanes[2].oldest_wait(NOW) == 3600.0 and lanes[1].waiting == 1


def test_pages_follow_dispatch_order_with_keyset_paging(tmp_path: Path) -> None:
    db = open_store(tmp_path / "deep.db")
    try:
        queue_bulk(db, 1000, priorities=(3, 1, 5, 2, 4), now=T0)
        seen: list[tuple[int, int]] = []
        after = None
        while True:
            page = views.queue_page(db, "queued", after=after, limit=64)
            if not page:
                break
            seen += [row.dispatch_key for row in page]
            after = page[-1].dispatch_key
        assert seen == sorted(seen) and len(seen) == len(set(seen)) == 1000
        # Every page is an index range, never a scan of the queue.
        for sql, args in (
            ("SELECT state, priority, count(*), min(id) FROM messages WHERE state IN (?, ?, ?, ?) GROUP BY state, priority",
             ("queued", "deferred", "sending", "held")),
            ("SELECT id FROM messages m WHERE m.state = ? AND m.priority = ? AND m.id > ? ORDER BY m.id LIMIT 50",
             ("queued", 3, 10)),
            ("SELECT id FROM messages m WHERE m.state = ? AND m.priority > ? ORDER BY m.priority, m.id LIMIT 50",
             ("queued", 3)),
            ("SELECT count(*) FROM messages WHERE finished_at >= ? AND +state = 'sent'", (0,)),
        ):
            text = plan(db, sql, args)
            assert "SCAN messages" not in text and "SCAN m " not in text and "INDEX" in text, text
    finally:
        db.close()


def test_delivery_rate_counts_recent_deliveries(seeded_db: sqlite3.Connection) -> None:
    with transaction(seeded_db):
        seeded_db.execute("UPDATE messages SET state = 'sent', finished_at = ? WHERE queue_id IN (?, ?)",
                          (NOW - 2, "Q00000000001", "Q00000000005"))
        seeded_db.execute("UPDATE messages SET state = 'sent', finished_at = ? WHERE queue_id = ?",
                          (NOW - 60, "Q00000000006"))
    assert views.delivery_rate(seeded_db, now=NOW, window=10) == 0.2


def test_message_detail_has_headers_recipients_and_timeline(seeded_db: sqlite3.Connection) -> None:
    detail = views.message_detail(seeded_db, queue_id="Q00000000002")
    assert detail is not None
    assert (detail.message.header_priority, detail.message.user_priority, detail.message.priority) == (1, 3, 1)
    assert ("X-Priority", "1") in detail.headers and ("Subject", "Server down!") in detail.headers
    assert [r.address for r in detail.recipients] == ["reader2@example.net"]
    assert [e.reason for e in detail.events] == ["accepted"]
    assert views.message_detail(seeded_db, 10_000) is None


def test_list_rows_and_campaign_rows(seeded_db: sqlite3.Connection) -> None:
    rows = {r.name: r for r in views.list_rows(seeded_db, since=fmt.local_midnight(NOW))}
    assert (rows["Newsletter"].queued, rows["Shop"].queued, rows["Shop"].refused_today) == (8, 1, 1)
    assert views.list_rows(seeded_db, since=NOW)[1].refused_today == 0
    (campaign,) = views.campaign_rows(seeded_db)
    assert (campaign.state_label, campaign.progress, campaign.total) == ("scheduled", 0.0, 12)
    with transaction(seeded_db):
        seeded_db.execute("UPDATE campaigns SET state = 'paused', paused_reason = 'priority'")
    (campaign,) = views.campaign_rows(seeded_db)
    assert campaign.paused_by_priority and campaign.state_label == "paused: priority traffic"


def test_event_pages_filter_and_page(seeded_db: sqlite3.Connection) -> None:
    assert [e.reason for e in find_events(seeded_db, username="bob")] == ["sender-unverified", "accepted"]
    assert [e.port for e in find_events(seeded_db, port=587)] == [587]
    assert [e.kind for e in find_events(seeded_db, kinds=["refused", "auth"])] == ["auth", "refused"]
    first = find_events(seeded_db, limit=4)
    second = find_events(seeded_db, limit=4, before_id=first[-1].id)
    assert len(first) == len(second) == 4 and first[-1].id > second[0].id
    assert find_events(seeded_db, since=T0 + 100, until=T0 + 200)[0].reason == "auth-bad-credentials"


def test_formatting_helpers() -> None:
    assert [fmt.age(s) for s in (None, 5, 65, 3700, 90000)] == ["-", "5s", "1m05s", "1h01m", "1d01h"]
    assert fmt.count(100000) == "100,000" and fmt.shorten("a  b\nc", 4) == "a b…"
    assert fmt.parse_since("15m", NOW) == NOW - 900 and fmt.parse_since("", NOW) is None
    with pytest.raises(ValueError):
        fmt.parse_since("soon", NOW)


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield KeyedTable([("k", "Key", 4), ("v", "Value", 6)])


async def test_keyed_table_updates_by_key_and_keeps_the_cursor() -> None:
    app = TableApp()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(KeyedTable)
        table.sync([(k, [k, "x"]) for k in "abcde"])
        await pilot.pause()
        table.select_key("c")
        table.sync([(k, [k, "y" if k == "c" else "x"]) for k in "bcdef"])  # head gone, tail added
        await pilot.pause()
        assert table.keys() == list("bcdef") and table.cursor_key == "c"
        assert table.get_row("c") == ["c", "y"]
        table.sync([(k, [k, "x"]) for k in "zbcdef"])  # a newcomer at the top: order changes
        await pilot.pause()
        assert table.keys() == list("zbcdef") and table.cursor_key == "c"
        table.sync([(k, [k, "x"]) for k in "zbdef"])  # the cursor's row is gone: same position
        await pilot.pause()
        assert table.cursor_row == 2


class AutoWidthApp(App[None]):
    CSS = "KeyedTable { width: 1fr; height: 1fr; }"

    def compose(self) -> ComposeResult:
        yield KeyedTable([("k", "Key", 4), ("s", "Subject", None)])


async def test_a_row_painted_before_its_columns_are_measured_is_painted_again_at_the_new_width() -> None:
    # A busy console can paint a new row before the table's idle pass has measured its
    # columns; the cells painted then (cut to the old width) must not stay on screen.
    app = AutoWidthApp()
    async with app.run_test(size=(60, 8)) as pilot:
        table = app.query_one(KeyedTable)
        table.sync([("a", ["a", "x"])])
        await pilot.pause()
        table.sync([("a", ["a", "x"]), ("b", ["b", "While polling"])])
        early = table.render_line(2).text  # painted now: the Subject column still 7 wide
        assert "While p" in early and "While polling" not in early
        await pilot.pause()  # the idle pass measures the new row
        assert table.columns["s"].content_width == len("While polling")
        assert "While polling" in table.render_line(2).text
