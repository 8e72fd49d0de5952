"""Console tests: a seeded temporary store with fixed times and ids, and an app
factory with a fixed clock, no cursor blink and no relay (deterministic screens)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay import passwords
from relay.reasons import EventKind, Reason
from relay.store import directory, open_store, transaction
from relay.store.events import NewEvent, record_event
from relay.store.intake import NewMessage, insert_messages

# 2023-11-14 22:13:20 UTC; the console's clock reads one hour later.
T0 = 1_700_000_000.0
NOW = T0 + 3600.0

# One password hash for every seeded user (argon2 is slow; the value is never shown).
_HASH = passwords.hash_password("seeded-password-not-used")


@pytest.fixture(autouse=True)
def utc_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Times on screen are local: make local time UTC so screens are the same everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def message(n: int, priority: int, *, header: int = 3, user: int = 3, subject: str = "", sender: str = "news@example.com",
            username: str = "alice", list_name: str = "Newsletter", list_id: int | None = 1,
            origin: str = "smtp", campaign_id: int | None = None) -> NewMessage:
    data = (
        f"From: News <{sender}>\r\nTo: reader{n}@example.net\r\nSubject: {subject or f'Message {n}'}\r\n"
        f"X-Priority: {header}\r\nMessage-ID: <m{n}@example.com>\r\n\r\nHello {n}\r\n"
    ).encode()
    return NewMessage(
        mail_from=sender, recipients=[f"reader{n}@example.net"], data=data, origin=origin,
        header_priority=header, user_priority=user, priority=priority, header_from=sender,
        subject=subject or f"Message {n}", list_id=list_id, list_name=list_name, user_id=None, username=username,
        client="127.0.0.1", port=2525, queue_id=f"Q{n:011d}", campaign_id=campaign_id,
    )


def seed_store(path: Path) -> None:
    """A list with members, an active user with a verified domain, an inactive user with
    a pending sender, queued/deferred/held/in-flight mail, a campaign and a refusal."""
    db = open_store(path)
    try:
        directory.create_list(db, "Newsletter", "Monthly news")
        directory.create_list(db, "Shop", "Order mail")
        directory.import_members(db, "Newsletter", [(f"reader{n}@example.net", f"Reader {n}") for n in range(1, 13)])
        directory.create_user(db, list_name="Newsletter", password_hash=_HASH, username="alice", priority=1,
                              note="marketing team", domains=["example.com"], active=True)
        directory.create_user(db, list_name="Shop", password_hash=_HASH, username="bob",
                              note="web shop", senders=["orders@shop.example"])
        directory.approve_identities(db, ["example.com"], "existing account")
        batch = [
            message(1, 3, subject="Weekly report"),
            message(2, 1, header=1, subject="Server down!"),
            message(3, 5, subject="Digest"),
            message(4, 2, user=2, subject="Invoice"),
            message(5, 3, subject="Reminder"),
            message(6, 4, subject="Later"),
            message(7, 3, subject="Retry me", username="bob", list_name="Shop", list_id=2,
                    sender="orders@shop.example"),
            message(8, 3, subject="On hold"),
            message(9, 2, subject="Going out now"),
        ]
        queued = insert_messages(db, batch, now=T0)
        ids = {q.queue_id: q.message_id for q in queued}
        with transaction(db):
            db.execute(
                "UPDATE messages SET state = 'deferred', attempts = 2, next_attempt_at = ?, "
                "last_reply = '451 4.7.1 Try again later' WHERE id = ?",
                (NOW + 300, ids["Q00000000007"]),
            )
            db.execute("UPDATE messages SET state = 'held' WHERE id = ?", (ids["Q00000000008"],))
            db.execute(
                "UPDATE messages SET state = 'sending', lease_owner = 'relay-x', lease_until = ? WHERE id = ?",
                (NOW + 60, ids["Q00000000009"]),
            )
            db.execute(
                "UPDATE identities SET created_at = ?, verified_at = CASE WHEN verified_at IS NULL THEN NULL ELSE ? END",
                (T0 - 86400, T0 - 3600),
            )
            db.execute("UPDATE users SET created_at = ?, updated_at = ?", (T0 - 86400, T0 - 86400))
            db.execute("UPDATE lists SET created_at = ?", (T0 - 86400,))
            db.execute("UPDATE list_members SET added_at = ?", (T0 - 86400,))
            db.execute(
                "INSERT INTO campaigns(list_id, list_name, subject, mail_from, body, priority, state, scheduled_at, "
                "total, created_at) VALUES (1, 'Newsletter', 'Autumn sale', 'news@example.com', "
                "X'46726f6d3a206e657773406578616d706c652e636f6d0d0a0d0a6869', 3, 'scheduled', ?, 12, ?)",
                (NOW + 1800, T0),
            )
            record_event(db, NewEvent(EventKind.REFUSED, Reason.SENDER_UNVERIFIED, username="bob", list_id=2,
                                      client="192.0.2.7", port=2525, at=T0 + 60,
                                      detail="MAIL FROM orders@shop.example: awaits verification"))
            record_event(db, NewEvent(EventKind.AUTH, Reason.AUTH_BAD_CREDENTIALS, username="mallory",
                                      client="198.51.100.9", port=587, at=T0 + 120, detail="AUTH PLAIN failed"))
    finally:
        db.close()


@pytest.fixture
def seeded_store(tmp_path: Path) -> Path:
    path = tmp_path / "console.db"
    seed_store(path)
    return path


@pytest.fixture
def make_app() -> Callable[..., Any]:
    from console.app import ConsoleApp

    def factory(path: Path, **kwargs: Any) -> ConsoleApp:
        kwargs.setdefault("run_relay", False)
        kwargs.setdefault("clock", lambda: NOW)
        kwargs.setdefault("cursor_blink", False)
        kwargs.setdefault("poll_interval", 0.05)
        app = ConsoleApp(path, **kwargs)
        app.animation_level = "none"  # no tab-underline animation to wait for
        return app

    return factory


def _state(app: Any) -> str:
    """What a failed wait saw: which request the screen holds and which data it applied,
    and whether the watcher kept reading (tells a lost read from a slow machine)."""
    screen = app.screen
    data = getattr(screen, "data", None)
    watcher = getattr(getattr(app, "watcher", None), "reads", None)
    return (
        f"screen {type(screen).__name__}, request {getattr(screen, 'request', None)!r}, "
        f"data request {getattr(data, 'request', None)!r}, "
        f"snapshots applied {getattr(screen, 'snapshots_applied', None)}, watcher reads {watcher}"
    )


async def wait_for(pilot: Any, condition: Callable[[], bool], within: float = 20.0) -> None:
    """Let the app run until ``condition`` holds (live data arrives from a thread)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in time — {_state(pilot.app)}")
        await pilot.pause(0.02)


