"""Change feeds: how the delivery engine and the console learn that another process
committed to the store, without knowing how the backend tells.

Two shapes of one idea:

- :class:`ChangeFeed` (async) for the delivery engine, which asks "anything new?"
  once per idle pass of its loop and runs a full round only when the answer is yes.
- :class:`SyncChangeFeed` for the console's watcher thread, same questions.

``changed()`` is true when some *other* connection committed since the last call
(the first call is always true: nothing was seen yet). Its own commits do not count,
so a reader never wakes itself. ``wait(seconds)`` blocks until a change or until
``seconds`` have passed, and says which. Errors are the store's own
(:mod:`relay.store.errors`).

The SQLite backend answers with ``PRAGMA data_version`` on the caller's own
connection (a cheap read that changes whenever another connection commits), polled
every ``poll`` seconds in ``wait``. A PostgreSQL backend will answer from
LISTEN/NOTIFY (``changed()`` then reads a flag the listener sets, and falls back to
polling while the listening connection is down) — behind the same two protocols.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

from relay.store.db import Connection, data_version, store_errors

if TYPE_CHECKING:
    from relay.store.db import AsyncStore

DEFAULT_POLL = 0.05  # seconds between two looks while waiting (SQLite: one PRAGMA)


class ChangeFeed(Protocol):
    """Async: has another process committed since I last asked?"""

    async def changed(self) -> bool: ...

    async def wait(self, seconds: float) -> bool: ...


class SyncChangeFeed(Protocol):
    """The same for a thread with its own connection (the console's watcher)."""

    def changed(self) -> bool: ...

    def wait(self, seconds: float) -> bool: ...


class DataVersionFeed:
    """SQLite, synchronous: ``PRAGMA data_version`` of the caller's connection."""

    def __init__(self, db: Connection, *, poll: float = DEFAULT_POLL) -> None:
        self._db = db
        self._poll = poll
        self._seen: int | None = None

    def changed(self) -> bool:
        with store_errors():
            version = data_version(self._db)
        if version == self._seen:
            return False
        self._seen = version
        return True

    def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.changed():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self._poll, left))
        return True


class AsyncDataVersionFeed:
    """SQLite, async: ``PRAGMA data_version`` on an :class:`AsyncStore`'s own
    connection (one thread hand-off per look), so that store's commits do not count."""

    def __init__(self, store: AsyncStore, *, poll: float = DEFAULT_POLL) -> None:
        self._store = store
        self._poll = poll
        self._seen: int | None = None

    async def changed(self) -> bool:
        version = await self._store.run(data_version)
        if version == self._seen:
            return False
        self._seen = version
        return True

    async def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not await self.changed():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(self._poll, left))
        return True


def change_feed(db: Connection, *, poll: float = DEFAULT_POLL) -> SyncChangeFeed:
    """The change feed of a synchronous connection (the backend picks the kind)."""
    return DataVersionFeed(db, poll=poll)


def async_change_feed(store: AsyncStore, *, poll: float = DEFAULT_POLL) -> ChangeFeed:
    """The change feed of an :class:`AsyncStore` (the backend picks the kind)."""
    return AsyncDataVersionFeed(store, poll=poll)
