"""Events filters, help and command palette, key bindings, live updates from another
process, and the terminal-facing basics (ctrl+q, NO_COLOR)."""

from __future__ import annotations

import ast
import asyncio
import io
import subprocess
import sys
from pathlib import Path

from console.screens.events import BAD_REASONS, EventsScreen, build_request
from tests.console.conftest import NOW, row_keys, screen_text, wait_for

ROOT = Path(__file__).resolve().parents[2]


async def test_events_filter_by_user_reason_port_and_time(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("5")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "EventsScreen" and app.screen.snapshots_applied)
        screen = app.screen
        assert len(screen.events) == 11

        async def apply(**filters: str) -> list[str]:
            before = screen.snapshots_applied
            screen.set_filters(**filters)
            await wait_for(pilot, lambda: screen.snapshots_applied > before)
            return [e.reason for e in screen.events]

        assert await apply(user="bob") == ["sender-unverified", "accepted"]
        assert await apply(reason="sender-unverified") == ["sender-unverified"]
        assert await apply(reason="auth") == ["auth-bad-credentials"]  # a kind works too
        assert await apply(port="587") == ["auth-bad-credentials"]
        assert await apply(since="15m") == []
        await wait_for(pilot, lambda: "No events match." in screen_text(app))  # painted, not just applied
        assert await apply(since="2023-11-14 22:14") == ["auth-bad-credentials", "sender-unverified"]

        screen.set_filters(reason="no-such-reason")
        await wait_for(pilot, lambda: "is not a reason or kind" in screen_text(app))
        before = screen.snapshots_applied
        screen.refresh_data()
        await wait_for(pilot, lambda: screen.snapshots_applied > before)
        assert "is not a reason or kind" in screen_text(app)  # a live refresh keeps the error

        await apply(user="alice", reason="accepted")
        screen.query_one("#events-table").focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "MessageScreen" and app.screen.detail is not None)
        assert app.screen.detail.message.queue_id == "Q00000000009"  # the newest of alice's queued events
        await pilot.press("escape")
        await pilot.press("x")
        await wait_for(pilot, lambda: len(app.screen.events) == 11)


def test_filter_fields_are_checked() -> None:
    request = build_request("  bob ", "REFUSED", "2525", "today", NOW)
    assert (request.username, request.kinds, request.reason, request.port) == ("bob", ("refused",), None, 2525)
    for bad in (("", "", "70000", ""), ("", "", "", "yesterday-ish"), ("", "nonsense", "", "")):
        try:
            build_request(*bad, now=NOW)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")


async def test_help_lists_every_key_on_f1_and_question_mark(seeded_store: Path, make_app) -> None:
    from rich.console import Console

    from console.screens.help import help_renderable, key_label, sections

    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f1")
        await pilot.pause()
        assert type(app.screen).__name__ == "HelpScreen"
        assert "Everywhere" in screen_text(app)
        console = Console(width=84, record=True, file=io.StringIO())
        console.print(help_renderable())  # what the help screen shows, whole
        help_text = " ".join(console.export_text().split())
        for _title, bindings in sections():
            for binding in bindings:
                if binding.description:
                    assert (binding.tooltip or binding.description) in help_text, binding
                    assert key_label(binding) in help_text
        await pilot.press("escape")
        await pilot.press("2")
        await pilot.press("question_mark")
        await pilot.pause()
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("question_mark")
        await pilot.pause()
        assert type(app.screen).__name__ == "ListsScreen"


async def test_every_action_is_in_the_command_palette(seeded_store: Path, make_app) -> None:
    from textual.binding import Binding

    from console.screens.queue import QueueScreen

    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        titles = {command.title for command in app.get_system_commands(app.screen)}
        for binding in QueueScreen.BINDINGS:
            assert isinstance(binding, Binding)
            if binding.action not in ("campaign_toggle", "campaign_cancel", "resume"):  # campaigns view; paused
                assert binding.description in titles, binding
        assert "Resume" not in titles  # delivery is on: the palette offers Pause only
        for label in ("Help", "Lists", "Users", "Senders", "Events", "Quit"):
            assert label in titles
        # Running one from the palette does what its key does.
        command = next(c for c in app.get_system_commands(app.screen) if c.title == "Lists")
        await command.callback()
        await pilot.pause()
        assert app.current_mode == "lists"


