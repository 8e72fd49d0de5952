"""The async bridge's shortcuts (SQLite): a write on the caller's thread with only its
COMMIT on a thread, a short look without a hand-off — and the store thread whenever
the connection or the write lock is not free, or a try there failed."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from relay.store import AsyncStore, StoreError, open_store, transaction
from relay.store.connection import Connection


def _rows(path: Path) -> list[int]:
    db = open_store(path, create=False)
    try:
        return [r[0] for r in db.execute("SELECT n FROM scratch_bridge ORDER BY n")]
    finally:
        db.close()


def _make_table(db: Connection) -> None:
    db.execute("CREATE TABLE scratch_bridge(n INTEGER NOT NULL REFERENCES scratch_parent(id) DEFERRABLE INITIALLY DEFERRED)")


def _make_tables(db: Connection) -> None:
    db.execute("CREATE TABLE scratch_parent(id INTEGER PRIMARY KEY)")
    db.execute("INSERT INTO scratch_parent(id) VALUES (1), (2), (3)")
    _make_table(db)


class Insert:
    """``fn`` for run_committed: insert ``n`` (in its own transaction when none is
    open), noting the thread of every call."""

    def __init__(self, n: int, fail: bool = False) -> None:
        self.n, self.fail = n, fail
        self.threads: list[str] = []

    def __call__(self, db: Connection) -> int:
        self.threads.append(threading.current_thread().name)
        with transaction(db):
            db.execute("INSERT INTO scratch_bridge(n) VALUES (?)", (self.n,))
            if self.fail:
                raise ValueError("the caller's own error")
        return self.n


async def test_a_write_runs_on_the_callers_thread_and_is_committed_when_awaited(store_path: Path) -> None:
    async with AsyncStore(store_path) as store:
        await store.run(_make_tables)
        insert = Insert(1)
        assert await store.run_committed(insert) == 1
        assert _rows(store_path) == [1]  # another connection sees it: committed
    assert insert.threads == [threading.current_thread().name]


async def test_a_write_waits_on_the_store_thread_while_another_connection_writes(store_path: Path) -> None:
    async with AsyncStore(store_path) as store:
        await store.run(_make_tables)
        other = open_store(store_path, create=False)
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        insert = Insert(2)
        write = asyncio.ensure_future(store.run_committed(insert))
        await asyncio.sleep(0.2)
        assert not write.done()  # waiting on busy_timeout, on the store thread, not on the loop
        other.execute("ROLLBACK")
        other.close()
        assert await write == 2
    assert insert.threads == [f"smtpplus-store-{store_path.name}"]
    assert _rows(store_path) == [2]


async def test_a_failed_try_on_the_callers_thread_leaves_nothing_and_the_store_thread_gives_the_error(store_path: Path) -> None:
    async with AsyncStore(store_path) as store:
        await store.run(_make_tables)
        insert = Insert(3, fail=True)
        with pytest.raises(ValueError, match="the caller's own error"):
            await store.run_committed(insert)
        assert len(insert.threads) == 2 and insert.threads[1] == f"smtpplus-store-{store_path.name}"
        assert _rows(store_path) == []
        assert await store.run_committed(Insert(1)) == 1  # the connection is free again
    assert _rows(store_path) == [1]


async def test_a_failed_commit_is_rolled_back_and_tried_once_more_on_the_store_thread(store_path: Path) -> None:
    async with AsyncStore(store_path) as store:
        await store.run(_make_tables)
        insert = Insert(42)  # no parent 42: the deferred foreign key fails the COMMIT
        with pytest.raises(StoreError):
            await store.run_committed(insert)
        assert insert.threads == [threading.current_thread().name, f"smtpplus-store-{store_path.name}"]
        assert _rows(store_path) == []
        assert await store.run_committed(Insert(3)) == 3
    assert _rows(store_path) == [3]


async def test_a_short_look_waits_for_the_job_that_holds_the_connection(store_path: Path) -> None:
    async with AsyncStore(store_path) as store:
        release, order = threading.Event(), []

        def slow(db: Connection) -> None:
            release.wait(10)
            order.append("slow job")

        def look(db: Connection) -> str:
            order.append("look")
            return threading.current_thread().name

        job = asyncio.ensure_future(store.run(slow))
        await asyncio.sleep(0.1)  # the store thread holds the connection
        quick = asyncio.ensure_future(store.run_quick(look))
        await asyncio.sleep(0.1)
        assert order == []
        release.set()
        await job
        assert await quick == f"smtpplus-store-{store_path.name}"
        assert order == ["slow job", "look"]
        assert await store.run_quick(look) == threading.current_thread().name  # free: no hand-off


async def test_a_short_look_comes_out_as_the_store_error_run_gives(store_path: Path) -> None:
    async with AsyncStore(store_path) as store:
        with pytest.raises(StoreError):
            await store.run_quick(lambda db: db.execute("SELECT * FROM no_such_table"))
        with pytest.raises(StoreError):
            await store.run(lambda db: db.execute("SELECT * FROM no_such_table"))
