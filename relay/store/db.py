"""Opening the store: pragmas, migrations, transactions, backup, and the async bridge."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from relay.store.schema import migrate

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000

# The type callers outside the store (relay.admin, screens) name a connection by, so
# none of them imports sqlite3.
Connection = sqlite3.Connection


class StoreError(Exception):
    """A store problem worth one line to the operator (never a traceback)."""


class StoreTooNew(StoreError):
    """The file was written by a newer smtpplus than this one."""


class StoreCorrupt(StoreError):
    """SQLite says the file is damaged (SQLITE_CORRUPT / SQLITE_NOTADB)."""


_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
_CORRUPT_WORDS = ("malformed", "not a database", "corrupt")


def is_corrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying the store file is damaged."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _CORRUPT_CODES:
        return True
    text = str(exc).lower()
    return any(word in text for word in _CORRUPT_WORDS)


def corrupt_message(path: str | os.PathLike[str], exc: BaseException) -> str:
    if "not a database" in str(exc).lower():  # maybe just a wrong --db
        return (
            f"store {path} is not usable: {exc} — check --db / SMTPPLUS_DB; if it is your store, it is "
            "damaged: restore the latest backup"
        )
    return (
        f"store {path} is corrupt ({exc}) — stop using it: check it with `smtpplus store check`, "
        "then restore the latest backup (`smtpplus store backup` makes them)"
    )


# Called (from a store thread) with (store path, error) whenever an AsyncStore meets a
# corrupt store: the relay stops rather than answer 451 to every client for ever.
_corruption_listeners: list[Callable[[Path, BaseException], None]] = []


def on_corruption(listener: Callable[[Path, BaseException], None]) -> Callable[[], None]:
    """Register ``listener``; returns the function that unregisters it."""
    _corruption_listeners.append(listener)
    return lambda: _corruption_listeners.remove(listener) if listener in _corruption_listeners else None


def _tell_corruption(path: Path, exc: BaseException) -> None:
    for listener in list(_corruption_listeners):
        with contextlib.suppress(Exception):
            listener(path, exc)


def default_db_path() -> Path:
    """``SMTPPLUS_DB``, else ``smtpplus.db`` in the user's data directory."""
    env = os.environ.get("SMTPPLUS_DB")
    if env:
        return Path(env)
    return data_dir_db_path()


def data_dir_db_path() -> Path:
    """``smtpplus.db`` in the user's data directory: the one store whose directory
    smtpplus creates by itself (see :func:`open_store`)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("smtpplus")) / "smtpplus.db"


def _configure(db: sqlite3.Connection) -> None:
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"store: cannot switch to WAL journal mode (got {mode})")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")


def open_store(
    path: str | os.PathLike[str],
    *,
    create: bool = True,
    migrate_to: int | None = None,
    create_parent: bool | None = None,
) -> sqlite3.Connection:
    """Open (and create or upgrade) the store at ``path``.

    A missing directory is created only for the default store in the user's data
    directory (or when ``create_parent`` is true): anywhere else it is most likely a
    typo in --db / SMTPPLUS_DB, and silently making a new empty store there would
    hide it — that is a one-line error instead.

    The connection is in autocommit mode; group writes with :func:`transaction`.
    ``check_same_thread`` is off so the async bridge can hand it to its thread.
    """
    p = Path(path)
    if not create and not p.exists():
        raise StoreError(f"no store at {p} — check --db / $SMTPPLUS_DB")
    if create_parent is None:
        create_parent = _same_path(p, data_dir_db_path())
    if not create_parent and not p.parent.is_dir():
        problem = "is not a directory" if p.parent.exists() else "does not exist"
        raise StoreError(
            f"store {p}: directory {p.parent} {problem} — create it (mkdir -p {p.parent}) "
            "or pass a --db in an existing directory"
        )
    try:
        if create_parent:
            p.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(p, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        _configure(db)
        migrate(db, target=migrate_to)
    except StoreTooNew:
        raise
    except sqlite3.DatabaseError as exc:
        if is_corrupt(exc):
            raise StoreCorrupt(corrupt_message(p, exc)) from None
        raise StoreError(f"store {p} is not usable: {exc} — check the path and its permissions") from None
    except OSError as exc:
        raise StoreError(f"store {p} is not usable: {exc.strerror or exc} — check the path and its permissions") from None
    return db


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.expanduser().absolute() == b.expanduser().absolute()
    except (OSError, RuntimeError):
        return False


@contextlib.contextmanager
def transaction(db: sqlite3.Connection, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """One write transaction; ``BEGIN IMMEDIATE`` so writers queue on busy_timeout
    instead of failing half-way with SQLITE_BUSY on lock upgrade."""
    if db.in_transaction:
        # Nested use joins the outer transaction.
        yield db
        return
    db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield db
    except BaseException:
        # SQLite rolls back by itself on some errors (SQLITE_FULL, IOERR): a second
        # ROLLBACK would fail and hide the error that matters.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    else:
        db.execute("COMMIT")


def backup(db: sqlite3.Connection, target: str | os.PathLike[str]) -> None:
    """A consistent copy of a live store (SQLite online backup)."""
    dest = sqlite3.connect(Path(target))
    try:
        # One step (pages=-1) copies from a single WAL snapshot without blocking
        # writers. Copying in chunks restarts whenever another process commits, so
        # under a busy relay it never finished (measured: a 93 MB store with one
        # writer — chunked copy still running after 30 s, one step done in 0.2 s).
        db.backup(dest, pages=-1)
    finally:
        dest.close()


def data_version(db: sqlite3.Connection) -> int:
    """Changes whenever another connection commits; cheap to poll."""
    return int(db.execute("PRAGMA data_version").fetchone()[0])


class AsyncStore:
    """Runs synchronous store functions on one dedicated connection thread (aiosqlite's).

    ``await store.run(fn, *args)`` calls ``fn(db, *args)`` on that thread, so a whole
    unit of work (say, a group commit of many messages) costs one thread hand-off.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._conn: aiosqlite.Connection | None = None

    async def open(self) -> AsyncStore:
        # Opening (and migrating) happens on aiosqlite's worker thread, off the loop.
        path = self.path
        self._conn = aiosqlite.Connection(lambda: open_store(path), iter_chunk_size=64)
        await self._conn
        return self

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._conn is None:
            raise StoreError("store is not open")
        conn = self._conn
        # aiosqlite's _execute runs a callable on its connection thread; it is the one
        # private call we rely on, wrapped here only.
        try:
            result: T = await conn._execute(fn, conn._conn, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if is_corrupt(exc):
                _tell_corruption(self.path, exc)
            raise
        return result

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def __aenter__(self) -> AsyncStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