def test_every_binding_in_the_console_has_an_id() -> None:
    missing = []
    for path in (ROOT / "console").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Binding":
                if not any(k.arg == "id" for k in node.keywords):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert missing == []


async def test_ctrl_q_quits(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await pilot.press("ctrl+q")
        await pilot.pause()
    assert app.return_code == 0
    assert not app.is_running


async def test_a_commit_by_another_process_appears_live(seeded_store: Path, make_app, cli) -> None:
    """A CLI subprocess writes to the store; the queue and lists screens show it."""
    app = make_app(seeded_store, poll_interval=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        table = app.screen.table()
        cursor = table.cursor_key
        before = len(row_keys(table))
        code = (
            "import sys\n"
            "from tests.console.conftest import message\n"
            "from relay.store import open_store\n"
            "from relay.store.intake import insert_messages\n"
            f"db = open_store({str(seeded_store)!r})\n"
            "insert_messages(db, [message(99, 5, subject='From elsewhere')])\n"
        )
        await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
        await wait_for(pilot, lambda: len(row_keys(app.screen.table())) == before + 1)
        # The row is in the table's data at once; the table lays it out on its next
        # idle pass, so wait for it to be painted rather than reading the screen now.
        await wait_for(pilot, lambda: "From elsewhere" in screen_text(app))
        assert table.cursor_key == cursor  # the operator's place is kept

        await pilot.press("2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ListsScreen" and app.screen.snapshots_applied)
        env = dict(cli.env, SMTPPLUS_DB=str(seeded_store))
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", "from console.cli import main; main()", "lists", "add", "Remote"],
            cwd=ROOT, env=env, check=True, timeout=60, capture_output=True,
        )
        await wait_for(pilot, lambda: any(r.name == "Remote" for r in app.screen.data.rows))


async def test_no_color_keeps_the_cursor_visible(seeded_store: Path, make_app, monkeypatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(seeded_store)
    assert app.no_color
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        cursor_style = app.screen.table().get_component_styles("datatable--cursor")
        assert cursor_style.text_style.reverse


def _documented_problems() -> set[str]:
    """From docs/reasons.md: every AUTH reason but `auth-ok`, every session refusal, and every
    queue/delivery reason of kind `deferred` or `failed` — what an operator must see in red."""
    problems: set[str] = set()
    section = ""
    for line in (ROOT / "docs" / "reasons.md").read_text().splitlines():
        if line.startswith("## "):
            section = line
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or not cells[0].startswith("`"):
            continue
        reason = cells[0].strip("`")
        if section.startswith("## AUTH") and reason != "auth-ok":
            problems.add(reason)
        elif "kind `refused`" in section:
            problems.add(reason)
        elif section.startswith("## Queue and delivery") and ("`deferred`" in cells[1] or "`failed`" in cells[1]):
            problems.add(reason)
    return problems


def test_every_refusal_and_failure_reason_is_highlighted() -> None:
    from relay.reasons import PROBLEMS, Reason
    from relay.store.events import Event

    documented = _documented_problems()
    # The docs section parse found the new reasons too (a guard on the parse itself).
    assert {"pre-auth-refusals", "message-nul", "server-busy", "header-sender-lookalike", "too-many-errors",
            "header-too-large", "failed-no-smtputf8", "deferred-4xx", "auth-needs-tls"} <= documented
    assert documented <= {str(r) for r in Reason}
    assert sorted(documented - BAD_REASONS) == [], "add these to relay.reasons.PROBLEMS"
    assert BAD_REASONS == {str(r) for r in PROBLEMS}

    def style(reason: str) -> str:
        event = Event(1, NOW, "refused", reason, None, None, None, None, None, None, "detail")
        return str(EventsScreen._cells(event, NOW)[1].style)

    assert {style(r) for r in documented} == {"bold red"}
    for routine in (Reason.AUTH_OK, Reason.ACCEPTED, Reason.DELIVERED, Reason.RELAY_STARTED, Reason.CODE_SENT):
        assert style(routine) == "", routine
