"""The SQLite backend's connection edge: opening the store (pragmas, migrations),
transactions, backup, and the translation of ``sqlite3`` errors into the store's own
(:mod:`relay.store.errors`).

Every ``sqlite3`` exception that leaves the store goes through :func:`translate`
(in :func:`open_store`, :func:`transaction`, :func:`store_errors` and, through
:func:`store_error_for`, the async bridge :class:`relay.store.AsyncStore`), so
callers catch :class:`StoreError` and its kinds only.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from relay.store.connection import Connection
from relay.store.errors import (
    Conflict,
    StoreBusy,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreTooNew,
    StoreUnavailable,
)
from relay.store.sqlite.schema import migrate


class SqliteConnection(sqlite3.Connection):
    """The SQLite backend's connection: a plain ``sqlite3.Connection`` that names its
    dialect, so the shared operation modules find the SQLite answers to what differs
    per database (:func:`relay.store.connection.dialect_of`). It satisfies
    :class:`relay.store.Connection`, the type everything outside this package names."""

    dialect = "sqlite"


BUSY_TIMEOUT_MS = 10_000
STATEMENT_CACHE = 512  # prepared statements kept per connection (see connect)

# Re-exported: they were defined here before relay.store.errors held them.
__all__ = [
    "BUSY_TIMEOUT_MS",
    "SqliteConnection",
    "StoreCorrupt",
    "StoreError",
    "StoreTooNew",
    "backup",
    "data_version",
    "default_db_path",
    "open_store",
    "store_error_for",
    "store_errors",
    "transaction",
    "translate",
]

_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
_CORRUPT_WORDS = ("malformed", "not a database", "corrupt")


_FULL_CODE = 13  # SQLITE_FULL
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED


def is_corrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying the store file is damaged (raw, or translated)."""
    if isinstance(exc, StoreCorrupt):
        return True
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


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying there is no room (SQLITE_FULL, or its words)."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == _FULL_CODE:
        return True
    return "full" in str(exc).lower()


def translate(exc: sqlite3.Error, path: str | os.PathLike[str] | None = None) -> StoreError:
    """The store's own error for a ``sqlite3`` one: one line naming the fix.

    The kind decides what callers do (a relay answers ``452 4.3.1`` to
    :class:`StoreFull`, ``451 4.3.0`` to the other :class:`StoreUnavailable`); the
    text keeps SQLite's words so the operator sees what happened.
    """
    where = f"store {path}" if path is not None else "store"
    if is_corrupt(exc):
        if path is not None:
            return StoreCorrupt(corrupt_message(path, exc))
        return StoreCorrupt(
            f"{where} is corrupt ({exc}) — stop using it: check it with `smtpplus store check`, "
            "then restore the latest backup"
        )
    if is_full(exc):
        return StoreFull(f"{where} is full ({exc}) — free disk space where the store lives")
    code = getattr(exc, "sqlite_errorcode", None)
    if (code is not None and code & 0xFF in _BUSY_CODES) or "locked" in str(exc).lower():
        return StoreBusy(f"{where} is busy ({exc}) — another process held it too long; try again")
    if isinstance(exc, sqlite3.IntegrityError):
        return Conflict(f"{where} refused the change: {exc}")
    return StoreUnavailable(f"store error: {exc} — check --db and that the file is writable")


def store_error_for(exc: BaseException, path: str | os.PathLike[str] | None = None) -> StoreError | None:
    """``exc`` as the store's own error (itself, or its translation), or None when it
    is no store error: for a top-level handler (the CLI's, the console's) that must
    give one line for a store call made outside the edges above."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return translate(exc, path)
    return None


@contextlib.contextmanager
def store_errors(path: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Translate any ``sqlite3`` error raised inside into the store's own (the edge
    for synchronous callers that read outside :func:`transaction`)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise translate(exc, path) from exc


def default_db_path() -> str | Path:
    """``SMTPPLUS_DB``, else ``smtpplus.db`` in the user's data directory. A
    ``postgresql://`` URL stays text, exactly as given (never through ``Path``:
    ``postgresql:///db`` would lose a slash and name another database)."""
    env = os.environ.get("SMTPPLUS_DB")
    if env:
        from relay.store.postgres.location import store_location  # text only: loads no driver

        return store_location(env)
    return data_dir_db_path()


def data_dir_db_path() -> Path:
    """``smtpplus.db`` in the user's data directory: the one store whose directory
    smtpplus creates by itself (see :func:`open_store`)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("smtpplus")) / "smtpplus.db"


def _configure(db: SqliteConnection) -> None:
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
) -> SqliteConnection:
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
        create_private(p)
        db = sqlite3.connect(
            p,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
            factory=SqliteConnection,
            # A group commit's INSERTs have a text per row count (1–64) for messages,
            # recipients and events: room for those beside the rest (the default is 128).
            cached_statements=STATEMENT_CACHE,
        )
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


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists: the store holds DKIM
    private keys (and password hashes), so only its owner may read it. SQLite gives
    the -wal and -shm files the mode of the store file."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.expanduser().absolute() == b.expanduser().absolute()
    except (OSError, RuntimeError):
        return False


@contextlib.contextmanager
def transaction(db: Connection, *, immediate: bool = True) -> Iterator[Connection]:
    """One write transaction; ``BEGIN IMMEDIATE`` so writers queue on busy_timeout
    instead of failing half-way with SQLITE_BUSY on lock upgrade.

    The outermost transaction is an edge: a ``sqlite3`` error leaving it is
    translated (:func:`translate`). A nested one joins the outer and lets errors
    through as they are, so store code inside may still catch ``sqlite3`` ones."""
    if db.in_transaction:
        # Nested use joins the outer transaction.
        yield db
        return
    with store_errors():
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
            try:
                db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (a deferred constraint, SQLITE_BUSY) may leave the
                # transaction open: every later "transaction" would join it and never
                # commit — writes that seem to succeed and vanish.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise


def backup(db: Connection, target: str | os.PathLike[str]) -> None:
    """A consistent copy of a live store (SQLite online backup), mode 0600 as the store."""
    if not isinstance(db, sqlite3.Connection):
        raise StoreError("store backup: this is not a SQLite store — use the database's own backup tool")
    create_private(Path(target))
    dest = sqlite3.connect(Path(target))
    try:
        # One step (pages=-1) copies from a single WAL snapshot without blocking
        # writers. Copying in chunks restarts whenever another process commits, so
        # under a busy relay it never finished (measured: a 93 MB store with one
        # writer — chunked copy still running after 30 s, one step done in 0.2 s).
        db.backup(dest, pages=-1)
    finally:
        dest.close()


def data_version(db: Connection) -> int:
    """Changes whenever another connection commits; cheap to poll."""
    return int(db.execute("PRAGMA data_version").fetchone()[0])
