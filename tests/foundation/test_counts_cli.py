"""Maintained queue counts on a SQLite store: the migration fills them from an
existing store, ``smtpplus store recount`` repairs and reports, and the console and
accept benches report how costs scale with the queue (the counts themselves, on every
backend: tests/store_contract/test_counts.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay.store import counts, directory, open_store
from relay.store.bulk import queue_bulk
from relay.store.intake import insert_messages
from relay.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION, V4_COUNTS
from tests.store_contract.test_counts import assert_counts_match, new_message


def test_the_migration_fills_the_counts_from_an_existing_store(store_path: Path) -> None:
    old = open_store(store_path, migrate_to=MIGRATIONS.index(V4_COUNTS))  # the version before the counts
    alpha = directory.create_list(old, "alpha")
    insert_messages(old, [new_message(n, 1 + n % 5, alpha if n % 2 else None) for n in range(20)])
    queue_bulk(old, 30)
    old.close()
    db = open_store(store_path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert_counts_match(db)
        assert sum(counts.state_counts(db).values()) == 50
        assert counts.list_queued(db) == {alpha.id: 10}
    finally:
        db.close()


def test_store_recount_command_reports_the_fix(cli: Any, db: Any) -> None:
    queue_bulk(db, 5)
    clean = cli.json("store", "recount")
    assert clean["fixed"] == [] and clean["messages"] == 5
    db.execute("UPDATE queue_counts SET n = n + 3 WHERE state = 'sent' AND priority = 1")
    fixed = cli.json("store", "recount")
    assert fixed["fixed"] == [{"table": "queue_counts", "key": "sent/1", "kept": 3, "counted": 0}]
    text = cli("store", "recount", check=True).stdout
    assert "match a full recount" in text


@pytest.mark.parametrize("args", [("store", "recount", "--help")])
def test_store_recount_has_help(cli: Any, args: tuple[str, ...]) -> None:
    assert "recount" in cli(*args, check=True).stdout.lower()


def test_bench_console_against_reports_both_sizes_and_how_they_scale(cli: Any) -> None:
    report = cli.json("harness", "bench", "console", "--quick", "--count", "1200", "--against", "200", "--refreshes", "2")
    assert report["parameters"]["against"] == 200 and report["parameters"]["queued"] == 1200
    runs = {r["label"]: r for r in report["runs"]}
    assert {"200 queued", "1,200 queued"} <= set(runs)
    for label in ("200 queued", "1,200 queued"):
        assert runs[label]["queue_status_ms"] > 0 and runs[label]["screen_read_ms_median"] > 0
    figures = {f["name"]: f for f in report["figures"]}
    assert figures["first_paint_ratio"]["at_most"] == 1.25 and figures["first_paint_ratio"]["value"] > 0
    assert figures["watcher_read_ratio"]["at_most"] == 3.0 and figures["queue_status_ratio"]["at_most"] == 1.5
    assert figures["watcher_read_ms_mean"]["at_most"] == 30.0


def test_bench_accept_stored_compares_a_full_store_with_an_empty_one(cli: Any) -> None:
    report = cli.json("harness", "bench", "accept", "--quick", "--stored", "500")
    assert report["parameters"]["stored"] == 500
    runs = {r["label"]: r for r in report["runs"]}
    assert runs["relay, 500 already stored"]["messages"] > 0 and runs["relay"]["messages"] > 0
    assert runs["fill the store with 500 (child process)"]["messages"] == 500
    figures = {f["name"]: f for f in report["figures"]}
    assert figures["relay 500 stored / empty store"]["at_least"] == 0.85
    assert figures["acknowledged but not in the store"]["value"] == 0
