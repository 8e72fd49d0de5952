"""The PostgreSQL answers to what differs per database behind the shared operation
modules (``relay.store.connection.Dialect``; this module satisfies it)."""

from __future__ import annotations

import contextlib
import functools
import json
import mmap
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg

from relay.store.connection import Result, Statement
from relay.store.errors import StoreError
from relay.store.postgres.connection import lease_transaction, transaction, translate

__all__ = [
    "batch", "body_bytes_per_insert", "bulk_load", "claim_floors", "claim_reads", "data_version", "group_statement", "insert_group", "insert_rows", "lease_transaction",
    "load_rows", "new_ids",
    "rows_per_insert", "skip_locked", "transaction", "write_body",
]


def batch(db: Any, statements: Sequence[Statement], *, commit: bool = False) -> list[Result]:
    # Each statement alone is a round trip to the server: all of them in one
    # (PgConnection.batch).
    return list(db.batch(statements, commit=commit))


def data_version(db: Any) -> int | None:
    # Changes when another connection committed: the connection LISTENs to the
    # store's change channel (see PgConnection.data_version).
    return int(db.data_version())


def write_body(db: Any, message_id: int, data: bytes | mmap.mmap) -> None:
    # psycopg sends a memoryview as BYTEA without copying it into a bytes first.
    with memoryview(data) as view:
        db.execute("INSERT INTO message_bodies(message_id, data) VALUES (?, ?)", (message_id, view))


def claim_reads(claim: str) -> str:
    # One round trip for the claim and what its attempts need: the claim as a
    # data-modifying WITH, the body and recipients joined to what it returned.
    return (
        f"WITH claimed AS ({claim}) SELECT claimed.*, b.data, r.addresses, r.notifies, r.orcpts, "
        "CASE WHEN claimed.attempts > 1 THEN (SELECT count(*) FROM recipients s "
        "WHERE s.message_id = claimed.id AND s.state = 'sent') ELSE 0 END "
        "FROM claimed LEFT JOIN message_bodies b ON b.message_id = claimed.id "
        "LEFT JOIN LATERAL (SELECT array_agg(address ORDER BY address) AS addresses, "
        "array_agg(dsn_notify ORDER BY address) AS notifies, array_agg(dsn_orcpt ORDER BY address) AS orcpts "
        "FROM recipients WHERE message_id = claimed.id AND state IN ('queued', 'deferred')) r ON true"
    )


def claim_floors() -> bool:
    # An UPDATE leaves the old row version's index entries until a vacuum: a claim
    # from the front of the dispatch index walks every entry claimed since.
    return True


def skip_locked() -> str:
    # Locks are per row: a relay claiming skips the rows another is claiming now.
    return " FOR UPDATE SKIP LOCKED"


# A bulk load writes its ids itself (SQLite's way: max(id) + 1 …); PostgreSQL's identity
# sequences do not see those, so the next plain INSERT would take a taken id.
_RESYNC_IDS = """
DO $$
DECLARE t record;
BEGIN
    FOR t IN
        SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE c.relnamespace = current_schema()::regnamespace AND a.attidentity <> '' AND c.relkind = 'r'
    LOOP
        EXECUTE format('SELECT setval(pg_get_serial_sequence(%L, %L), coalesce((SELECT max(%I) FROM %I), 0) + 1, false)',
                       t.relname, t.attname, t.attname, t.relname);
    END LOOP;
END $$
"""


# After a bulk load, as after any large COPY: statistics for the planner (until
# autovacuum's next visit it would plan for the tables as they were before), and a
# vacuum that sets the new rows' visibility and hint bits once, instead of the first
# statements to read them; then a checkpoint writes the load's pages out now, not
# when its gigabyte of WAL triggers one (measured: the claim rounds timed right after
# a load of 1,000,000 messages shared the machine with autovacuum's pass over all of
# them and with that checkpoint). CHECKPOINT needs a superuser or pg_checkpoint
# (PostgreSQL 15): without, the server keeps its own schedule.
_AFTER_LOAD = "VACUUM (ANALYZE) messages, recipients, message_bodies, events"


@contextlib.contextmanager
def bulk_load(db: Any) -> Iterator[None]:
    # One big transaction: nothing to tune per session. Afterwards the identity
    # sequences move past the ids the load wrote, and the tables are vacuumed.
    try:
        yield
    finally:
        db.execute(_RESYNC_IDS)
    if not db.in_transaction:  # VACUUM cannot run inside one (a caller's)
        db.execute(_AFTER_LOAD)
        with contextlib.suppress(StoreError):
            db.execute("CHECKPOINT")


def load_rows(db: Any, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    # COPY: the rows stream to the server in one statement (a statement per row, as
    # executemany sends them, fires every statement trigger once per row: measured,
    # 1,000,000 messages had not gone in after 14 minutes). The statement triggers
    # (maintained counts, change notice) see all the rows at once.
    try:
        with db.raw.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:
        raise translate(exc, db.location) from None


def new_ids(db: Any, table: str, count: int) -> None:
    # The sequence gives the ids; RETURNING tells them (one round trip either way).
    return None


def rows_per_insert() -> int:
    # Each statement is a round trip to the server: a group commit's rows go in one
    # statement per table (insert_rows; before: about four statements per message).
    return 500


def body_bytes_per_insert() -> int:
    # A group of big messages is never all in one buffer; a bigger body goes alone.
    return 4 << 20


def group_statement() -> bool:
    return True  # insert_group


def insert_rows(db: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], tail: str = "") -> list[Any]:
    # One array per column, unnested: the statement's text is the same whatever the
    # number of rows (psycopg parses and caches it once, the server prepares it once),
    # where a VALUES list of N rows is a new text of 26·N placeholders each time
    # (measured: psycopg's parsing of those was half the group commit's CPU).
    if not rows:
        return []
    types = _column_types(db, table)
    sql = _unnest_sql(table, tuple(columns), tuple(types[c] for c in columns), tail)
    cursor = db.execute(sql, [list(values) for values in zip(*rows, strict=True)])
    return list(cursor.fetchall()) if "RETURNING" in tail.upper() else []


