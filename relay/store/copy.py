"""``smtpplus store copy SRC DST``: move a store between backends (SQLite ⇄ PostgreSQL).

Every table both stores have is copied row for row, parents before children (the
foreign keys' order), in one transaction on the destination, and the counts are
compared at the end. The queue's maintained counts (``queue_counts``,
``list_queue_counts``) are not copied: the destination's own triggers build them as
the messages arrive, and the check compares them with the source's. Ids are kept; on
PostgreSQL the identity sequences then move past them (the dialect's ``bulk_load``
contract). Generated columns (the recipients' domain) are computed by the destination.

A destination that holds anything (any row but what creating a store writes) is
refused: a copy never merges.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from relay.store.connection import dialect_of
from relay.store.errors import StoreError

# Kept by triggers in the destination as the messages arrive.
DERIVED = frozenset({"queue_counts", "list_queue_counts"})
# Each backend's own bookkeeping (the schema version lives there on PostgreSQL).
BOOKKEEPING = frozenset({"smtpplus_schema"})
BATCH = 1000

Progress = Callable[[str, int], None]  # (table, rows copied since the last call)


class NotEmpty(StoreError):
    """The destination already holds data."""


@dataclass(frozen=True, slots=True)
class CopyResult:
    source: str
    destination: str
    tables: dict[str, int] = field(default_factory=dict)  # rows copied per table, in copy order
    rows: int = 0
    queue: dict[str, int] = field(default_factory=dict)  # messages per state, as both stores count them


def _catalog(db: Any) -> Any:
    backend = "postgres" if getattr(db, "dialect", "sqlite") == "postgresql" else "sqlite"
    return importlib.import_module(f"relay.store.{backend}.catalog")


def plan(src: Any, dst: Any) -> list[str]:
    """The tables to copy, parents first."""
    source, destination = _catalog(src), _catalog(dst)
    names = (set(source.tables(src)) & set(destination.tables(dst))) - DERIVED - BOOKKEEPING
    parents = {name: source.references(src, name) & names for name in names}
    ordered: list[str] = []
    while parents:
        ready = sorted(name for name, refs in parents.items() if not refs - set(ordered) - {name})
        if not ready:  # a cycle: cannot happen with this schema; copy the rest as it comes
            ready = sorted(parents)
        for name in ready:
            ordered.append(name)
            del parents[name]
    return ordered


def count(db: Any, table: str) -> int:
    return int(db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])


def source_counts(src: Any, tables: list[str]) -> dict[str, int]:
    return {table: count(src, table) for table in tables}


def check_empty(dst: Any, tables: list[str]) -> None:
    held = {table: n for table in tables if (n := count(dst, table))}
    if held:
        what = ", ".join(f"{table} ({n:,})" for table, n in sorted(held.items())[:4])
        raise NotEmpty(f"the destination store is not empty: {what} — copy into a new, empty store")


def _rows(src: Any, table: str, cols: list[str], key: list[str]) -> Iterator[list[Any]]:
    """The rows of ``table`` in batches: by their one integer key where there is one
    (a big table never sits whole in memory), else all at once (the small ones)."""
    select = ", ".join(f'"{c}"' for c in cols)
    if len(key) == 1 and key[0] in cols:
        position, last = cols.index(key[0]), None
        while True:
            where, args = ("", ()) if last is None else (f' WHERE "{key[0]}" > ?', (last,))
            batch = src.execute(
                f'SELECT {select} FROM "{table}"{where} ORDER BY "{key[0]}" LIMIT {BATCH}', args
            ).fetchall()
            if not batch:
                return
            yield batch
            last = batch[-1][position]
    else:
        batch = src.execute(f'SELECT {select} FROM "{table}"').fetchall()
        for start in range(0, len(batch), BATCH):
            yield batch[start : start + BATCH]


@contextlib.contextmanager
def _loading(dst: Any) -> Iterator[None]:
    # One transaction; the dialect's bulk load moves PostgreSQL's identity sequences
    # past the copied ids (its contract).
    dialect = dialect_of(dst)
    with dialect.transaction(dst), dialect.bulk_load(dst):
        yield


def copy_store(src: Any, dst: Any, *, progress: Progress | None = None, names: tuple[str, str] = ("", "")) -> CopyResult:
    """Copy every row of ``src`` into the empty store ``dst``; raise :class:`NotEmpty`
    (nothing written) or :class:`StoreError` when the counts differ afterwards."""
    from relay.store.counts import state_counts

    tables = plan(src, dst)
    check_empty(dst, tables)
    expected = source_counts(src, tables)
    source_catalog, destination_catalog = _catalog(src), _catalog(dst)
    copied: dict[str, int] = {}
    with _loading(dst):
        for table in tables:
            cols = [c for c in source_catalog.columns(src, table) if c in set(destination_catalog.columns(dst, table))]
            insert = (
                f'INSERT INTO "{table}"({", ".join(chr(34) + c + chr(34) for c in cols)}) '
                f"VALUES ({', '.join('?' for _ in cols)})"
            )
            done = 0
            for batch in _rows(src, table, cols, source_catalog.primary_key(src, table)):
                dst.executemany(insert, [tuple(_plain(v) for v in row) for row in batch])
                done += len(batch)
                if progress is not None:
                    progress(table, len(batch))
            copied[table] = done
    found = source_counts(dst, tables)
    differ = {t: (expected[t], found[t]) for t in tables if expected[t] != found[t]}
    queue_src, queue_dst = dict(state_counts(src)), dict(state_counts(dst))
    if differ or queue_src != queue_dst:
        what = "; ".join(f"{t}: {a:,} in the source, {b:,} copied" for t, (a, b) in sorted(differ.items())[:4])
        raise StoreError(
            f"the copy's counts differ ({what or 'queue counts'}) — the source changed during the copy? "
            "Stop the relay and copy into a new, empty store"
        )
    queue: dict[str, int] = {}
    for (state, _priority), n in queue_dst.items():
        queue[state] = queue.get(state, 0) + int(n)
    return CopyResult(names[0], names[1], copied, sum(copied.values()), {k: n for k, n in queue.items() if n})


def _plain(value: Any) -> Any:
    # A PostgreSQL BYTEA may arrive as a memoryview; SQLite takes bytes.
    return bytes(value) if isinstance(value, memoryview) else value
