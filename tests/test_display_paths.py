"""Terminal escapes from outside reach no person and no log raw (issue 11 item 6).

OSC 52 (writes the clipboard), OSC 0 (window title), CSI (clears the screen) and a bidi
override, carried by a Subject and a From: (raw and RFC 2047-encoded), by a next hop's
reply, by list and member names written before names were validated, and by a client's
unrecognised command: each is fed through every output path — the CLI, the console's
widgets, the event log and the relay's log — which must show it as visible text.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import pytest

from harness.sink import CaptureSink, Chaos
from relay.display import clean
from relay.store import open_store
from relay.store import queue as q
from relay.store.directory import create_list, import_members
from relay.store.events import find_events
from tests.conftest import Cli
from tests.relay.support import PASSWORD, client_context, relay_config, running_relay, seed_store
from tests.relay.test_cli import RelayProcess

OSC52 = "\x1b]52;c;ZXZpbA==\x07"
OSC0 = "\x1b]0;owned\x07"
CSI = "\x1b[2J\x1b[31m"
BIDI = "\u202e"
HOSTILE = f"{OSC52}{OSC0}{CSI}Invoice{BIDI}fdp.exe"
# What a terminal would act on: none of these may reach any output raw.
RAW = ("\x1b", "\x07", "\x9b", "\x9d", BIDI)
VISIBLE = "\\x1b]52;c;ZXZpbA=="  # how OSC 52 shows once escaped
REPLY = f"451 4.3.0 {OSC52}{CSI}try later"  # the next hop's reply (ASCII: SMTP replies are)


def assert_safe(text: str, where: str) -> None:
    found = sorted({repr(ch) for ch in RAW if ch in text})
    assert not found, f"{where}: raw {', '.join(found)} in output: {text[:400]!r}"


def encoded_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


@dataclass
class Hostile:
    store: Path
    raw_id: str  # the Subject carried raw
    encoded_id: str  # the same, RFC 2047-encoded
    list_name: str
    from_ids: list[str]  # messages whose From: display name carries the escapes, if accepted


@pytest.fixture
async def hostile(store_path: Path, tmp_path: Path, tls_files: dict[str, Path]) -> Hostile:
    seed_store(store_path)
    sink = CaptureSink(port=0, chaos=Chaos(temp_match="*@slow.example", temp_reply=REPLY))
    await sink.start()
    config = relay_config(tmp_path, tls_files, paused=False, next_hop=f"127.0.0.1:{sink.port}")
    bodies = [
        f"From: Boss <boss@b.example>\r\nTo: r@slow.example\r\nSubject: {HOSTILE}\r\n\r\nraw\r\n",
        f"From: Boss <boss@b.example>\r\nTo: r@slow.example\r\nSubject: {encoded_word(HOSTILE)}\r\n\r\nencoded\r\n",
    ]
    ids: list[str] = []
    try:
        async with running_relay(store_path, config) as relay:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.served[0], start_tls=True,
                                     tls_context=client_context(tls_files), timeout=10)
            await client.connect()
            await client.login("alice", PASSWORD["alice"])
            for body in bodies:
                _, reply = await client.sendmail("boss@b.example", ["r@slow.example"], body.encode())
                ids.append(reply.rsplit(" ", 1)[1])
            # A From: display name with the escapes, raw or encoded: accepted (then shown
            # below like any other) or refused with 550 (its refusal event is checked below).
            for display in (f'"{OSC0}Boss{BIDI}"', encoded_word(OSC0 + "Boss" + BIDI)):
                try:
                    _, reply = await client.sendmail(
                        "boss@b.example", ["r@slow.example"],
                        f"From: {display} <boss@b.example>\r\nSubject: from {display}\r\n\r\nx\r\n".encode())
                    ids.append(reply.rsplit(" ", 1)[1])
                except aiosmtplib.SMTPDataError as refused:
                    assert refused.code == 550
            await client.quit()
            # Both tried once at the next hop, which answered with escapes.
            for _ in range(400):
                db = open_store(store_path)
                try:
                    deferred = q.list_messages(db, state="deferred", limit=10)
                finally:
                    db.close()
                if len(deferred) == len(ids):
                    break
                await asyncio.sleep(0.05)
            assert len(deferred) == len(ids)
    finally:
        await sink.stop()
    db = open_store(store_path)
    try:
        # Back in the "next to send" view (no relay runs now): the Subject column shows.
        q.retry(db, ids)
        # A list and a member named before names were validated (an older store).
        create_list(db, "legacy", "old description")
        import_members(db, "legacy", [("m@example.com", "Member")])
        name = f"legacy{OSC0}{BIDI}"
        db.execute("UPDATE lists SET name = ?, description = ? WHERE name = 'legacy'", (name, HOSTILE))
        db.execute("UPDATE list_members SET name = ? WHERE address = 'm@example.com'", (HOSTILE,))
    finally:
        db.close()
    return Hostile(store_path, ids[0], ids[1], name, ids[2:])


# ---------------------------------------------------------------------------
# CLI


def test_every_cli_view_shows_the_escapes_as_text(hostile: Hostile, cli: Cli) -> None:
    views: list[tuple[str, ...]] = [
        ("queue", "ls", "--state", "all"),
        ("queue", "show", hostile.raw_id),
        ("queue", "show", hostile.encoded_id),
        *(("queue", "show", queue_id) for queue_id in hostile.from_ids),
        ("lists", "ls"),
        ("lists", "show", hostile.list_name),
        ("lists", "members", "ls", hostile.list_name),
        ("users", "ls"),
        ("status",),
    ]
    for args in views:
        proc = cli(*args)
        assert proc.returncode in ((0, 3) if args == ("status",) else (0,)), (args, proc.stderr)  # 3: no relay
        assert_safe(proc.stdout + proc.stderr, " ".join(args[:2]))
    for queue_id in (hostile.raw_id, hostile.encoded_id):
        shown = cli("queue", "show", queue_id).stdout
        assert VISIBLE in shown  # the Subject, decoded when encoded, shown escaped
        assert "451 4.3.0 \\x1b]52" in shown  # the next hop's reply, in the recipients and the timeline
    assert VISIBLE in cli("queue", "ls", "--state", "all").stdout
    assert "\\u202e" in cli("lists", "ls").stdout


def test_json_output_carries_no_raw_control_character(hostile: Hostile, cli: Cli) -> None:
    for args in (("queue", "ls", "--state", "all"), ("queue", "show", hostile.encoded_id), ("lists", "ls"),
                 ("lists", "members", "ls", hostile.list_name)):
        proc = cli(*args, "--json")
        assert proc.returncode == 0, proc.stderr
        assert_safe(proc.stdout, " ".join(args))  # JSON writes \u001b, \u202e: text, not control
        json.loads(proc.stdout)
    shown = cli.json("queue", "show", hostile.encoded_id)
    assert shown["subject"] in (HOSTILE, clean(HOSTILE))  # the original or escaped — never rendered


# ---------------------------------------------------------------------------
# Events


def test_events_hold_the_next_hops_reply_escaped(hostile: Hostile) -> None:
    db = open_store(hostile.store)
    try:
        found = find_events(db, limit=500)
    finally:
        db.close()
    replies = [e for e in found if "451 4.3.0" in e.detail]
    assert replies, [e.detail for e in found]
    for event in found:
        assert_safe(f"{event.detail} {event.username} {event.client}", f"event {event.reason}")
    assert any("\\x1b]52" in e.detail for e in replies)


# ---------------------------------------------------------------------------
# Console


async def test_console_widgets_show_the_escapes_as_text(hostile: Hostile) -> None:
    from console.app import ConsoleApp
    from tests.console.conftest import screen_text, wait_for

    app = ConsoleApp(hostile.store, run_relay=False, cursor_blink=False, poll_interval=0.05)
    app.animation_level = "none"
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: hostile.raw_id in screen_text(app))
        text = screen_text(app)
        assert_safe(text, "queue table")
        assert "\\x1b]52" in text
        svg = app.export_screenshot()
        assert_safe(svg, "queue table export")

        await pilot.press("right_square_bracket", "right_square_bracket")  # the deferred view: replies
        await wait_for(pilot, lambda: app.screen.data.request.view == "deferred")
        await pilot.press("left_square_bracket", "left_square_bracket")
        await wait_for(pilot, lambda: app.screen.data.request.view == "next")

        await pilot.press("enter")  # the message's detail: envelope, recipients, timeline, headers
        await wait_for(pilot, lambda: type(app.screen).__name__ == "MessageScreen" and app.screen.detail is not None)
        await wait_for(pilot, lambda: "451 4.3.0" in screen_text(app))
        detail = screen_text(app)
        assert_safe(detail, "message detail")
        assert_safe(app.export_screenshot(), "message detail export")
        assert "\\x1b]52" in detail
        await pilot.press("escape")

        for key, marker, where in (("5", "451 4.3.0", "events"), ("2", "legacy", "lists")):
            await pilot.press(key)
            await wait_for(pilot, lambda marker=marker: marker in screen_text(app))  # type: ignore[misc]
            assert_safe(screen_text(app), where)
            assert_safe(app.export_screenshot(), f"{where} export")


# ---------------------------------------------------------------------------
# The relay's log


async def test_relay_log_escapes_a_clients_unrecognised_command(cli: Cli, store_path: Path, tmp_path: Path) -> None:
    seed_store(store_path)
    relay = RelayProcess(cli, tmp_path, "--ports", "0")
    try:
        port = relay.wait_ready()["served"][0]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()  # banner
        writer.write(f"{CSI}EVIL{OSC0}{OSC52}\r\n".encode())
        await writer.drain()
        reply = await asyncio.wait_for(reader.readline(), 10)
        assert reply[:1] == b"5", reply
        writer.write(b"QUIT\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    finally:
        assert relay.stop(signal.SIGTERM) == 0
    log = relay.output()
    assert "unrecognised" in log  # aiosmtpd's own warning reached the log…
    assert_safe(log, "relay log")  # …escaped
    assert "\\x1b[2J\\x1b[31mEVIL".lower() in log.lower()  # aiosmtpd upper-cases the command


def test_the_log_filter_escapes_message_and_args() -> None:
    import logging

    from relay.display import EscapingFilter

    record = logging.LogRecord("mail.log", logging.WARNING, __file__, 1, "%r unrecognised: %s", (("1.2.3.4", 5), CSI + "X"), None)
    assert EscapingFilter().filter(record)
    assert record.getMessage() == "('1.2.3.4', 5) unrecognised: \\x1b[2J\\x1b[31mX"
    assert_safe(record.getMessage(), "log record")


# ---------------------------------------------------------------------------
# Anything else the CLI prints from outside


def test_a_next_hop_reply_in_queue_ls_is_escaped(hostile: Hostile, cli: Cli) -> None:
    out = cli("queue", "ls", "--state", "all").stdout
    assert_safe(out, "queue ls")
    lines = [line for line in out.splitlines() if hostile.raw_id in line]
    assert lines and any("451 4.3.0" in line for line in lines)
