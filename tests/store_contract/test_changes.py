"""The change feed: a commit by another connection is seen, one's own is not."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

from tests.store_contract.conftest import Case

_commits = itertools.count()


def _commit_elsewhere(backend: Case, key: str = "contract.poke") -> None:
    # A new value each time: a write that changes nothing need not count as a change.
    other = backend.open()
    try:
        backend.backend.settings.set_setting(other, key, next(_commits))
    finally:
        other.close()


def test_another_connections_commit_is_seen_once(backend: Case, conn: Any) -> None:
    feed = backend.backend.change_feed(conn)
    assert feed.changed() is True  # nothing seen yet
    assert feed.changed() is False
    _commit_elsewhere(backend)
    assert feed.changed() is True
    assert feed.changed() is False


def test_ones_own_commit_does_not_count(backend: Case, conn: Any) -> None:
    feed = backend.backend.change_feed(conn)
    feed.changed()
    backend.backend.settings.set_setting(conn, "contract.mine", 1)
    assert feed.changed() is False


def test_wait_returns_on_a_commit_or_after_its_time(backend: Case, conn: Any) -> None:
    feed = backend.backend.change_feed(conn)
    feed.changed()
    assert feed.wait(0.1) is False
    writer = threading.Timer(0.05, _commit_elsewhere, args=(backend,))
    writer.start()
    try:
        assert feed.wait(30) is True  # long bound: returns at the commit, not at 30 s
    finally:
        writer.join()


async def test_the_async_feed_sees_others_and_not_its_store(backend: Case) -> None:
    async with backend.backend.async_store(backend.location) as store:
        feed = backend.backend.async_change_feed(store)
        assert await feed.changed() is True
        assert await feed.changed() is False
        await store.run(backend.backend.settings.set_setting, "contract.mine", 1)
        assert await feed.changed() is False
        await asyncio.to_thread(_commit_elsewhere, backend)
        assert await feed.changed() is True
        assert await feed.wait(0.1) is False
        writer = asyncio.get_running_loop().call_later(0.05, _commit_elsewhere, backend)
        try:
            assert await feed.wait(30) is True  # returns at the commit, not at 30 s
        finally:
            writer.cancel()
