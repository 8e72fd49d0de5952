"""Snapshot tests (pytest-textual-snapshot) at 100×30 and 80×24: fixed clock, fixed
data (seeded ids and times), no cursor blink, no animations, no relay.

Regenerate after a deliberate change with ``--snapshot-update`` and look at the SVGs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.console.conftest import wait_for

BIG = (100, 30)
SMALL = (80, 24)


def showing(name: str, *, keys: tuple[str, ...] = (), then: tuple[str, ...] = ()):  # noqa: ANN201
    """A run_before: press ``keys``, wait until screen ``name`` shows data, press ``then``."""

    async def run_before(pilot) -> None:  # noqa: ANN001
        app = pilot.app
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        first_screen, applied_before = app.screen, app.screen.snapshots_applied
        for key in keys:
            await pilot.press(key)

        def settled() -> bool:
            screen = app.screen
            if type(screen).__name__ != name or getattr(screen, "snapshots_applied", 1) == 0:
                return False
            # A key that changes the view of the same screen needs a fresh snapshot too.
            return not keys or screen is not first_screen or screen.snapshots_applied > applied_before

        await wait_for(pilot, settled)
        for key in then:
            await pilot.press(key)
        await pilot.pause(0.1)

    return run_before


@pytest.mark.parametrize("size", [BIG, SMALL], ids=["100x30", "80x24"])
def test_queue(snap_compare, seeded_store: Path, make_app, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(seeded_store), terminal_size=size, run_before=showing("QueueScreen"))


def test_queue_no_color(snap_compare, seeded_store: Path, make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(make_app(seeded_store), terminal_size=SMALL, run_before=showing("QueueScreen"))


def test_queue_campaigns_view(snap_compare, seeded_store: Path, make_app) -> None:
    run_before = showing("QueueScreen", keys=("left_square_bracket",))
    assert snap_compare(make_app(seeded_store), terminal_size=SMALL, run_before=run_before)


def test_queue_destinations_view(snap_compare, seeded_store: Path, make_app) -> None:
    """MX delivery's destinations: queued per recipient domain (from the seeded mail),
    and the engine's state for one that defers and backs off, and one on a route."""
    from relay.store import open_store
    from relay.store.routing import DestinationState, add_route, record_destinations
    from tests.console.conftest import NOW

    db = open_store(seeded_store)
    try:
        add_route(db, "partner.example", "10.0.0.5", 2525, now=NOW)
        record_destinations(db, [
            DestinationState("slow.example", 2, "451 4.7.1 slow down, try later", NOW - 30, NOW + 120, 3),
            DestinationState("partner.example", 0, "250 2.0.0 Ok: queued", NOW - 5, None, 0),
        ], NOW)
    finally:
        db.close()
    run_before = showing("QueueScreen", keys=("left_square_bracket", "left_square_bracket"))
    assert snap_compare(make_app(seeded_store), terminal_size=BIG, run_before=run_before)


def test_queue_live_relay_80x24(snap_compare, seeded_store: Path, make_app) -> None:
    """The status bar at 80 columns with a live relay serving 3,977 ports: the count stays."""
    from tests.console.test_forms_and_keys import live_relay

    live_relay(seeded_store)
    assert snap_compare(make_app(seeded_store), terminal_size=SMALL, run_before=showing("QueueScreen"))


def test_lists(snap_compare, seeded_store: Path, make_app) -> None:
    # The name a relay would publish: without one the screen shows this host's name,
    # which differs from machine to machine.
    from relay.store import open_store
    from relay.store.settings import Keys, set_setting

    db = open_store(seeded_store)
    set_setting(db, Keys.SERVER_NAME, "localhost")
    db.close()
    assert snap_compare(make_app(seeded_store), terminal_size=BIG, run_before=showing("ListsScreen", keys=("2",)))


@pytest.mark.parametrize("size", [BIG, SMALL], ids=["100x30", "80x24"])
def test_users(snap_compare, seeded_store: Path, make_app, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(seeded_store), terminal_size=size, run_before=showing("UsersScreen", keys=("3",)))


def test_user_form_comma_error(snap_compare, seeded_store: Path, make_app) -> None:
    async def run_before(pilot) -> None:  # noqa: ANN001
        await showing("UsersScreen", keys=("3",))(pilot)
        await pilot.press("a")
        await pilot.pause()
        pilot.app.screen.query_one("#domains").value = "shop.example, mail.example"
        await pilot.pause(0.1)

    assert snap_compare(make_app(seeded_store), terminal_size=SMALL, run_before=run_before)


def test_new_user_form_after_enter(snap_compare, seeded_store: Path, make_app) -> None:
    """Enter in Username moved to Priority; the keys line and the footer say ctrl+s saves."""

    async def run_before(pilot) -> None:  # noqa: ANN001
        await showing("UsersScreen", keys=("3",))(pilot)
        await pilot.press("a")
        await pilot.pause()
        pilot.app.screen.query_one("#username").focus()
        await pilot.press(*"carol", "enter")
        await pilot.pause(0.1)

    assert snap_compare(make_app(seeded_store), terminal_size=SMALL, run_before=run_before)


def test_next_hop_form(snap_compare, seeded_store: Path, make_app) -> None:
    async def run_before(pilot) -> None:  # noqa: ANN001
        await showing("QueueScreen")(pilot)
        await pilot.press("n")
        await pilot.pause(0.1)

    assert snap_compare(make_app(seeded_store), terminal_size=SMALL, run_before=run_before)


def test_senders(snap_compare, seeded_store: Path, make_app) -> None:
    assert snap_compare(make_app(seeded_store), terminal_size=BIG, run_before=showing("SendersScreen", keys=("4",)))


def test_events(snap_compare, seeded_store: Path, make_app) -> None:
    assert snap_compare(make_app(seeded_store), terminal_size=SMALL, run_before=showing("EventsScreen", keys=("5",)))


def test_message_detail(snap_compare, seeded_store: Path, make_app) -> None:
    run_before = showing("MessageScreen", keys=("enter",))
    assert snap_compare(make_app(seeded_store), terminal_size=BIG, run_before=run_before)


def test_help(snap_compare, seeded_store: Path, make_app) -> None:
    async def run_before(pilot) -> None:  # noqa: ANN001
        await showing("QueueScreen")(pilot)
        await pilot.press("f1")
        await pilot.pause(0.1)

    assert snap_compare(make_app(seeded_store), terminal_size=SMALL, run_before=run_before)
