"""What the store's operation modules need of a connection, whatever the database.

The operation modules (``queue``, ``directory``, ``campaigns``, ``views``, …) are
shared by every backend: they import no driver, take a :class:`Connection` first and
write SQL that SQLite (3.40 and later) and PostgreSQL both run —

- ``?`` placeholders (a PostgreSQL connection rewrites them for its driver);
- ``INSERT ... RETURNING id`` (:func:`insert_id`), never ``cursor.lastrowid``;
- ``ON CONFLICT (...) DO NOTHING`` / ``DO UPDATE SET x = excluded.x``, never
  ``INSERT OR IGNORE`` / ``OR REPLACE``;
- times as REAL epoch seconds computed in Python, booleans as INTEGER 0/1, ``coalesce``
  (no ``julianday``, ``strftime``, ``datetime()``, ``IFNULL``, ``rowid``, ``PRAGMA``).

Rows answer both ``row["name"]`` and ``row[0]`` (SQLite's ``sqlite3.Row``; the
PostgreSQL adapter gives the same). Where a database genuinely needs other SQL or
another mechanism (a change marker, writing a big body, claiming rows under
concurrent writers, a bulk load), the module asks its connection's dialect
(:func:`dialect_of`): each backend has one dialect module, named by
``Connection.dialect``, that implements :class:`Dialect`.

This module imports no driver.
"""

from __future__ import annotations

import importlib
import mmap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "DIALECT_MODULES",
    "Connection",
    "Cursor",
    "Dialect",
    "Result",
    "Row",
    "Statement",
    "dialect_of",
    "insert_id",
    "transaction",
]

# A row answers row["name"], row[0], row[1:], len(row) and iterates its values (the
# modules unpack rows into dataclasses: ListInfo(*row)). sqlite3.Row does; so must the
# PostgreSQL adapter's (a tuple subclass that also looks names up).
Row = Any


