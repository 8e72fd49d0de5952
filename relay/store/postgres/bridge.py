"""The PostgreSQL async bridge and the process's connection pool.

:class:`PgAsyncStore` is the SQLite :class:`~relay.store.AsyncStore`'s thread bridge
around a psycopg connection instead of a ``sqlite3`` one: ``await store.run(fn,
*args)`` runs ``fn(db, *args)`` on the store's own thread, so a whole unit of work
(a group commit of many messages) is one hand-off and its ``COMMIT`` has returned —
the WAL is on disk, ``synchronous_commit=on`` — before the caller answers ``250``.

Its connection comes from one pool per process and location
(:func:`pool_for`, psycopg-pool) and is held while the store is open, as SQLite's
is; the pool caps how many connections the process opens (``store_pool_size``). A
connection the server dropped (a restart) is given back — the pool throws it away —
and the next statement takes a fresh one: that call's caller got ``StoreUnavailable``
(a relay answers ``451 4.3.0``), the next one works again. Nothing acknowledged is
lost: a unit of work either committed before its ``250`` or not at all.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from relay.store.bridge import AsyncStore, _Job, _serve
from relay.store.errors import StoreError, StoreUnavailable
from relay.store.postgres.connection import (
    CONNECT_TIMEOUT,
    LOCK_TIMEOUT_MS,
    PgConnection,
    configure,
    open_store,
    translate,
)
from relay.store.postgres.location import masked, normalize

T = TypeVar("T")

#: Connections one relay process may hold at once (its stores: control, reads,
#: writes, metrics, delivery; the change feeds listen on one more each). With the
#: default, 4 relays hold at most 4 × (10 + 2) = 48 of PostgreSQL's default
#: max_connections=100, leaving room for consoles and CLI calls (one each).
DEFAULT_POOL_SIZE = 10
POOL_WAIT = 30.0  # seconds a store waits for a free pooled connection

_pools: dict[str, ConnectionPool[Any]] = {}
_pools_lock = threading.Lock()
_pool_size = int(os.environ.get("SMTPPLUS_STORE_POOL_SIZE", "0") or 0) or DEFAULT_POOL_SIZE
_migrated: set[str] = set()


def set_pool_size(size: int) -> None:
    """The most connections this process's pools open (the relay sets its
    ``store_pool_size`` at start, before it opens a store)."""
    global _pool_size
    _pool_size = max(1, int(size))


def pool_for(location: str) -> ConnectionPool[Any]:
    """This process's pool for ``location`` (opened on first use)."""
    with _pools_lock:
        pool = _pools.get(location)
        if pool is None:
            pool = ConnectionPool(
                location,
                min_size=0,
                max_size=_pool_size,
                open=True,
                timeout=POOL_WAIT,
                name="smtpplus",
                configure=configure,
                kwargs={
                    "autocommit": True,
                    "connect_timeout": CONNECT_TIMEOUT,
                    "application_name": "smtpplus",
                    "options": f"-c synchronous_commit=on -c lock_timeout={LOCK_TIMEOUT_MS}",
                },
            )
            _pools[location] = pool
        return pool


def close_pool(location: str) -> None:
    """Close this process's pool for ``location`` (its connections end)."""
    with _pools_lock:
        pool = _pools.pop(location, None)
        _migrated.discard(location)
    if pool is not None:
        with contextlib.suppress(Exception):
            pool.close(timeout=5)


def close_pools() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
        _migrated.clear()
    for pool in pools:
        with contextlib.suppress(Exception):
            pool.close(timeout=5)


def open_pooled(location: str) -> PgConnection:
    """A pooled connection to ``location`` as a :class:`PgConnection` (closing it gives
    it back); the first one of a process creates or upgrades the schema."""
    if location not in _migrated:
        open_store(location).close()  # one plain connection: errors come out as for the CLI
        _migrated.add(location)
    pool = pool_for(location)
    try:
        raw = pool.getconn()
    except PoolTimeout:
        raise StoreUnavailable(
            f"store {masked(location)}: no free connection in the pool after {POOL_WAIT:.0f} s — "
            "raise store_pool_size (and the server's max_connections)"
        ) from None
    except psycopg.Error as exc:
        raise translate(exc, location) from None
    return PgConnection(raw, location, release=pool.putconn, reopen=lambda: pool.getconn())


def _usable(db: PgConnection) -> bool:
    raw = db.raw
    return not raw.closed and raw.info.transaction_status != TransactionStatus.UNKNOWN


class PgAsyncStore(AsyncStore):
    """The async bridge for a PostgreSQL store (see the module's doc)."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        location = normalize(location)  # a URL that went through pathlib.Path is whole again
        super().__init__(masked(location))  # .path: for display only, never the password
        self.url = location  # the location as given (with its password: never shown)
        self.location = location
        self.feeds: list[Any] = []
        self._pg: PgConnection | None = None  # the base class's _db stays None

    def __repr__(self) -> str:
        return f"<PgAsyncStore {masked(self.url)}>"

    @property
    def backend_pid(self) -> int:
        db = self._pg
        return db.backend_pid if db is not None and _usable(db) else 0

    async def open(self) -> PgAsyncStore:
        jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        thread = threading.Thread(target=_serve, args=(jobs,), name="smtpplus-store-pg", daemon=True)
        thread.start()
        self._jobs, self._thread = jobs, thread
        try:
            self._pg = await self._submit(open_pooled, self.url)
        except BaseException:
            self._stop_thread()
            raise
        return self

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._pg is None:
            raise StoreError("store is not open")
        return await self._submit(self._call, fn, args, kwargs)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        """On the store thread. (A dropped connection is replaced by the connection
        itself, at its next statement: see PgConnection.)"""
        db = self._pg
        if db is None:
            raise StoreError("store is not open")
        try:
            return fn(db, *args, **kwargs)
        except psycopg.Error as exc:  # a raw one from a helper that used db.raw
            raise translate(exc, self.url) from None

    async def close(self) -> None:
        feeds, self.feeds = self.feeds, []
        for feed in feeds:
            with contextlib.suppress(Exception):
                await feed.close()
        db, self._pg = self._pg, None
        if db is not None:
            with contextlib.suppress(Exception):
                await self._submit(db.close)
        self._stop_thread()

    async def __aenter__(self) -> PgAsyncStore:
        return await self.open()


__all__ = ["DEFAULT_POOL_SIZE", "PgAsyncStore", "close_pool", "close_pools", "open_pooled", "pool_for", "set_pool_size"]
