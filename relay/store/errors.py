"""The store's own errors: what callers catch, whatever the backend.

A backend translates its driver's exceptions into these at its edge (the SQLite
backend in :mod:`relay.store.sqlite.db`: ``AsyncStore.run``, ``open_store``,
``transaction`` and :func:`relay.store.sqlite.db.store_errors`), so nothing outside the
store ever catches ``sqlite3.Error`` (or, later, ``psycopg.Error``). Every message is
one line an operator can act on.

This module imports no driver: it is shared by every backend.
"""

from __future__ import annotations


class StoreError(Exception):
    """A store problem worth one line to the operator (never a traceback)."""


class StoreTooNew(StoreError):
    """The store was written by a newer smtpplus than this one."""


class StoreCorrupt(StoreError):
    """The backend says the store is damaged (SQLite: SQLITE_CORRUPT / SQLITE_NOTADB)."""


class StoreUnavailable(StoreError):
    """The store cannot be used right now (I/O error, read-only, gone, refused):
    a relay answers ``451 4.3.0`` and tries again later."""


class StoreBusy(StoreUnavailable):
    """Another writer held the store longer than the busy timeout: try again."""


class StoreFull(StoreUnavailable):
    """No space left for the store (disk full, or a size limit): a relay answers
    ``452 4.3.1``."""


class NotFound(StoreError):
    """A named list, user, identity or message does not exist."""


class Conflict(StoreError):
    """A write broke a rule of the store's schema (a unique name, a reference)."""


IntegrityError = Conflict  # the DB-API name, for readers who look for it


class AlreadyExists(Conflict):
    """A unique name is taken."""


class InvalidInput(StoreError):
    """Input a rule refused (the message says which and how to fix it)."""


class RelayAlreadyRunning(StoreError):
    """Another relay holds this store's lease (or its lock) and is alive."""

    def __init__(self, message: str, *, owner: str, pid: int | None, host: str | None, age: float) -> None:
        super().__init__(message)
        self.owner = owner
        self.pid = pid
        self.host = host
        self.age = age
