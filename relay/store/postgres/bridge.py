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

An outage answers promptly (:func:`checkout`): a store that needs a connection the
pool must *make* gives up as soon as the pool has failed to connect, and after
:data:`OUTAGE_WAIT` at most — never the :data:`POOL_WAIT` a merely busy pool (every
connection in use, the server up) is given. The pool itself gives up a reconnection
after :data:`RECONNECT_GIVE_UP`, so no attempt backs off for minutes and the first
call after the server is back connects at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from relay.store.bridge import AsyncStore, _Job, _serve
from relay.store.errors import StoreError, StoreUnavailable
from relay.store.postgres.connection import (
    CONNECT_TIMEOUT,
    SESSION_OPTIONS,
    PgConnection,
    configure,
    open_store,
    translate,
)
from relay.store.postgres.location import masked, normalize

T = TypeVar("T")

#: Connections one relay process may hold at once (its stores: control, reads,
#: writes, metrics, delivery; the change feeds listen on one more each, its advisory
#: lock holds one more). With the default, 4 relays hold at most 4 × (10 + 2 + 1) = 52
#: of PostgreSQL's default max_connections=100, leaving room for consoles and CLI
#: calls (one each; tests/multi/test_shared_limits.py counts them).
DEFAULT_POOL_SIZE = 10
POOL_WAIT = 30.0  # seconds a store waits for a free pooled connection (the pool busy)
#: Seconds a store waits for a connection the pool must make (a free slot, no idle
#: connection) before it says the server is unavailable. A local or LAN server
#: accepts a connection in milliseconds, so 3 s is an outage (a host that does not
#: answer: the connect timeout is longer), and 3 s is well inside any SMTP client's
#: patience for a reply (RFC 5321 4.5.3.2: minutes; real clients give up after
#: 30-60 s and send again — duplicates), so the client gets its 4xx, not a timeout.
#: A refused connection is answered sooner: at the pool's first failed attempt.
OUTAGE_WAIT = 3.0
#: Seconds the pool tries to replace a lost connection before it gives up (and frees
#: the slot): its retries back off exponentially, so a long deadline would leave
#: slots waiting minutes for their next attempt after the server is back.
RECONNECT_GIVE_UP = OUTAGE_WAIT
_WAIT_STEP = 0.25  # seconds between looks at the pool while waiting for a connection
_IDLE_LOOK = 0.05  # seconds of a last look for a connection given back, before "unavailable"

# The pool's own warnings (each failed attempt, each broken connection thrown away:
# several a second during an outage, in the driver's raw words) repeat what every
# store call that fails already says in the relay's (StoreUnavailable, masked, one line).
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

_pools: dict[str, ConnectionPool[Any]] = {}
_in_use: dict[str, int] = {}  # connections checked out of each pool (under _pools_lock)
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
                reconnect_timeout=RECONNECT_GIVE_UP,
                # An idle connection is tried before it is handed out: after a restart
                # the idle ones are dead, and a store must not get one (and a 4xx).
                check=ConnectionPool.check_connection,
                name="smtpplus",
                configure=configure,
                kwargs={
                    "autocommit": True,
                    "connect_timeout": CONNECT_TIMEOUT,
                    "application_name": "smtpplus",
                    "options": SESSION_OPTIONS,
                },
            )
            _pools[location] = pool
            _in_use[location] = 0
        return pool


def checkout(location: str) -> psycopg.Connection[Any]:
    """A connection from this process's pool for ``location``, or StoreUnavailable.

    A busy pool (every connection checked out, the server up) is waited for up to
    :data:`POOL_WAIT`. A pool with room that cannot hand one out is making one: if an
    attempt fails meanwhile (refused, the server shutting down or starting) or none
    succeeds within :data:`OUTAGE_WAIT`, the server is unavailable — the caller
    answers its 4xx now, not when a client has long given up."""
    pool = pool_for(location)
    started = time.monotonic()
    failures = _connect_failures(pool)
    while True:
        try:
            raw = pool.getconn(timeout=_WAIT_STEP)
        except PoolTimeout:
            waited = time.monotonic() - started
            with _pools_lock:
                busy = _in_use.get(location, 0) >= pool.max_size
            if _connect_failures(pool) > failures or (waited >= OUTAGE_WAIT and not busy):
                # A connection given back between the timeout and the look at _in_use
                # waits in the pool: the pool had room because it had one, not because
                # the server is gone.
                given_back = _idle_one(pool)
                if given_back is None:
                    raise StoreUnavailable(
                        f"store {masked(location)} is unavailable (no connection to the server) "
                        "— check that the PostgreSQL server is running and --db is right"
                    ) from None
                raw = given_back
            elif waited >= POOL_WAIT:
                raise StoreUnavailable(
                    f"store {masked(location)}: no free connection in the pool after {POOL_WAIT:.0f} s — "
                    "raise store_pool_size (and the server's max_connections)"
                ) from None
            else:
                continue
        except psycopg.Error as exc:
            raise translate(exc, location) from None
        with _pools_lock:
            _in_use[location] = _in_use.get(location, 0) + 1
        return raw


def _idle_one(pool: ConnectionPool[Any]) -> psycopg.Connection[Any] | None:
    """A connection the pool holds ready right now, or None."""
    try:
        return pool.getconn(timeout=_IDLE_LOOK)
    except PoolTimeout:
        return None


def give_back(location: str, raw: psycopg.Connection[Any]) -> None:
    """Return a connection :func:`checkout` gave (a broken one the pool throws away)."""
    with _pools_lock:
        pool = _pools.get(location)
    try:
        if pool is None:  # the pool was closed meanwhile
            raw.close()
        else:
            pool.putconn(raw)
    finally:
        # Counted as in use until the pool has it back: a waiter that looks meanwhile
        # sees a busy pool, not one with room that cannot connect.
        with _pools_lock:
            if location in _in_use:
                _in_use[location] = max(0, _in_use[location] - 1)


def _connect_failures(pool: ConnectionPool[Any]) -> int:
    """How many times the pool has failed to connect (psycopg-pool's own count)."""
    return int(pool.get_stats().get("connections_errors", 0))


def close_pool(location: str) -> None:
    """Close this process's pool for ``location`` (its connections end)."""
    with _pools_lock:
        pool = _pools.pop(location, None)
        _in_use.pop(location, None)
        _migrated.discard(location)
    if pool is not None:
        with contextlib.suppress(Exception):
            pool.close(timeout=5)


def close_pools() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
        _in_use.clear()
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
    raw = checkout(location)
    return PgConnection(
        raw, location, release=lambda conn: give_back(location, conn), reopen=lambda: checkout(location)
    )


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


__all__ = [
    "DEFAULT_POOL_SIZE",
    "PgAsyncStore",
    "checkout",
    "close_pool",
    "close_pools",
    "give_back",
    "open_pooled",
    "pool_for",
    "set_pool_size",
]
