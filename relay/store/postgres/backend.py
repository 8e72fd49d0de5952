"""The PostgreSQL backend: a store in one database (``--db postgresql://…``).

Implements :class:`relay.store.interfaces.Backend`: the driver-specific entry points
(open, transaction, change feeds, relay lock, check, error translation) are this
package's; the operations are the shared, driver-neutral modules of
:mod:`relay.store`, as for SQLite.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, cast

import psycopg

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
from relay.store.postgres import schema
from relay.store.postgres.bridge import PgAsyncStore
from relay.store.postgres.changes import AsyncNotifyFeed, NotifyFeed
from relay.store.postgres.connection import PgConnection, open_store, transaction, translate
from relay.store.postgres.location import is_postgres, masked, normalize, without_password


class PostgresBackend(SharedOperations):
    """The PostgreSQL implementation of :class:`relay.store.interfaces.Backend`."""

    name = "postgresql"

    def handles(self, location: str | os.PathLike[str]) -> bool:
        return is_postgres(location)

    def open(self, location: str | os.PathLike[str], *, create: bool = True, migrate_to: int | None = None, **_: Any) -> Connection:
        # SQLite's file options (create_parent) mean nothing here.
        return open_store(location, create=create, migrate_to=migrate_to)

    def schema_version(self, conn: Connection) -> int:
        return schema.current_version(_pg(conn).raw)

    def transaction(self, conn: Connection, *, immediate: bool = True) -> AbstractContextManager[Connection]:
        return cast(AbstractContextManager[Connection], transaction(_pg(conn), immediate=immediate))

    def async_store(self, location: str | os.PathLike[str]) -> AsyncStore:
        return PgAsyncStore(normalize(location))

    def change_feed(self, conn: Connection) -> SyncChangeFeed:
        return NotifyFeed(_pg(conn))

    def async_change_feed(self, store: AsyncStore) -> ChangeFeed:
        return AsyncNotifyFeed(store)

    def store_error_for(self, exc: BaseException, location: str | os.PathLike[str] | None = None) -> StoreError | None:
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, psycopg.Error):
            return translate(exc, normalize(location) if location is not None else None)
        return None

    def backup(self, conn: Connection, target: str | os.PathLike[str]) -> None:
        # pg_dump does it, consistently and while the relay runs: no second copy here.
        location = _pg(conn).location
        # The URL without its password (``***`` would be taken for one): pg_dump reads
        # it from PGPASSWORD or ~/.pgpass.
        raise StoreError(
            "store backup copies SQLite stores — for PostgreSQL use pg_dump (password from PGPASSWORD or ~/.pgpass): "
            f"pg_dump -Fc -f {shlex.quote(os.fspath(target))} {shlex.quote(without_password(location))}"
        )

    def check(
        self, location: str | os.PathLike[str], progress: Callable[[float, int], None] | None = None, *, every: float = 1.0
    ) -> CheckResult:
        # The server checks its own pages (data checksums, amcheck): this says whether
        # the store answers and has the schema, and how big it is.
        began = time.monotonic()
        url = normalize(location)
        db = open_store(url, create=False)
        try:
            row = db.execute("SELECT pg_database_size(current_database())").fetchone()
            size = int(row[0]) if row else 0
        finally:
            db.close()
        return CheckResult(masked(url), True, size // 8192, size, time.monotonic() - began)

    def relay_lock(self, location: str | os.PathLike[str]) -> Any:
        # Any number of relays serve one PostgreSQL store: each holds a lock on its own id
        # (relay.store.postgres.relays; relay.store.relays lists the live ones).
        from relay.store.postgres.relays import PgMemberLock

        return PgMemberLock(normalize(location))

    def lock_state(self, conn: Connection) -> LockState:
        # Held while any relay holds the advisory lock on its own id; the facts are the
        # oldest live relay's heartbeat row (relay.store.lease.relay_status reads the
        # same rows through relay.store.relays for PostgreSQL).
        from relay.store.relays import live_relays

        found = live_relays(_pg(conn))
        if not found:
            return LockState(False)
        first = found[0]
        return LockState(True, {"owner": first.owner, "pid": first.pid, "host": first.host,
                                "listen_host": first.listen_host, "started_at": first.started_at,
                                "relays": len(found)})


def _pg(conn: Connection) -> PgConnection:
    assert isinstance(conn, PgConnection), "a PostgreSQL backend call on a connection of another backend"
    return conn


BACKEND: Backend = PostgresBackend()
POSTGRESQL = BACKEND
