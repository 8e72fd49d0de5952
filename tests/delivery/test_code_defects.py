"""Defects read in the code (issue 10), each held by a test: a migration's failure is
reported as itself, an idle connection closed on the side is kept until it ends,
`queue show` reads only a prefix of a body, no DNS on a store thread, one priority
parser, and one label per campaign state for the CLI and the console."""

from __future__ import annotations

import ast
import asyncio
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from harness.sink import CaptureSink
from relay import priority
from relay.admin import campaigns as admin_campaigns
from relay.delivery import DeliveryEngine, NextHop
from relay.message import header_section, split_headers
from relay.store import campaigns as store_campaigns
from relay.store import directory, open_store, views
from relay.store import queue as q
from relay.store.campaigns import expand_batch, header_priority_of, start_due_campaigns
from relay.store.settings import Keys, set_setting
from relay.store.sqlite import schema
from relay.store.verification import system_sender_choice
from tests.delivery.conftest import enqueue, fast_config, message
from tests.delivery.test_campaigns import verify_sender_domain

ROOT = Path(__file__).parents[2]


def test_a_failed_migration_reports_its_own_error_after_sqlite_rolled_back(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    db = open_store(tmp_path / "s.db")
    version = schema.current_version(db)
    # SQLite ends the transaction by itself on some errors (disk full, I/O error); the
    # step's own ROLLBACK stands in for that here. A second ROLLBACK used to raise
    # "cannot rollback - no transaction is active" and hide the error that mattered.
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, "ROLLBACK;\nSELECT * FROM no_such_table;\n"])
    with pytest.raises(sqlite3.OperationalError, match="no such table: no_such_table"):
        schema.migrate(db, target=version + 1)
    assert not db.in_transaction and schema.current_version(db) == version
    db.close()


async def test_an_idle_connection_closed_on_the_side_is_kept_until_it_ends(store_path: Path) -> None:
    open_store(store_path).close()
    engine = DeliveryEngine(store_path, fast_config(), owner="defects")
    async with CaptureSink(port=0) as old, CaptureSink(port=0) as new:
        stale = engine._connection(NextHop("127.0.0.1", old.port, "off"))
        await stale.open()
        engine._idle.append(stale)
        fresh = engine._connection(NextHop("127.0.0.1", new.port, "off"))  # the old hop's is closed aside
        assert fresh is not stale and len(engine._closing) == 1
        [closing] = engine._closing
        await asyncio.wait_for(closing, 10)
        await asyncio.sleep(0)  # done callbacks run on the next loop pass
        assert not engine._closing and not stale.connected


def test_queue_show_reads_only_a_prefix_of_a_large_body(db: sqlite3.Connection) -> None:
    big = message(1)
    big.data += (b"y" * 998 + b"\r\n") * 3000  # about 3 MB of body
    [queued] = enqueue(db, [big])
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    try:
        detail = q.message_detail(db, queued.queue_id)
    finally:
        db.set_trace_callback(None)
    assert detail.headers.startswith("From: sender@example.com\r\n") and "Subject: m1 p3" in detail.headers
    assert "yyy" not in detail.headers
    reads = [s for s in statements if "message_bodies" in s]
    assert reads and all(f"substr(data, 1, {q.HEADER_BYTES})" in s for s in reads), reads
    assert q.HEADER_BYTES == views.HEADER_BYTES == 64 * 1024  # the console's cap


def test_the_system_sender_uses_the_host_name_the_relay_published(db: sqlite3.Connection) -> None:
    bare = socket.gethostname().split(".")[0] or "vm"
    set_setting(db, Keys.SERVER_NAME, bare)
    assert system_sender_choice(db).address is None  # nothing published: no lookup here
    set_setting(db, Keys.HOST_FQDN, f"{bare}.lan.example")
    choice = system_sender_choice(db)
    assert (choice.address, choice.source) == (f"smtpplus@{bare}.lan.example", "host name")