def insert_group(db: Any, group: Any) -> dict[str, int] | None:
    # The group's messages, bodies, recipients and queued events in ONE statement
    # (data-modifying WITHs): one round trip where the tables one by one take six
    # with BEGIN and COMMIT (on a loopback connection each costs the relay ~80-100 us
    # of CPU: measured, the group commit's fixed cost, paid twice as often per
    # message when two relays split the sessions). Outside a transaction it is its
    # own, then announced (PgConnection.write).
    #
    # Each table's rows travel as ONE JSON text (json.dumps, in C), the bodies as one
    # bytea array in binary format (%b: the bytes as they are): psycopg dumps a list
    # parameter element by element in Python, and in text format hex-escapes and then
    # quotes each body — measured, one array per column (41 of them) was ~75% of the
    # relay's CPU per group commit (~0.4 ms per commit plus ~0.1 ms per message).
    # The statement's text is the same for every group: prepared once by the server.
    views = [memoryview(data) for _, data in group.bodies]  # no copy of a body here
    try:
        rows = db.write(_group_sql(db), [
            _json(group.messages),
            _json([queue_id for queue_id, _ in group.bodies]),
            views,
            _json(group.recipients),
            _json(group.events),
        ])
    finally:
        for view in views:
            view.release()
    return {row[1]: int(row[0]) for row in rows}


# Compact, and the text as it is (not \u-escaped): the server reads it as UTF-8.
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


_GROUP_SQL: list[str] = []


def _group_sql(db: Any) -> str:
    """The statement :func:`insert_group` sends, in psycopg's placeholders (%s, %b)."""
    if _GROUP_SQL:
        return _GROUP_SQL[0]
    from relay.store.events import EVENT_COLUMNS
    from relay.store.intake import MESSAGE_COLUMNS

    def rows(table: str, columns: Sequence[str]) -> str:
        """The rows of one JSON parameter (arrays of values in ``columns``' order),
        each value as the table's type (text for a column the table has not: the
        recipients' queue id), and each row's position ``n``. Values are JSON
        strings, numbers and nulls (flags are 0/1 in the rows already)."""
        types = _column_types(db, table)
        values = ", ".join(f"(j->>{i})::{types.get(c, 'text')} AS {c}" for i, c in enumerate(columns))
        return f"(SELECT {values}, n FROM json_array_elements(%s::json) WITH ORDINALITY AS x(j, n))"

    def names(columns: Sequence[str]) -> str:
        return ", ".join(columns)

    recipient_columns = ("address", "dsn_notify", "dsn_orcpt")
    event_columns = [c for c in EVENT_COLUMNS if c != "message_id"]
    # Messages go in in the group's order (their ids too), and so do recipients and
    # events (ORDER BY the row's position): ids as the table-by-table path gives them.
    sql = (
        f"WITH m AS (INSERT INTO messages({names(MESSAGE_COLUMNS)}) "
        f"SELECT {names(MESSAGE_COLUMNS)} FROM {rows('messages', MESSAGE_COLUMNS)} AS u ORDER BY n "
        "RETURNING id, queue_id), "
        "b AS (INSERT INTO message_bodies(message_id, data) SELECT m.id, u.data "
        "FROM ROWS FROM (json_array_elements_text(%s::json), unnest(%b::bytea[])) AS u(queue_id, data) "
        "JOIN m USING (queue_id)), "
        f"r AS (INSERT INTO recipients(message_id, {names(recipient_columns)}) "
        f"SELECT m.id, {', '.join('u.' + c for c in recipient_columns)} "
        f"FROM {rows('recipients', ('queue_id', *recipient_columns))} AS u "
        "JOIN m USING (queue_id) ORDER BY u.n ON CONFLICT DO NOTHING), "
        f"e AS (INSERT INTO events({names(EVENT_COLUMNS)}) "
        f"SELECT {', '.join('m.id' if c == 'message_id' else 'u.' + c for c in EVENT_COLUMNS)} "
        f"FROM {rows('events', event_columns)} AS u JOIN m USING (queue_id) ORDER BY u.n) "
        "SELECT id, queue_id FROM m"
    )
    _GROUP_SQL.append(sql)
    return sql


_TYPES: dict[str, dict[str, str]] = {}


def _column_types(db: Any, table: str) -> dict[str, str]:
    # The same in every store of this schema version: looked up once per process.
    found = _TYPES.get(table)
    if found is None:
        rows = db.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = ?::regclass AND attnum > 0 AND NOT attisdropped",
            (table,),
        ).fetchall()
        found = _TYPES[table] = {name: kind for name, kind in rows}
    return found


@functools.lru_cache(maxsize=64)
def _unnest_sql(table: str, columns: tuple[str, ...], types: tuple[str, ...], tail: str) -> str:
    arrays = ", ".join(f"?::{kind}[]" for kind in types)
    return f"INSERT INTO {table}({', '.join(columns)}) SELECT * FROM unnest({arrays}) {tail}".rstrip()
