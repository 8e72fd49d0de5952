"""The SQLite backend: a store in one file (``--db /path/to/smtpplus.db``).

Implements :class:`relay.store.interfaces.Backend`: the driver-specific entry points
(open, transaction, change feeds, lock, check, backup, error translation) are this
package's; the operations are the shared, driver-neutral modules of
:mod:`relay.store`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from relay.store.bridge import AsyncStore
from relay.store.changes import ChangeFeed, SyncChangeFeed
from relay.store.connection import Connection
from relay.store.errors import StoreError
from relay.store.interfaces import (
    Backend,
    CheckResult,
    LockState,
)
from relay.store.operations import SharedOperations
from relay.store.sqlite import changes, check, db, lock, schema


class SqliteBackend(SharedOperations):
    """The SQLite implementation of :class:`relay.store.interfaces.Backend`."""

    name = "sqlite"

    def handles(self, location: str | os.PathLike[str]) -> bool:
        # Anything that is not a URL is a file path (postgresql:/… is a URL that
        # went through pathlib.Path, not a file).
        from relay.store.postgres.location import normalize  # text only: loads no driver

        return "://" not in normalize(location)

    def open(self, location: str | os.PathLike[str], *, create: bool = True, **options: Any) -> Connection:
        return db.open_store(location, create=create, **options)

    def schema_version(self, conn: Connection) -> int:
        return schema.current_version(conn)

    def transaction(self, conn: Connection, *, immediate: bool = True) -> AbstractContextManager[Connection]:
        return db.transaction(conn, immediate=immediate)

    def async_store(self, location: str | os.PathLike[str]) -> AsyncStore:
        return AsyncStore(location)

    def change_feed(self, conn: Connection) -> SyncChangeFeed:
        return changes.change_feed(conn)

    def async_change_feed(self, store: AsyncStore) -> ChangeFeed:
        return changes.async_change_feed(store)

    def store_error_for(self, exc: BaseException, location: str | os.PathLike[str] | None = None) -> StoreError | None:
        return db.store_error_for(exc, location)

    def backup(self, conn: Connection, target: str | os.PathLike[str]) -> None:
        db.backup(conn, target)

    def check(
        self, location: str | os.PathLike[str], progress: Callable[[float, int], None] | None = None, *, every: float = 1.0
    ) -> CheckResult:
        return check.quick_check(location, progress, every=every)

    def relay_lock(self, location: str | os.PathLike[str]) -> lock.StoreLock:
        return lock.StoreLock(Path(location))

    def lock_state(self, conn: Connection) -> LockState:
        return lock.store_lock_state(conn)


BACKEND: Backend = SqliteBackend()