# One statement of a batch (Dialect.batch): SQL with ``?`` placeholders and its values.
Statement = tuple[str, Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Result:
    """What one statement of a batch gave: its rows (none for a plain write) and how
    many rows it changed."""

    rows: list[Any]
    rowcount: int


class Cursor(Protocol):
    """The result of :meth:`Connection.execute`."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A connection to the store, as the operation modules use it.

    Opened by a backend (``relay.store.open_store``), in autocommit mode: writes are
    grouped with :func:`transaction`. ``dialect`` names the database (``"sqlite"`` or
    ``"postgresql"``) and so the :class:`Dialect` that answers for it."""

    @property
    def dialect(self) -> str: ...

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...

    def close(self) -> None: ...


class Dialect(Protocol):
    """What differs per database behind the shared operation modules. A backend's
    dialect module (``relay/store/<backend>/dialect.py``) satisfies it as a module."""

    def transaction(self, db: Connection, *, immediate: bool = True) -> AbstractContextManager[Connection]:
        """One write transaction; nested use joins the outer one. ``immediate``: take
        the write lock at once (``False``: a transaction that writes only scratch tables)."""
        ...

    def lease_transaction(self, db: Connection) -> AbstractContextManager[Connection]:
        """One transaction of the delivery engine's round (claims, leases, outcomes),
        whose COMMIT need not wait for the disk where the database makes that a
        choice (PostgreSQL: ``synchronous_commit = off`` for it alone; SQLite: a plain
        :meth:`transaction`). Safe because every write of a round may be lost without
        losing mail: see ``relay.store.queue.dispatch_round``. Nested use joins the
        outer transaction (as durable as that one is)."""
        ...

    def batch(self, db: Connection, statements: Sequence[Statement], *, commit: bool = False) -> list[Result]:
        """Run ``statements`` in order (one round trip where each statement would be
        one: PostgreSQL) and give each one's :class:`Result`. ``commit``: inside a
        :meth:`lease_transaction` nothing follows them, so its COMMIT may go in the
        same round trip (the transaction's end then has nothing left to commit)."""
        ...

    def claim_reads(self, claim: str) -> str:
        """The claim (``UPDATE messages … RETURNING`` the claim's columns) as one
        statement that also gives each claimed message's body, its recipients still to
        deliver (addresses, DSN NOTIFY and ORCPT, three arrays in address order) and,
        for a retry, how many recipients an earlier attempt delivered — or ``""`` where
        reading them after the claim costs nothing (SQLite)."""
        ...

    def data_version(self, db: Connection) -> int | None:
        """A number that changes when *another* connection commits (SQLite:
        ``PRAGMA data_version``), or None when the database has none to give: then a
        dispatch round never skips its transaction on an unchanged store."""
        ...

    def write_body(self, db: Connection, message_id: int, data: bytes | mmap.mmap) -> None:
        """Insert a message's body (up to the message size limit) without copying
        all of it at once."""
        ...

    def new_ids(self, db: Connection, table: str, count: int) -> range | None:
        """Inside a write transaction, the ids the next ``count`` rows of ``table`` get,
        for the caller to insert them with (SQLite: after the largest id, as SQLite
        itself picks them; the write lock is held, so no one else takes them) — or
        None: the database picks them and ``RETURNING`` tells (PostgreSQL: a sequence)."""
        ...

    def rows_per_insert(self) -> int:
        """How many rows a group commit hands :meth:`insert_rows` at once: a few
        dozen where statements are in-process (SQLite: fewer GIL hand-offs between
        the store thread and the event loop; 1 on a SQLite without ``RETURNING``,
        then intake writes a statement per row), a few hundred where each statement
        is a round trip (PostgreSQL)."""
        ...

    def body_bytes_per_insert(self) -> int:
        """Bytes of bodies one :meth:`insert_rows` statement may carry; a bigger body
        goes alone through :meth:`write_body`."""
        ...

    def insert_rows(
        self, db: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], tail: str = ""
    ) -> list[Any]:
        """Insert ``rows`` (values in ``columns``' order) into ``table`` in as few
        statements as the database likes; ``tail`` is SQL after the rows (``ON
        CONFLICT …``, ``RETURNING …``); returns what a ``RETURNING`` gave."""
        ...

    def insert_group(self, db: Connection, group: Any) -> dict[str, int] | None:
        """A group commit's new messages (a :class:`relay.store.intake.GroupRows`) in
        one statement — its own transaction, or part of the caller's — returning each
        queue id's message id; None where the database gains nothing by it (SQLite:
        in-process statements, no round trips to save)."""
        ...

    def group_statement(self) -> bool:
        """Whether :meth:`insert_group` writes a group in one statement (else it
        gives None, and intake does not build the group's rows for it)."""
        ...

    def claim_floors(self) -> bool:
        """Whether a claim should start each priority at the engine's floors
        (``relay.store.claim_floors``): True where a claimed message's index entry
        stays behind, dead, until a vacuum (PostgreSQL); False where it goes at once
        (SQLite)."""
        ...

    def skip_locked(self) -> str:
        """SQL appended to the ``SELECT`` that picks rows to claim: ``""`` where the
        write lock is the whole database (SQLite), ``" FOR UPDATE SKIP LOCKED"`` where
        it is per row (PostgreSQL)."""
        ...

    def load_rows(self, db: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Bulk-load ``rows`` (values in ``columns``' order, any number, from a
        generator) into ``table``, inside :meth:`bulk_load`'s transaction: the
        database's fastest way (SQLite: ``executemany``; PostgreSQL: ``COPY``)."""
        ...

    def bulk_load(self, db: Connection) -> AbstractContextManager[None]:
        """Around a very large write transaction (benchmarks' bulk queueing): whatever
        makes it fast (SQLite: a big page cache). The bulk load writes message ids
        itself (``max(id) + 1`` on): where ids come from a sequence (PostgreSQL), leaving
        this must move the sequence past them — and, outside a caller's transaction,
        vacuum and analyze what was loaded (PostgreSQL)."""
        ...


# Which module implements the dialect a connection names. A backend adds its line.
DIALECT_MODULES: dict[str, str] = {
    "sqlite": "relay.store.sqlite.dialect",
    "postgresql": "relay.store.postgres.dialect",
}

_loaded: dict[str, Dialect] = {}


def dialect_of(db: Connection) -> Dialect:
    """The :class:`Dialect` of ``db`` (imported on first use, so no driver is loaded
    that no open connection needs)."""
    name = db.dialect
    found = _loaded.get(name)
    if found is None:
        module: Dialect = importlib.import_module(DIALECT_MODULES[name])
        found = _loaded[name] = module
    return found


def transaction(db: Connection, *, immediate: bool = True) -> AbstractContextManager[Connection]:
    """One write transaction on ``db`` (nested use joins the outer one). The
    outermost one is an edge: a driver error leaving it comes out as the store's own
    (:mod:`relay.store.errors`)."""
    return dialect_of(db).transaction(db, immediate=immediate)


def insert_id(db: Connection, sql: str, parameters: Sequence[Any] = ()) -> int:
    """Run an ``INSERT`` of one row and return its new ``id`` (``RETURNING id``:
    SQLite and PostgreSQL both have it; ``lastrowid`` is SQLite's own)."""
    rows = db.execute(f"{sql} RETURNING id", parameters).fetchall()  # fetchall: the statement ends here
    return int(rows[0][0])
