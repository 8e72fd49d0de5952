"""The SQLite backend's change feeds: ``PRAGMA data_version`` of the caller's own
connection (a cheap read that changes whenever another connection commits), polled
every ``poll`` seconds in ``wait``. The protocols they satisfy, and what
``changed()`` / ``wait()`` promise, are in :mod:`relay.store.changes`.
"""

from __future__ import annotations

import asyncio
import time

from relay.store.bridge import AsyncStore
from relay.store.changes import DEFAULT_POLL, ChangeFeed, SyncChangeFeed
from relay.store.connection import Connection
from relay.store.sqlite.db import data_version, store_errors


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
