"""The store backends, and which one a ``--db`` location names.

Today there is one: SQLite (a file path). The PostgreSQL issue adds a second for
``postgresql://`` locations; :func:`backend_for` is where that choice is made.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from relay.store import events as _events
from relay.store import settings as _settings
from relay.store.changes import ChangeFeed, SyncChangeFeed
from relay.store.interfaces import Backend, EventLog, Settings
from relay.store.sqlite.changes import async_change_feed, change_feed
from relay.store.sqlite.db import AsyncStore, Connection, open_store, transaction


class SqliteBackend:
    """The SQLite implementation of :class:`relay.store.interfaces.Backend`."""

    name = "sqlite"
    settings: Settings = _settings
    events: EventLog = _events

    def open(self, location: str | Path, *, create: bool = True) -> Connection:
        return open_store(location, create=create)

    def transaction(self, db: Connection) -> AbstractContextManager[Connection]:
        return transaction(db)

    def async_store(self, location: str | Path) -> AsyncStore:
        return AsyncStore(location)

    def change_feed(self, db: Connection) -> SyncChangeFeed:
        return change_feed(db)

    def async_change_feed(self, store: AsyncStore) -> ChangeFeed:
        return async_change_feed(store)


SQLITE: Backend = SqliteBackend()
BACKENDS: dict[str, Backend] = {SQLITE.name: SQLITE}


def backend_for(location: str | Path) -> Backend:
    """The backend a ``--db`` location names (every location is a SQLite file today)."""
    return SQLITE
