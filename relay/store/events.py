"""The event log: every decision, with time, client, port, user and reason code."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from relay.display import clean
from relay.reasons import EventKind, Reason
from relay.store.connection import Connection, Row, Statement, dialect_of, insert_id


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    at: float
    kind: str
    reason: str
    username: str | None
    list_id: int | None
    client: str | None
    port: int | None
    message_id: int | None
    queue_id: str | None
    detail: str

    @classmethod
    def from_row(cls, row: Row) -> Event:
        return cls(*row)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event not yet written; the relay batches these into its group commit."""

    kind: EventKind
    reason: Reason
    username: str | None = None
    list_id: int | None = None
    client: str | None = None
    port: int | None = None
    message_id: int | None = None
    queue_id: str | None = None
    detail: str = ""
    at: float | None = None


_COLUMNS = "id, at, kind, reason, username, list_id, client, port, message_id, queue_id, detail"


def record_event(db: Connection, event: NewEvent) -> int:
    return insert_id(
        db,
        "INSERT INTO events(at, kind, reason, username, list_id, client, port, message_id, queue_id, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        _values(event),
    )


EVENT_COLUMNS = ("at", "kind", "reason", "username", "list_id", "client", "port", "message_id", "queue_id", "detail")


_INSERT_ONE = f"INSERT INTO events({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"


def event_statements(events: Iterable[NewEvent]) -> list[Statement]:
    """The INSERTs that record ``events``, for a batch (``Dialect.batch``: one round
    trip for all of them with the statements around them)."""
    return [(_INSERT_ONE, _values(e)) for e in events]


def record_events(db: Connection, events: Iterable[NewEvent]) -> None:
    rows = [_values(e) for e in events]
    dialect = dialect_of(db)
    per = dialect.rows_per_insert()
    if per <= 1 or len(rows) <= 1:
        # A SQLite without RETURNING; and one row alone is cheaper as a plain INSERT
        # than unnested on PostgreSQL (measured).
        db.executemany(_INSERT_ONE, rows)
        return
    # The rows in one statement per ``per`` rows, as intake's group commit writes its
    # events: a round trip each on PostgreSQL, a GIL hand-off each on SQLite.
    for start in range(0, len(rows), per):
        dialect.insert_rows(db, "events", EVENT_COLUMNS, rows[start:start + per])


def _values(e: NewEvent) -> tuple[object, ...]:
    # Text from clients and next hops (a username tried, a reply) is escaped once,
    # here, so no reader of the event log meets a terminal control (relay.display).
    return (
        time.time() if e.at is None else e.at,
        str(e.kind),
        str(e.reason),
        None if e.username is None else clean(e.username),
        e.list_id,
        None if e.client is None else clean(e.client),
        e.port,
        e.message_id,
        e.queue_id,
        clean(e.detail),
    )


def events_for_message(db: Connection, message_id: int) -> list[Event]:
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM events WHERE message_id = ? ORDER BY id", (message_id,)
    ).fetchall()
    return [Event.from_row(r) for r in rows]


def find_events(
    db: Connection,
    *,
    username: str | None = None,
    kind: str | None = None,
    kinds: Sequence[str] | None = None,
    reason: str | None = None,
    port: int | None = None,
    since: float | None = None,
    until: float | None = None,
    before_id: int | None = None,
    limit: int = 200,
) -> list[Event]:
    """Newest first, one page at a time (``before_id`` pages backwards). Time bounds
    use the ``at`` index; the newest-first walk stops at ``limit`` matches."""
    where: list[str] = []
    args: list[object] = []
    for column, value in (("username", username), ("kind", kind), ("reason", reason), ("port", port)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if kinds:
        where.append(f"kind IN ({','.join('?' * len(kinds))})")
        args.extend(kinds)
    if since is not None:
        where.append("at >= ?")
        args.append(since)
    if until is not None:
        where.append("at < ?")
        args.append(until)
    if before_id is not None:
        where.append("id < ?")
        args.append(before_id)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM events {clause} ORDER BY id DESC LIMIT ?", (*args, limit)
    ).fetchall()
    return [Event.from_row(r) for r in rows]


def last_event_id(db: Connection) -> int:
    """The newest event's id (0 when there is none): where a reader that counts new
    events starts (the metrics' ``smtpplus_events_total``)."""
    row = db.execute("SELECT max(id) FROM events").fetchone()
    return int(row[0] or 0) if row is not None else 0


def count_events_after(db: Connection, after_id: int, limit: int) -> tuple[dict[tuple[str, str], int], int]:
    """Events with an id above ``after_id`` per (kind, reason) — at most ``limit`` ids, so
    a reader far behind catches up over several calls — and the id to pass next time.

    Whoever wrote them (the relay, the CLI, a console): on SQLite every writer's events
    get ids in commit order (one writer at a time), so no event is read twice or passed
    over. (A PostgreSQL sequence hands out ids before commit, so a port must read behind
    the oldest open transaction there.) When
    the newest id is below ``after_id`` the table was emptied and ids start again: the
    count starts again from the first."""
    last = last_event_id(db)
    if last < after_id:
        after_id = 0
    upto = min(last, after_id + max(1, limit))
    counts = {
        (str(kind), str(reason)): int(n)
        for kind, reason, n in db.execute(
            "SELECT kind, reason, count(*) FROM events WHERE id > ? AND id <= ? GROUP BY kind, reason", (after_id, upto)
        )
    }
    return counts, upto
