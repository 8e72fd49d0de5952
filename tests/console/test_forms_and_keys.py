"""Forms that Enter never submits, the parallel and next-hop keys, a footer and a
status bar that fit 80 columns, a palette without duplicates, truthful clipboard
wording, help that says how to close it, and filter errors that wrap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.widgets import Select, Static
from textual.widgets._footer import FooterKey

from relay.store import directory, open_store
from relay.store.events import find_events
from relay.store.lease import acquire, relay_status
from relay.store.queue import delivery_settings, set_next_hop, set_rate
from relay.store.relay_info import publish_ports
from tests.console.conftest import NOW, press, screen_text, wait_for


def fetch(path: Path, fn: Any, *args: Any, **kwargs: Any) -> Any:
    db = open_store(path)
    try:
        return fn(db, *args, **kwargs)
    finally:
        db.close()


async def open_screen(pilot: Any, key: str, name: str) -> None:
    app = pilot.app
    if key:
        await pilot.press(key)
    await wait_for(pilot, lambda: type(app.screen).__name__ == name and app.screen.snapshots_applied > 0)


def flat(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------
# Forms: Enter moves on, ctrl+s saves


async def test_enter_in_the_new_user_form_moves_to_the_next_field_and_never_saves(
    seeded_store: Path, make_app
) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_screen(pilot, "3", "UsersScreen")
        users_before = len(fetch(seeded_store, directory.all_users))
        await pilot.press("a")
        await pilot.pause()
        form = app.screen
        assert type(form).__name__ == "UserForm"
        assert app.focused is form.query_one("#list", Select)  # top to bottom: the list comes first

        form.query_one("#username").focus()
        await pilot.press(*"carol")
        await pilot.press("enter")  # the reported accident: one Enter saved a user
        await pilot.pause()
        assert app.screen is form
        assert app.focused is form.query_one("#priority", Select)

        form.query_one("#note").focus()
        for field_id in ("domains", "senders", "list"):  # Enter walks every field, then wraps
            await pilot.press("enter")
            await pilot.pause()
            assert app.focused is form.query_one(f"#{field_id}")
        form.query_one("#senders").focus()
        for _ in range(6):
            await pilot.press("enter")
            await pilot.pause()
            if isinstance(app.focused, Select) and app.focused.expanded:
                await pilot.press("escape")  # close the dropdown Enter opened
        assert app.screen is form
        assert len(fetch(seeded_store, directory.all_users)) == users_before  # nothing saved
        assert not any(type(s).__name__ == "PasswordOnce" for s in app.screen_stack)
        assert "ctrl+s: save" in screen_text(app) and "^s Save" in screen_text(app)  # the key is shown

        form.query_one("#domains").value = "carol.example"
        await press(pilot, "ctrl+s")  # the explicit key saves
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PasswordOnce")
        user = fetch(seeded_store, directory.get_user, "carol")
        assert (user.list_name, user.domains, user.active) == ("Newsletter", ["carol.example"], False)

        await pilot.press("c")
        await pilot.pause()
        notice = app.notices[-1]
        # OSC 52 is never answered: the console cannot know the copy arrived, so it does not claim it.
        assert "copied to the clipboard" not in notice.lower()
        assert "if it supports OSC 52" in notice and "shown here" in notice


async def test_a_save_button_is_never_reached_by_enter(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_screen(pilot, "2", "ListsScreen")
        await pilot.press("a")
        await pilot.pause()
        form = app.screen
        await pilot.press(*"Partners", "enter")
        await pilot.pause()
        assert app.focused is form.query_one("#description")
        await pilot.press("enter", "enter", "enter")
        await pilot.pause()
        assert app.screen is form and app.focused is not None and app.focused.id in ("name", "description")
        assert [info.name for info in fetch(seeded_store, directory.all_lists)] == ["Newsletter", "Shop"]
        await press(pilot, "ctrl+s")
        assert [info.name for info in fetch(seeded_store, directory.all_lists)] == ["Newsletter", "Partners", "Shop"]


# ---------------------------------------------------------------------------
# Parallel and next hop from the queue screen


async def test_parallel_and_next_hop_keys_set_the_store(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_screen(pilot, "", "QueueScreen")
        await pilot.press("o")
        await pilot.pause()
        assert type(app.screen).__name__ == "PromptDialog"
        app.screen.query_one("#answer").value = "0"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "parallel must be from 1 to 256" in screen_text(app))  # inline, stays open
        app.screen.query_one("#answer").value = "9"
        await press(pilot, "enter")
        assert fetch(seeded_store, delivery_settings).parallel == 9
        await wait_for(pilot, lambda: "parallel 9" in screen_text(app))  # the summary line shows it

        await pilot.press("n")
        await pilot.pause()
        form = app.screen
        assert type(form).__name__ == "NextHopForm"
        form.query_one("#hop").value = "smarthost"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is form and "is not HOST:PORT" in flat(screen_text(app))
        form.query_one("#hop").value = "smarthost.example:2525"
        form.query_one("#hop").focus()
        await pilot.press("enter")  # moves to the TLS mode, saves nothing
        await pilot.pause()
        assert app.screen is form and app.focused is form.query_one("#tls", Select)
        assert fetch(seeded_store, delivery_settings).next_hop is None
        form.query_one("#tls", Select).value = "required"
        await press(pilot, "ctrl+s")
        settings = fetch(seeded_store, delivery_settings)
        assert (settings.next_hop, settings.next_hop_tls) == ("smarthost.example:2525", "required")
        await wait_for(pilot, lambda: "next hop smarthost.example:2525" in screen_text(app))
        details = [e.detail for e in fetch(seeded_store, find_events, kinds=["operator"], limit=10)]
        assert "parallel connections set to 9" in details  # the same store functions the CLI calls
        assert "next hop set to smarthost.example:2525, STARTTLS required" in details

        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Parallel", "Next hop", "Rate"} <= titles  # in the palette too


async def test_the_palette_lists_each_command_once(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(80, 24)) as pilot:
        for key, name in (("", "QueueScreen"), ("2", "ListsScreen"), ("3", "UsersScreen"),
                          ("4", "SendersScreen"), ("5", "EventsScreen")):
            await open_screen(pilot, key, name)
            titles = [c.title.casefold() for c in app.get_system_commands(app.screen)]
            assert len(titles) == len(set(titles)), sorted(t for t in titles if titles.count(t) > 1)
            assert titles.count("quit") == 1


# ---------------------------------------------------------------------------
# 80 columns: footer, status bar, help, errors


def live_relay(path: Path, *, ports: int = 3977) -> None:
    """A store whose relay looks alive (heartbeat 2 s before the console's clock),
    serving ``ports`` ports, one not served, delivering to a sink at 20/s."""
    served = [25, *range(1025, 1025 + ports - 1)]
    db = open_store(path)
    try:
        acquire(db, "relay-x", 4242, "relay-host", "127.0.0.1", now=NOW - 2)
        publish_ports(db, served, {587: "address already in use"})
        set_next_hop(db, "127.0.0.1:8025", tls="off")
        set_rate(db, 20)
    finally:
        db.close()


def test_status_text_keeps_the_port_count_at_80_columns(seeded_store: Path) -> None:
    from console.live import StoreStatus
    from console.widgets.status_bar import status_text

    live_relay(seeded_store)
    db = open_store(seeded_store)
    try:
        status = StoreStatus(relay_status(db, now=NOW), None, NOW)
    finally:
        db.close()
    wide = status_text(status, mode="attached", extra="sink got 1,234", width=200)
    assert wide.plain.startswith("● relay alive pid 4242 (2s)") and "(3,977)" in wide.plain
    narrow = status_text(status, mode="attached", extra="sink got 1,234", width=78)
    assert narrow.plain == "● alive · ≤20/s · hop 127.0.0.1:8025 · sink 1,234 · 3,977 ports, 1 not served"
    narrower = status_text(status, mode="attached", extra="sink got 1,234", width=60)
    assert len(narrower.plain) <= 60 and narrower.plain.endswith("3,977 ports, 1 not served"), narrower.plain
    db = open_store(seeded_store)
    try:
        set_next_hop(db, "a-very-long-smarthost-name.mail.example.com:2525")
        status = StoreStatus(relay_status(db, now=NOW), None, NOW)
    finally:
        db.close()
    narrow = status_text(status, mode="attached", extra="sink got 1,234", width=78)
    assert len(narrow.plain) <= 78 and narrow.plain.endswith("3,977 ports, 1 not served"), narrow.plain


def footer_shown(app: Any) -> bool:
    """The footer has composed its keys, the palette key among them (it recomposes after
    a screen switch, later on a loaded machine)."""
    keys = list(app.screen.query(FooterKey))
    return any(k.has_class("-command-palette") for k in keys) and len(keys) > 1


def footer_fits(screen: Any) -> list[str]:
    """The footer's keys, checked to lie left of the palette key (none runs under it)."""
    keys = list(screen.query(FooterKey))
    palette = [k for k in keys if k.has_class("-command-palette")]
    others = [k for k in keys if not k.has_class("-command-palette")]
    assert palette and others
    for key in others:
        assert key.region.right <= palette[0].region.x, (key.description, key.region, palette[0].region)
    return [f"{k.key_display} {k.description}" for k in others]


async def test_footer_and_status_bar_fit_80_columns(seeded_store: Path, make_app) -> None:
    from console.screens.help import sections

    live_relay(seeded_store)
    app = make_app(seeded_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_screen(pilot, "", "QueueScreen")
        await wait_for(pilot, lambda: "3,977 ports" in screen_text(app))
        await wait_for(pilot, lambda: footer_shown(app))
        shown = footer_fits(app.screen)
        assert "F1/? Help" in shown
        every_key = {b.description for _, bindings in sections(app) for b in bindings}
        for key, name in (("2", "ListsScreen"), ("3", "UsersScreen"), ("4", "SendersScreen"), ("5", "EventsScreen")):
            await open_screen(pilot, key, name)
            await wait_for(pilot, lambda: footer_shown(app))
            footer_fits(app.screen)
            left_out = app.screen.query_one("FitFooter").left_out
            assert set(left_out) <= every_key  # what the footer leaves out, F1 lists
        await pilot.resize_terminal(120, 30)
        await wait_for(pilot, lambda: "ports 25,1025-5000 (3,977), 1 not served" in screen_text(app))


async def test_help_says_how_to_close_it(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_screen(pilot, "", "QueueScreen")
        for key in ("f1", "q"):
            await pilot.press("f1")
            await pilot.pause()
            assert type(app.screen).__name__ == "HelpScreen"
            assert "esc, F1, ? or q closes this help" in screen_text(app)
            await pilot.press(key)
            await pilot.pause()
            assert type(app.screen).__name__ == "QueueScreen"


async def test_a_filter_error_wraps_instead_of_being_cut(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_screen(pilot, "5", "EventsScreen")
        app.screen.query_one("#f-since").value = "last tuesday"
        await wait_for(pilot, lambda: app.screen.filter_error is not None)
        message = f"{app.screen.filter_error} (the previous filter still applies)"
        assert len(message) > 78  # longer than a line at 80 columns
        await wait_for(pilot, lambda: flat(message) in flat(screen_text(app)))
        info = app.screen.query_one("#filter-info", Static)
        assert info.size.height >= 2