def test_no_store_module_looks_up_host_names() -> None:
    """``socket.getfqdn`` may ask DNS for seconds: never on a store thread. The one
    lookup (``host_fqdn_for``) runs at relay start in a worker thread."""
    for path in sorted((ROOT / "relay" / "store").glob("*.py")):
        tree = ast.parse(path.read_text())
        for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            called = {c.func.attr for c in ast.walk(func) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)}
            called |= {c.func.id for c in ast.walk(func) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
            if func.name != "host_fqdn_for":
                assert not called & {"getfqdn", "gethostbyname", "getaddrinfo", "host_fqdn_for"}, (path.name, func.name)
    # Nor any other code (the console reads client settings on its store thread).
    for folder in ("relay", "console", "harness"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != ROOT / "relay" / "store" / "verification.py":
                assert "getfqdn(" not in path.read_text(), path
    service = (ROOT / "relay" / "service.py").read_text()
    assert "asyncio.to_thread(host_fqdn_for" in service


@pytest.mark.parametrize(
    "data",
    [
        b"From: a@example.com\r\nX-Priority: 1 (Highest)\r\n\r\nbody",
        b"\r\nX-Priority: 1\r\n\r\nbody",  # no header section at all: the old campaign parser read priority 1
        b"From: a@example.com\r\nImportance:\r\n high\r\n\r\n",
        b"From: a@example.com\r\nX Priority: 1\r\nPriority: urgent\r\n\r\n",
        b"From: a@example.com\r\nX-Priority: \xff9\r\nImportance: low\r\n\r\n",
    ],
)
def test_campaigns_read_header_priority_exactly_as_the_smtp_path(data: bytes) -> None:
    smtp_path = priority.header_priority(split_headers(header_section(data)))
    assert header_priority_of(data) == smtp_path


def test_a_campaign_message_gets_the_priority_the_smtp_path_would_give(db: sqlite3.Connection) -> None:
    directory.create_list(db, "news")
    directory.import_members(db, "news", [("a@example.org", "A")])
    verify_sender_domain(db, "example.com")
    template = b"From: news@example.com\r\nSubject: s\r\nImportance:\r\n High\r\n\r\nbody\r\n"
    info = admin_campaigns.create_campaign(db, "news", subject="s", template=template, mail_from="news@example.com")
    start_due_campaigns(db)
    assert expand_batch(db, info.id) == 1
    [row] = q.list_messages(db, campaign_id=info.id)
    assert row.header_priority == priority.header_priority(split_headers(header_section(template))) == 2


def test_the_console_and_the_cli_show_one_campaign_state(db: sqlite3.Connection) -> None:
    directory.create_list(db, "news")
    directory.import_members(db, "news", [("a@example.org", "A")])
    verify_sender_domain(db, "example.com")
    template = b"From: news@example.com\r\nSubject: s\r\n\r\nbody\r\n"
    info = admin_campaigns.create_campaign(db, "news", subject="s", template=template, mail_from="news@example.com")
    start_due_campaigns(db)

    def both() -> tuple[str, str]:
        [row] = views.campaign_rows(db)
        return store_campaigns.get_campaign(db, info.id).display_state, row.state_label

    seen: list[Any] = [both()]
    q.set_paused(db, True)  # the console used to say "sending" here
    seen.append(both())
    db.execute("UPDATE campaigns SET state = 'paused', paused_reason = 'priority' WHERE id = ?", (info.id,))
    seen.append(both())
    q.set_paused(db, False)
    seen.append(both())
    store_campaigns.pause_campaign(db, info.id)
    seen.append(both())
    assert seen == [
        ("sending", "sending"),
        ("paused (all delivery paused)", "paused (all delivery paused)"),
        ("paused (all delivery paused)", "paused (all delivery paused)"),
        ("paused: priority traffic", "paused: priority traffic"),
        ("paused", "paused"),
    ]
