"""The SQLite answers to what differs per database behind the shared operation
modules (:class:`relay.store.connection.Dialect`; this module satisfies it)."""

from __future__ import annotations

import contextlib
import functools
import mmap
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from relay.store.connection import Connection, Result, Statement
from relay.store.sqlite.db import data_version, transaction

__all__ = [
    "BODY_CHUNK", "batch", "body_bytes_per_insert", "bulk_load", "claim_floors", "claim_reads", "data_version", "group_statement", "insert_group", "insert_rows", "lease_transaction", "load_rows", "new_ids",
    "rows_per_insert", "skip_locked", "transaction", "write_body",
]

# Bodies over this size are written in pieces of this size. Bound whole, a body is
# copied by SQLite (SQLITE_TRANSIENT) and that copy stays with the cached statement
# until its next use: the last 24 MB message would stay resident after its commit.
BODY_CHUNK = 1 << 20


def write_body(db: Connection, message_id: int, data: bytes | mmap.mmap) -> None:
    size = len(data)
    if size <= BODY_CHUNK or not isinstance(db, sqlite3.Connection):
        db.execute("INSERT INTO message_bodies(message_id, data) VALUES (?, ?)", (message_id, data))
        return
    # Room for the body, then the body through incremental blob I/O, a piece at a time:
    # at most one piece is ever copied.
    db.execute("INSERT INTO message_bodies(message_id, data) VALUES (?, zeroblob(?))", (message_id, size))
    with db.blobopen("message_bodies", "data", message_id) as blob, memoryview(data) as view:
        for start in range(0, size, BODY_CHUNK):
            with view[start : start + BODY_CHUNK] as piece:
                blob.write(piece)


def lease_transaction(db: Connection) -> contextlib.AbstractContextManager[Connection]:
    # SQLite's durability is the store's (synchronous = FULL): one kind of commit.
    return transaction(db)


def batch(db: Connection, statements: Sequence[Statement], *, commit: bool = False) -> list[Result]:
    # In-process: a statement costs no round trip, so one after another (the
    # transaction's end commits, as always).
    results: list[Result] = []
    for sql, parameters in statements:
        cursor = db.execute(sql, parameters)
        rows = cursor.fetchall()  # before rowcount: an UPDATE … RETURNING counts as it is read
        results.append(Result(rows, cursor.rowcount))
    return results


def claim_reads(claim: str) -> str:
    # In-process: the bodies and recipients are read after the claim at no cost.
    return ""


def claim_floors() -> bool:
    # An UPDATE moves the dispatch index entry at once: nothing dead to walk past.
    return False


def skip_locked() -> str:
    # One writer at a time holds the whole database: nothing to skip.
    return ""


@contextlib.contextmanager
def bulk_load(db: Connection) -> Iterator[None]:
    # A big page cache for the one transaction: the random queue ids and the indexes
    # otherwise spill pages to the WAL over and over (measured: 150 s for 1,000,000
    # messages with the default 2 MB, mostly waiting on I/O).
    cache = int(db.execute("PRAGMA cache_size").fetchone()[0])
    db.execute("PRAGMA cache_size = -524288")
    try:
        yield
    finally:
        db.execute(f"PRAGMA cache_size = {cache}")


def load_rows(db: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    # In-process, executemany over a generator is the fastest there is (the path the
    # bulk queueing always took).
    db.executemany(f"INSERT INTO {table}({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)


def new_ids(db: Connection, table: str, count: int) -> range:
    # RETURNING would tell each new id, but each row it returns is a sqlite3_step of
    # its own, and the sqlite3 module lets go of the GIL around every step: the store
    # thread then waits up to the switch interval (5 ms) for the busy event loop to
    # hand it back, for every message of a group commit (measured: 32 rows with the
    # loop busy, 320 ms a commit against 50 ms). One read of the largest id costs a
    # statement's hand-offs, whatever the count; under the transaction's write lock
    # no one else takes those ids.
    top = db.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]
    return range(int(top) + 1, int(top) + 1 + count)


def rows_per_insert() -> int:
    # A group commit's rows, each table's in a few multi-row INSERTs (insert_rows)
    # rather than one per row: the store thread takes the GIL back from the busy
    # event loop after every SQLite call, and each take can wait on the loop, so
    # fewer statements make the group commit the clients wait for shorter (measured
    # in 8 alternating rounds of bench accept: the relay's rate +5 %, its CPU a
    # message -6 %; README, "Figures").
    # A row's id comes back through RETURNING, which needs SQLite 3.35: older ones
    # keep a statement per row.
    return GROUP_ROWS if sqlite3.sqlite_version_info >= (3, 35, 0) else 1


# At most this many rows in one INSERT. Bodies go in power-of-two chunks (a group of
# 13: 8 + 4 + 1), so there are a handful of body statement texts in the statement
# cache, and a cached body statement keeps at most one chunk's bodies (SQLite copies
# what is bound and keeps the copy until the statement's next use). Other rows are
# small: one statement per table, a text per row count (the cache holds them all).
GROUP_ROWS = 64


def body_bytes_per_insert() -> int:
    # A bigger body goes through write_body, a piece at a time (see BODY_CHUNK).
    return BODY_CHUNK


def group_statement() -> bool:
    # In-process statements cost no round trip: no one-statement group (insert_group).
    return False


def insert_group(db: Connection, group: Any) -> dict[str, int] | None:
    return None  # see group_statement


def insert_rows(
    db: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], tail: str = ""
) -> list[Any]:
    if not rows:
        return []
    most = GROUP_ROWS
    if isinstance(db, sqlite3.Connection):  # SQLite before 3.32 binds at most 999 values
        most = min(most, max(1, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(columns)))
    out: list[Any] = []
    start = 0
    while start < len(rows):
        left = min(len(rows) - start, most)
        # Bodies in power-of-two chunks (see GROUP_ROWS); other rows all in one
        # statement: each statement is two GIL hand-offs (step, reset) that can each
        # wait on the busy event loop, and the group commit's clients wait for them all.
        count = 1 << (left.bit_length() - 1) if table == "message_bodies" else left
        chunk = rows[start : start + count]
        sql = _insert_sql(table, tuple(columns), count, tail)
        out.extend(db.execute(sql, [value for row in chunk for value in row] if count > 1 else chunk[0]).fetchall())
        start += count
    return out


@functools.lru_cache(maxsize=512)
def _insert_sql(table: str, columns: tuple[str, ...], count: int, tail: str) -> str:
    row = f"({', '.join('?' * len(columns))})"
    return f"INSERT INTO {table}({', '.join(columns)}) VALUES {', '.join([row] * count)} {tail}".rstrip()