def live_screen(app: Any) -> Any:
    """The top-most live screen (under any dialog)."""
    return next((s for s in reversed(app.screen_stack) if hasattr(s, "snapshots_applied")), None)


def mark(app: Any) -> tuple[int, int]:
    """How many reads the watcher made and snapshots the live screen applied, so far."""
    screen = live_screen(app)
    return app.watcher.reads, screen.snapshots_applied if screen is not None else 0


async def settle(pilot: Any, since: tuple[int, int] | None = None) -> None:
    """Wait for pending store actions, then for a fresh read applied after ``since``
    (a :func:`mark` taken before the action; default: now)."""
    app = pilot.app
    before = since or mark(app)
    await app.store_idle()
    await pilot.pause()
    screen = live_screen(app)
    if screen is not None:
        reads, applied = before
        await wait_for(pilot, lambda: app.watcher.reads > reads and screen.snapshots_applied > applied)
    await pilot.pause()


async def press(pilot: Any, *keys: str) -> None:
    """Press keys that start a store action, and wait until the screen shows its result."""
    before = mark(pilot.app)
    await pilot.press(*keys)
    await settle(pilot, before)


def row_keys(table: Any) -> list[str]:
    return [str(row.key.value) for row in table.ordered_rows]


def screen_text(app: Any) -> str:
    """Everything on screen as plain text (from the SVG export's text)."""
    import html
    import re

    svg = app.export_screenshot()
    parts = re.findall(r"<text[^>]*>(.*?)</text>", svg, flags=re.S)
    return html.unescape("".join(re.sub(r"<[^>]+>", "", p) for p in parts)).replace("\xa0", " ")


def direct_db(path: Path) -> sqlite3.Connection:
    return open_store(path)


__all__ = ["NOW", "T0", "asyncio", "os", "row_keys", "screen_text", "settle", "wait_for"]
