"""The console on a PostgreSQL store: LISTEN/NOTIFY drives its refresh, and when the
listening connection drops it falls back to polling and listens again (real server:
tests/pg.py; the change feed is relay/store/postgres/changes.py).

The watcher's once-a-second tick is switched off in these tests, so a new row on
screen can only come from the change feed saying "changed": by a notification while
it listens, by its fallback's poll while it cannot.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from relay.store import open_store
from relay.store.intake import insert_messages
from tests.console.conftest import message, row_keys, screen_text, wait_for

LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE application_name = 'smtpplus-listen' AND datname = current_database()"
)


def _listeners(db: Any) -> list[int]:
    return [int(row[0]) for row in db.execute(LISTENERS).fetchall()]


async def _enqueue(db: Any, n: int, subject: str) -> None:
    # Another connection commits, as a relay or a CLI call elsewhere would.
    await asyncio.to_thread(insert_messages, db, [message(n, 3, subject=subject, list_id=None)])


def _shows(app: Any, subject: str) -> bool:
    """The queue table holds a row with ``subject``: the data a read brought has been
    applied. (Not the rendered text: under load Textual can keep painting a new row's
    auto-sized Subject cell at its old width, "While p", long after the data is in.)"""
    table = app.screen.table()
    return any(subject in map(str, table.get_row(key)) for key in row_keys(table))


async def _opened(pilot: Any, db: Any) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: type(app.screen).__name__ == "QueueScreen" and app.screen.snapshots_applied > 0)
    await wait_for(pilot, lambda: len(_listeners(db)) == 1)  # the watcher's feed listens


async def test_a_commit_elsewhere_refreshes_the_console_by_notify(pg_url: str, make_app) -> None:
    db = open_store(pg_url)
    app = make_app(pg_url, poll_interval=0.05)
    app.watcher.tick_interval = 3600.0  # no tick: only the change feed makes a read
    try:
        async with app.run_test(size=(110, 30)) as pilot:
            await _opened(pilot, db)
            assert "Over PostgreSQL" not in screen_text(app)
            before = len(row_keys(app.screen.table()))
            await _enqueue(db, 41, "Over PostgreSQL")
            await wait_for(pilot, lambda: len(row_keys(app.screen.table())) == before + 1)
            await wait_for(pilot, lambda: _shows(app, "Over PostgreSQL"))
            assert len(_listeners(db)) == 1  # it was a notification: the feed never stopped listening
    finally:
        db.close()


async def test_the_console_polls_while_its_listener_is_gone_and_listens_again(
    pg_url: str, pg_cluster: Any, make_app
) -> None:
    name = urlsplit(pg_url).path.lstrip("/")
    db = open_store(pg_url)  # the writer: connected before new connections are refused
    app = make_app(pg_url, poll_interval=0.05)
    app.watcher.tick_interval = 3600.0
    try:
        async with app.run_test(size=(110, 30)) as pilot:
            await _opened(pilot, db)
            (listener,) = _listeners(db)
            # The listening connection drops, and no new one can be made for now.
            pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            reads = app.watcher.reads
            db.execute("SELECT pg_terminate_backend(?)", (listener,))
            await wait_for(pilot, lambda: not _listeners(db))
            await wait_for(pilot, lambda: app.watcher.reads > reads)  # the drop itself is news: one read

            await _enqueue(db, 42, "While polling")
            await wait_for(pilot, lambda: _shows(app, "While polling"))
            assert not _listeners(db)  # shown by the fallback's poll, not by a notification

            pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
            await wait_for(pilot, lambda: len(_listeners(db)) == 1)  # it reconnected and listens
            await _enqueue(db, 43, "Listening again")  # shown by the reconnect's "may have missed" read, or by NOTIFY
            await wait_for(pilot, lambda: _shows(app, "Listening again"))
            # That read is behind it now (the reconnect answered yes once): the next row is NOTIFY's.
            await _enqueue(db, 44, "Notified again")
            await wait_for(pilot, lambda: _shows(app, "Notified again"))
            assert len(_listeners(db)) == 1
    finally:
        pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        db.close()


async def test_the_lists_screen_names_every_live_relay_and_a_leaving_one_goes(pg_url: str, make_app) -> None:
    from relay.store.postgres.relays import PgMemberLock
    from relay.store.relays import beat, leave

    db = open_store(pg_url)
    locks = [PgMemberLock(pg_url), PgMemberLock(pg_url)]
    app = make_app(pg_url, poll_interval=0.05)
    app.watcher.tick_interval = 3600.0
    try:
        for lock, (owner, host, port, fingerprint) in zip(locks, [
            ("a" * 32, "one.example", 2525, "sha256:0a"), ("b" * 32, "two.example", 2526, "sha256:0b"),
        ], strict=True):
            lock.acquire({"owner": owner})
            beat(db, owner, {"host": host, "pid": port, "listen_host": "0.0.0.0", "ports": [port],
                             "tls_fingerprint": fingerprint})
        async with app.run_test(size=(140, 40)) as pilot:
            await _opened(pilot, db)
            await pilot.press("2")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "ListsScreen" and app.screen.snapshots_applied > 0)
            await wait_for(pilot, lambda: "Relay 2" in screen_text(app))
            text = screen_text(app)
            assert "pid 2525 on one.example (0.0.0.0), ports 2525, TLS sha256:0a" in text
            assert "pid 2526 on two.example (0.0.0.0), ports 2526, TLS sha256:0b" in text
            # A clean stop deletes its row: that commit's notification refreshes the screen.
            await asyncio.to_thread(leave, db, "a" * 32)
            await wait_for(pilot, lambda: "Relay 2" not in screen_text(app))
            assert "one.example" not in screen_text(app) and "two.example" in screen_text(app)
    finally:
        for lock in locks:
            lock.release()
        db.close()
