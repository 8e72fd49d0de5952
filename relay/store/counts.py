"""Maintained counts of the queue: per state and priority, and per list.

Triggers on ``messages`` (``V4_COUNTS`` in schema.py; in shards on PostgreSQL since
``V9_COUNT_SHARDS``, summed when read) keep ``queue_counts`` and
``list_queue_counts`` in the same transaction as every insert, state or priority
change and delete, whoever writes it. Reading them costs a few rows whatever the
queue's size; :func:`recount` checks them against a full count of ``messages`` and
repairs any difference (``smtpplus store recount``).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.store.connection import Connection, transaction

STATES = ("queued", "sending", "deferred", "sent", "failed", "held")
PRIORITIES = (1, 2, 3, 4, 5)
# States of a message that is still the relay's business (counted per list).
ACTIVE_STATES = ("queued", "deferred", "sending", "held")

_ACTIVE_SQL = ", ".join(f"'{s}'" for s in ACTIVE_STATES)


def state_counts(db: Connection) -> dict[tuple[str, int], int]:
    """Messages per (state, priority), every pair present (30 rows read)."""
    out = {(s, p): 0 for s in STATES for p in PRIORITIES}
    # Summed per key: on PostgreSQL each writing connection counts in its own shard (V9).
    for state, priority, n in db.execute("SELECT state, priority, sum(n) FROM queue_counts GROUP BY state, priority"):
        out[(state, priority)] = int(n)
    return out


def list_queued(db: Connection) -> dict[int, int]:
    """Messages still to deliver (queued, deferred, in flight or held) per list id;
    lists with none are left out."""
    return {
        int(k): int(n)
        for k, n in db.execute("SELECT list_id, sum(n) FROM list_queue_counts GROUP BY list_id HAVING sum(n) != 0")
    }


def oldest_waiting(db: Connection, priority: int) -> float | None:
    """Creation time of the oldest queued or deferred message of ``priority``:
    two seeks on the dispatch index ``(state, priority, id)``, never a scan."""
    oldest: float | None = None
    for state in ("queued", "deferred"):
        row = db.execute(
            "SELECT created_at FROM messages WHERE state = ? AND priority = ? ORDER BY id LIMIT 1", (state, priority)
        ).fetchone()
        if row is not None and (oldest is None or row[0] < oldest):
            oldest = float(row[0])
    return oldest


def ready_since(db: Connection, now: float) -> float | None:
    """Since when the longest-waiting message has been ready to send (the health check's
    "delivery stuck"): the creation time of the oldest queued message or the due time
    of the most overdue deferred one; None when none is ready. One seek per priority on
    the dispatch index and one on the deferred due-time index, never a scan."""
    since: float | None = None
    for priority in PRIORITIES:
        row = db.execute(
            "SELECT created_at FROM messages WHERE state = 'queued' AND priority = ? ORDER BY id LIMIT 1", (priority,)
        ).fetchone()
        if row is not None and (since is None or row[0] < since):
            since = float(row[0])
    row = db.execute("SELECT min(next_attempt_at) FROM messages WHERE state = 'deferred'").fetchone()
    if row is not None and row[0] is not None and row[0] <= now and (since is None or row[0] < since):
        since = float(row[0])
    return since


# ---------------------------------------------------------------------------
# Checking and repairing


@dataclass(frozen=True, slots=True)
class CountFix:
    """One count that differed from a full recount (and was set to it)."""

    table: str  # 'queue_counts' | 'list_queue_counts'
    key: str  # "queued/3" or "list 7"
    kept: int  # what the table said
    counted: int  # what a full count says


def _recount_states(db: Connection) -> dict[tuple[str, int], int]:
    out = {(s, p): 0 for s in STATES for p in PRIORITIES}
    for state, priority, n in db.execute("SELECT state, priority, count(*) FROM messages GROUP BY state, priority"):
        out[(state, priority)] = int(n)
    return out


def _recount_lists(db: Connection) -> dict[int, int]:
    return {
        int(k): int(n)
        for k, n in db.execute(
            f"SELECT list_id, count(*) FROM messages WHERE list_id IS NOT NULL AND state IN ({_ACTIVE_SQL}) "
            "GROUP BY list_id"
        )
    }


def differences(db: Connection) -> list[CountFix]:
    """Where the maintained counts differ from a full count (read only)."""
    return _compare(db, _recount_states(db), _recount_lists(db))


def _compare(db: Connection, counted: dict[tuple[str, int], int], counted_lists: dict[int, int]) -> list[CountFix]:
    fixes: list[CountFix] = []
    for (state, priority), kept in state_counts(db).items():
        if kept != counted[(state, priority)]:
            fixes.append(CountFix("queue_counts", f"{state}/{priority}", kept, counted[(state, priority)]))
    kept_lists = list_queued(db)
    for list_id in sorted(set(kept_lists) | set(counted_lists)):
        kept, right = kept_lists.get(list_id, 0), counted_lists.get(list_id, 0)
        if kept != right:
            fixes.append(CountFix("list_queue_counts", f"list {list_id}", kept, right))
    return fixes


def recount(db: Connection) -> list[CountFix]:
    """Recount every maintained count from ``messages`` and write the right values;
    returns what differed. One write transaction, so no change slips in between
    counting and writing (one scan of the dispatch index: seconds at millions)."""
    with transaction(db):
        counted, counted_lists = _recount_states(db), _recount_lists(db)
        fixes = _compare(db, counted, counted_lists)
        if fixes:
            # Every shard's rows go; one row per key (PostgreSQL: shard 0) holds the count.
            db.execute("DELETE FROM queue_counts")
            db.executemany(
                "INSERT INTO queue_counts(state, priority, n) VALUES (?, ?, ?)", [(s, p, n) for (s, p), n in counted.items()]
            )
            db.execute("DELETE FROM list_queue_counts")
            db.executemany("INSERT INTO list_queue_counts(list_id, n) VALUES (?, ?)", list(counted_lists.items()))
    return fixes
