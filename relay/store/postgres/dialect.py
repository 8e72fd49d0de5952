"""The PostgreSQL answers to what differs per database behind the shared operation
modules (``relay.store.connection.Dialect``; this module satisfies it)."""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Iterator
from typing import Any

from relay.store.postgres.connection import transaction

__all__ = ["bulk_load", "data_version", "rows_per_insert", "skip_locked", "transaction", "write_body"]


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


def rows_per_insert() -> int:
    # Each statement is a round trip to the server: a group commit's rows go in a few
    # multi-row INSERTs (measured: 3 round trips and 4 trigger calls per message before).
    return 500
