"""``store copy``: a SQLite store into PostgreSQL and back, row for row (real
SQLite files, a real PostgreSQL server: tests/pg.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relay.store import open_store
from relay.store.copy import NotEmpty, copy_store, plan
from relay.store.directory import create_list, import_members
from relay.store.intake import NewMessage, insert_messages

SKIPPED = {"queue_counts", "list_queue_counts", "smtpplus_schema"}


def _fill(path: Path) -> None:
    db = open_store(path)
    try:
        create_list(db, "Friends", "people")
        import_members(db, "Friends", [("ann@example.org", "Ann"), ("bob@example.org", "Bob")])
        messages = [
            NewMessage(mail_from="a@example.org", recipients=[f"r{n}@example.net", "x@Example.COM"],
                       data=b"Subject: hi\r\n\r\n" + bytes(range(256)) * (n + 1), priority=1 + n % 5)
            for n in range(30)
        ]
        insert_messages(db, messages)
        db.execute("UPDATE messages SET state = 'sent', finished_at = 1 WHERE id % 3 = 0")
        db.execute("INSERT INTO settings(key, value) VALUES ('queue.rate', '5')")
    finally:
        db.close()


def _contents(db: Any) -> dict[str, list[tuple[Any, ...]]]:
    from relay.store.copy import _catalog

    out = {}
    catalog = _catalog(db)
    for table in sorted(set(catalog.tables(db)) - SKIPPED):
        cols = sorted(catalog.columns(db, table))
        rows = db.execute(f'SELECT {", ".join(cols)} FROM "{table}"').fetchall()
        out[table] = sorted((tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows), key=repr)
    return out


def test_a_store_goes_to_postgresql_and_back_row_for_row(tmp_path: Path, pg_url: str) -> None:
    _fill(tmp_path / "one.db")
    src, pg = open_store(tmp_path / "one.db"), open_store(pg_url)
    seen: dict[str, int] = {}
    try:
        assert plan(src, pg).index("lists") < plan(src, pg).index("list_members") < plan(src, pg).index("messages") \
            < plan(src, pg).index("message_bodies")
        result = copy_store(src, pg, progress=lambda table, n: seen.__setitem__(table, seen.get(table, 0) + n))
        assert result.tables["messages"] == 30 and seen["message_bodies"] == 30 and result.queue == {"queued": 20, "sent": 10}
        assert _contents(pg) == _contents(src)
        # The domain is computed by PostgreSQL; the ids continue past the copied ones.
        assert pg.execute("SELECT count(*) FROM recipients WHERE domain = 'example.com'").fetchone()[0] == 30
        fresh = pg.execute(
            "INSERT INTO messages(queue_id, origin, mail_from, size, header_priority, user_priority, priority, "
            "next_attempt_at, created_at, updated_at) VALUES ('NEW', 'smtp', 'b@example.org', 1, 3, 3, 3, 0, 0, 0) "
            "RETURNING id"
        ).fetchone()[0]
        assert fresh == 31
        with pytest.raises(NotEmpty, match="not empty: events"):
            copy_store(src, pg)

        back = open_store(tmp_path / "two.db")
        try:
            copy_store(pg, back)
            assert _contents(back) == _contents(pg)
        finally:
            back.close()
    finally:
        src.close()
        pg.close()


def test_the_command_copies_with_a_count_check_and_refuses_a_full_destination(tmp_path: Path, pg_url: str) -> None:
    _fill(tmp_path / "one.db")
    run = [sys.executable, "-c", "from console.cli import main; main()", "store", "copy"]
    done = subprocess.run([*run, str(tmp_path / "one.db"), pg_url, "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["tables"]["messages"] == 30 and summary["queue"] == {"queued": 20, "sent": 10}
    again = subprocess.run([*run, str(tmp_path / "one.db"), pg_url], capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "not empty" in again.stderr
