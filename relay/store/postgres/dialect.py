"""The PostgreSQL answers to what differs per database behind the shared operation
modules (``relay.store.connection.Dialect``; this module satisfies it)."""

from __future__ import annotations

import contextlib
import functools
import mmap
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg

from relay.store.postgres.connection import transaction, translate

__all__ = ["bulk_load", "data_version", "insert_rows", "load_rows", "rows_per_insert", "skip_locked", "transaction", "write_body"]


def data_version(db: Any) -> int | None:
    # Changes when another connection committed: the connection LISTENs to the
    # store's change channel (see PgConnection.data_version).
    return int(db.data_version())


def write_body(db: Any, message_id: int, data: bytes | mmap.mmap) -> None:
    # psycopg sends a memoryview as BYTEA without copying it into a bytes first.
    with memoryview(data) as view:
        db.execute("INSERT INTO message_bodies(message_id, data) VALUES (?, ?)", (message_id, view))


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


@contextlib.contextmanager
def bulk_load(db: Any) -> Iterator[None]:
    # One big transaction: nothing to tune per session. Afterwards the identity
    # sequences move past the ids the load wrote.
    try:
        yield
    finally:
        db.execute(_RESYNC_IDS)


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


def rows_per_insert() -> int:
    # Each statement is a round trip to the server: a group commit's rows go in one
    # statement per table (insert_rows; before: about four statements per message).
    return 500


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
