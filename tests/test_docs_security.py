"""docs/security.md states the numbers the code has: the defaults of the limits, the
event budget, the AUTH throttle's waits and the store growth they bound."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from relay import smtp
from relay.auth import AUTH_DELAY_CAP, CACHE_SIZE, EventBudget, throttle_delay
from relay.config import RelayConfig
from relay.reasons import EventKind, Reason
from relay.store import open_store, transaction
from relay.store.events import NewEvent, record_event

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")


def row(setting: str) -> str:
    [line] = [ln for ln in TEXT.splitlines() if ln.startswith(f"| `{setting}`")]
    return line


def test_the_limits_are_the_defaults() -> None:
    c = RelayConfig()
    assert f"| {c.soft_error_limit} | from the {c.soft_error_limit + 1}th refusal on" in row("soft_error_limit")
    assert f"at most {smtp.ERROR_DELAY_STEP:g} s each" in row("soft_error_limit")
    assert f"| ≤ {smtp.ERROR_DELAY_BUDGET:g} s |" in TEXT
    assert c.hard_error_limit == smtp.HARD_ERROR_CEILING
    assert f"| {c.hard_error_limit} (at most {smtp.HARD_ERROR_CEILING}) | the {c.hard_error_limit}th refusal" in row("hard_error_limit")
    assert f"up to\n{smtp.SAMPLE_COUNT} samples of what was sent ({smtp.SAMPLE_CHARS} characters each" in TEXT
    assert f"at most {smtp.EVENT_DETAIL_LIMIT} characters" in TEXT
    assert f"`auth_failure_window` ({c.auth_failure_window:g} s)" in TEXT
    assert f"| {c.auth_free_failures} | the first {c.auth_free_failures} failures" in row("auth_free_failures")
    assert f"| {c.auth_failures_per_connection} | the {c.auth_failures_per_connection}rd failure" in row("auth_failures_per_connection")
    assert f"| {c.auth_failures_per_client} | with {c.auth_failures_per_client} failures" in row("auth_failures_per_client")
    assert f"| {c.auth_failures_per_user} | with {c.auth_failures_per_user} failures" in row("auth_failures_per_user")
    assert f"`max_connections` ({c.max_connections})" in TEXT
    assert f"`max_connections_per_client` ({c.max_connections_per_client})" in TEXT
    assert f"`retention_days` ({c.retention_days:g})" in TEXT


def test_the_auth_waits_are_the_throttles() -> None:
    c = RelayConfig()
    waits = [throttle_delay(n, c.auth_free_failures, c.auth_failure_delay, c.auth_failure_delay_max) for n in range(1, 10)]
    assert waits[: c.auth_free_failures] == [0.0] * c.auth_free_failures
    shown = ", ".join(f"{w:g}" for w in waits[c.auth_free_failures : -1] if w < c.auth_failure_delay_max)
    assert f"each `535 5.7.8` waits: {shown}, then {c.auth_failure_delay_max:g} s each" in TEXT
    assert c.auth_failure_delay_max == AUTH_DELAY_CAP and f"never more than {AUTH_DELAY_CAP:g} s" in TEXT


def test_the_event_budget_and_the_store_growth_it_bounds(tmp_path: Path) -> None:
    budget = EventBudget()
    per_hour = int(3600 / budget.interval)
    assert f"**{budget.burst} at once, then one per {budget.interval:g} s** ({per_hour} an hour)" in TEXT
    assert f"≤ {budget.burst} + {per_hour} = {budget.burst + per_hour}" in TEXT
    assert f"the {CACHE_SIZE:,} most\nrecent addresses" in TEXT

    # The bytes an event at its detail cap takes in a real store, indexes included.
    db: sqlite3.Connection = open_store(tmp_path / "store.db")
    try:
        def size() -> int:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return int(db.execute("PRAGMA page_count").fetchone()[0]) * int(db.execute("PRAGMA page_size").fetchone()[0])

        before, count = size(), 1200
        detail = ("7 refused before AUTH (mail-before-auth x7); 20 error replies; closed at the error limit; e.g. "
                  + "MAIL FROM:<\\x1b]52;c;AAAA\\x07xxxxxxxx@a.example> | " * 6)[: smtp.EVENT_DETAIL_LIMIT]
        with transaction(db):
            for _ in range(count):
                record_event(db, NewEvent(kind=EventKind.REFUSED, reason=Reason.PRE_AUTH_REFUSALS, detail=detail,
                                          client="2001:db8::7", port=587))
        per_event = (size() - before) / count
    finally:
        db.close()
    stated = int(re.search(r"takes about (\d+) bytes in the store", TEXT)[1])  # type: ignore[index]
    assert abs(per_event - stated) <= stated * 0.15, per_event
    hourly_kb = (budget.burst + per_hour) * stated / 1000
    assert f"≤ about {round(hourly_kb, -1):.0f} KB |" in TEXT, hourly_kb
    assert hourly_kb < 1000  # the target: under 1 MB per connection-hour
    serial = int(3600 / smtp.ERROR_DELAY_BUDGET)
    assert f"≤ {serial:,}\nevents, about {round(serial * stated / 1000, -1):.0f} KB an hour" in TEXT
