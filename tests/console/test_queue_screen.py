"""The live queue screen on a seeded store: lanes, dispatch order, views, paging and
every queue action (pause/resume, rate, hold/release, retry, delete, campaigns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relay.store import open_store
from relay.store.bulk import queue_bulk
from relay.store.queue import delivery_settings
from relay.store.views import message_detail
from tests.console.conftest import NOW, press, row_keys, screen_text, wait_for


def ids_by_queue_id(path: Path) -> dict[str, int]:
    db = open_store(path)
    try:
        return {f"Q{n:011d}": message_detail(db, queue_id=f"Q{n:011d}").message.id for n in range(1, 10)}  # type: ignore[union-attr]
    finally:
        db.close()


def state_of(path: Path, queue_id: str) -> str | None:
    db = open_store(path)
    try:
        detail = message_detail(db, queue_id=queue_id)
        return None if detail is None else detail.message.state
    finally:
        db.close()


async def test_opens_on_the_live_queue_in_dispatch_order(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        assert app.current_mode == "queue"
        table = app.screen.table()
        ids = ids_by_queue_id(seeded_store)
        # Priority first, then arrival: 2 (p1), 4 (p2), 1, 5 (p3), 6 (p4), 3 (p5).
        assert row_keys(table) == [str(ids[f"Q{n:011d}"]) for n in (2, 4, 1, 5, 6, 3)]
        lanes = {lane.priority: lane for lane in app.screen.data.lanes}
        assert (lanes[3].queued, lanes[3].deferred, lanes[3].held) == (2, 1, 1)
        assert lanes[2].sending == 1
        assert lanes[1].oldest_wait(NOW) == 3600.0
        text = screen_text(app)
        assert "! Server down!" in text  # header priority 1 is flagged as urgent
        assert "1h00m" in text


async def test_views_show_in_flight_deferred_held_and_campaigns(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        ids = ids_by_queue_id(seeded_store)
        expected = {"sending": 9, "deferred": 7, "held": 8}
        for view in ("sending", "deferred", "held"):
            await pilot.press("right_square_bracket")
            await wait_for(pilot, lambda: app.screen.data.request.view == view)  # noqa: B023 (awaited here)
            assert row_keys(app.screen.table(view)) == [str(ids[f"Q{expected[view]:011d}"])]
        await pilot.press("right_square_bracket")
        await wait_for(pilot, lambda: app.screen.data.request.view == "destinations")
        assert row_keys(app.screen.table("destinations")) == ["example.net"]  # the seeded mail's recipients
        await pilot.press("right_square_bracket")
        await wait_for(pilot, lambda: app.screen.data.request.view == "campaigns")
        # Read the table's cells, not the painted screen: under load Textual paints new
        # rows at their old column widths for a while ("starts i"); the snapshot tests
        # cover how the view is painted.
        await wait_for(pilot, lambda: "Autumn sale" in table_text(app.screen.table("campaigns")) and "starts in 30m00s" in table_text(app.screen.table("campaigns")))
        await pilot.press("left_square_bracket", "left_square_bracket")
        await wait_for(pilot, lambda: app.screen.data.request.view == "held")
        assert "451 4.7.1" not in screen_text(app)


def table_text(table: Any) -> str:
    return " ".join(str(cell) for row in table.ordered_rows for cell in table.get_row(row.key))


async def test_deferred_view_shows_the_next_try_and_the_reply(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        await pilot.press("right_square_bracket", "right_square_bracket")
        await wait_for(pilot, lambda: app.screen.data.request.view == "deferred")
        # The view switches first; its rows arrive with the next applied snapshot. Read the
        # table's cells rather than the painted screen: a loaded machine (the full suite on
        # two workers) can leave the screenshot behind the table's data for a long time.
        await wait_for(pilot, lambda: "451 4.7.1 Try again later" in table_text(app.screen.table("deferred")))
        assert "5m00s" in table_text(app.screen.table("deferred"))  # next try in five minutes


async def test_hold_and_release_from_the_queue(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        table = app.screen.table()
        held_key = table.cursor_key  # the first in dispatch order: Q2
        await press(pilot, "h")
        assert state_of(seeded_store, "Q00000000002") == "held"
        assert held_key not in row_keys(app.screen.table())
        await pilot.press("right_square_bracket", "right_square_bracket", "right_square_bracket")
        await wait_for(pilot, lambda: app.screen.data.request.view == "held")
        await wait_for(pilot, lambda: held_key in row_keys(app.screen.table("held")))
        app.screen.table("held").select_key(held_key)
        await press(pilot, "h")
        assert state_of(seeded_store, "Q00000000002") == "queued"


async def test_retry_and_delete_after_confirmation(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        await pilot.press("right_square_bracket", "right_square_bracket")
        await wait_for(pilot, lambda: app.screen.data.request.view == "deferred" and app.screen.table("deferred").row_count)
        await press(pilot, "t")
        assert state_of(seeded_store, "Q00000000007") == "queued"

        await pilot.press("left_square_bracket", "left_square_bracket")
        await wait_for(pilot, lambda: app.screen.data.request.view == "next")
        await pilot.press("d")
        await pilot.pause()
        assert type(app.screen).__name__ == "ConfirmDialog"
        await pilot.press("n")  # declined: nothing happens
        await pilot.pause()
        assert state_of(seeded_store, "Q00000000002") == "queued"
        await pilot.press("d")
        await pilot.pause()
        await press(pilot, "y")
        assert state_of(seeded_store, "Q00000000002") is None


async def test_pause_resume_and_rate(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        await press(pilot, "p")
        db = open_store(seeded_store)
        try:
            assert delivery_settings(db).paused is True
            await wait_for(pilot, lambda: "PAUSED" in screen_text(app))
            await wait_for(pilot, lambda: "p Resume" in screen_text(app))  # the footer says what p does now
            assert "p Pause" not in screen_text(app)
            await press(pilot, "p")
            assert delivery_settings(db).paused is False
            await wait_for(pilot, lambda: "p Pause" in screen_text(app))
            await pilot.press("r")
            await pilot.pause()
            dialog = app.screen
            await pilot.press("ctrl+a", "ctrl+k", "-", "1")
            await wait_for(pilot, lambda: "negative" in screen_text(app))  # inline error, dialog stays
            assert app.screen is dialog
            await press(pilot, "backspace", "backspace", "1", "2", ".", "5", "enter")
            assert delivery_settings(db).rate == 12.5
            await wait_for(pilot, lambda: "≤12.5/s" in screen_text(app))
        finally:
            db.close()


async def test_set_the_starvation_share(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        assert "Anti-starvation" not in screen_text(app)  # off by default: not shown
        await pilot.press("s")
        await pilot.pause()
        dialog = app.screen
        await pilot.press("ctrl+a", "ctrl+k", "0", ".", "7")
        await wait_for(pilot, lambda: "from 0 (off) to 0.5" in screen_text(app))  # inline error, dialog stays
        assert app.screen is dialog
        await press(pilot, "backspace", "0", "5", "enter")
        db = open_store(seeded_store)
        try:
            assert delivery_settings(db).starvation_share == 0.05
        finally:
            db.close()
        await wait_for(pilot, lambda: "Anti-starvation 0.05" in screen_text(app))
        assert any("1 dispatch in 20" in notice for notice in app.notices)


async def test_campaign_pause_resume_cancel_and_new(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        for _ in range(5):
            await pilot.press("right_square_bracket")
        await wait_for(pilot, lambda: app.screen.data.request.view == "campaigns" and app.screen.table("campaigns").row_count)
        await press(pilot, "space")
        await wait_for(pilot, lambda: app.screen.data.campaigns[0].state == "paused")
        assert app.screen.data.campaigns[0].state_label == "paused"
        await press(pilot, "space")
        await wait_for(pilot, lambda: app.screen.data.campaigns[0].state != "paused")

        await press(pilot, "c")
        assert type(app.screen).__name__ == "CampaignForm"
        await pilot.click("#subject")
        await pilot.press(*"Hello")
        app.screen.query_one("#sender").value = "news@example.com"
        app.screen.query_one("#body").text = "Hi all"
        await press(pilot, "ctrl+s")
        await wait_for(pilot, lambda: any(c.subject == "Hello" for c in app.screen.data.campaigns))
        new = next(c for c in app.screen.data.campaigns if c.subject == "Hello")
        assert (new.list_name, new.priority, new.total) == ("Newsletter", 3, 12)

        app.screen.table("campaigns").select_key(str(new.id))
        await pilot.press("x")
        await pilot.pause()
        await press(pilot, "y")
        await wait_for(pilot, lambda: next(c for c in app.screen.data.campaigns if c.id == new.id).state == "cancelled")


async def test_paging_through_a_deep_queue_reads_one_page(seeded_store: Path, make_app) -> None:
    db = open_store(seeded_store)
    queue_bulk(db, 120, priorities=(4,), now=NOW - 10)
    db.close()
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        first = row_keys(app.screen.table())
        assert len(first) == 50
        await pilot.press("greater_than_sign")
        await wait_for(pilot, lambda: app.screen.data.request.page == 1)
        second = row_keys(app.screen.table())
        assert len(second) == 50 and not set(first) & set(second)
        assert "51–100 of 126" in screen_text(app)
        await pilot.press("less_than_sign")
        await wait_for(pilot, lambda: app.screen.data.request.page == 0)
        assert row_keys(app.screen.table()) == first


async def test_message_detail_shows_envelope_priorities_and_timeline(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "MessageScreen" and app.screen.detail is not None)
        text = screen_text(app)
        assert "Q00000000002" in text
        assert "1 very high" in text and "urgent" in text
        assert "no relay is running" in text  # why it is not sent yet
        assert ("Subject", "Server down!") in app.screen.detail.headers
        assert "accepted" in text  # the timeline's queued event
        await press(pilot, "h")
        assert state_of(seeded_store, "Q00000000002") == "held"
        await pilot.press("escape")
        await pilot.pause()
        assert type(app.screen).__name__ == "QueueScreen"


def test_message_detail_says_why_a_message_waits() -> None:
    from console.screens.message import waiting_reason
    from relay.store.lease import RelayStatus

    alive = RelayStatus(alive=True, next_hop="127.0.0.1:25")
    assert waiting_reason("queued", alive) is None
    assert waiting_reason("sending", RelayStatus(alive=False)) is None
    assert "no relay" in str(waiting_reason("queued", RelayStatus(alive=False)))
    assert "PAUSED" in str(waiting_reason("deferred", RelayStatus(alive=True, paused=True, next_hop="h:25")))
    assert "next hop" in str(waiting_reason("queued", RelayStatus(alive=True)))
    assert "h releases" in str(waiting_reason("held", alive))


async def test_quick_view_switches_settle_on_the_last_one(seeded_store: Path, make_app) -> None:
    """Two switches before their tab events arrive (keys pressed fast over SSH) must
    not ping-pong between the views."""
    app = make_app(seeded_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        screen = app.screen
        switched: list[str] = []
        original = screen._switch

        def counting(view: str, **kwargs: object) -> None:
            switched.append(view)
            original(view, **kwargs)

        screen._switch = counting
        screen._switch("held")
        screen._switch("deferred")
        for _ in range(20):
            await pilot.pause(0.02)
        assert switched == ["held", "deferred"]
        assert screen.request.view == "deferred"
        assert screen.query_one("Tabs").active == "tab-deferred"
