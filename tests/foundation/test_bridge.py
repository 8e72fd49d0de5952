"""The async bridge's shortcut (SQLite): a short look without a hand-off when the
connection is free, else after the job that holds it, on the store thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from relay.store import AsyncStore, StoreError
from relay.store.connection import Connection


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
