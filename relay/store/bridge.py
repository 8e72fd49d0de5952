"""The async bridge: synchronous store functions run on one dedicated connection
thread, whatever the backend.

``await store.run(fn, *args)`` calls ``fn(db, *args)`` on that thread, so a whole
unit of work (say, a group commit of many messages) costs one thread hand-off. The
thread and its connection are this class's own (no private API of any library); the
backend that ``location`` names opens the connection and translates its driver's
errors into the store's own (:mod:`relay.store.errors`). When a store turns out to be
corrupt, the listeners registered with :func:`on_corruption` hear it (the relay stops
rather than answer 451 to every client for ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from relay.store.errors import StoreCorrupt, StoreError

if TYPE_CHECKING:
    from relay.store.connection import Connection
    from relay.store.interfaces import Backend

T = TypeVar("T")

__all__ = ["AsyncStore", "on_corruption"]

# Called (from a store thread) with (store path, error) whenever an AsyncStore meets a
# corrupt store.
_corruption_listeners: list[Callable[[Path, BaseException], None]] = []


def on_corruption(listener: Callable[[Path, BaseException], None]) -> Callable[[], None]:
    """Register ``listener``; returns the function that unregisters it."""
    _corruption_listeners.append(listener)
    return lambda: _corruption_listeners.remove(listener) if listener in _corruption_listeners else None


def _tell_corruption(path: Path, exc: BaseException) -> None:
    for listener in list(_corruption_listeners):
        with contextlib.suppress(Exception):
            listener(path, exc)


class AsyncStore:
    """Runs synchronous store functions on one dedicated connection thread (see the
    module's docstring). ``location`` is what ``--db`` names (a SQLite file)."""

    def __new__(cls, location: str | os.PathLike[str]) -> AsyncStore:
        # A postgresql:// location gets the PostgreSQL bridge (a subclass: its
        # connection comes from the process's pool, store_pool_size), whoever
        # constructs AsyncStore(location).
        if cls is AsyncStore:
            from relay.store.postgres.location import is_postgres  # text only: loads no driver

            if is_postgres(location):
                from relay.store.postgres.bridge import PgAsyncStore

                return super().__new__(PgAsyncStore)
        return super().__new__(cls)

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.location = location
        self.path = Path(location)  # a SQLite file (PgAsyncStore passes its masked URL: display only)
        self._jobs: queue.SimpleQueue[_Job | None] | None = None
        self._thread: threading.Thread | None = None
        self._db: Connection | None = None
        self._backend: Backend | None = None

    async def open(self) -> AsyncStore:
        # Opening (and migrating) happens on the store's thread, off the loop.
        jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        thread = threading.Thread(target=_serve, args=(jobs,), name=f"smtpplus-store-{self.path.name}", daemon=True)
        thread.start()
        self._jobs, self._thread = jobs, thread
        from relay.store.backend import backend_for

        try:
            self._backend = backend_for(self.location)
            self._db = await self._submit(self._backend.open, self.location)
        except BaseException:
            self._stop_thread()
            raise
        return self

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        db = self._db
        if db is None:
            raise StoreError("store is not open")
        try:
            return await self._submit(fn, db, *args, **kwargs)
        except StoreError as exc:  # translated already (by an outermost transaction)
            if isinstance(exc, StoreCorrupt):
                _tell_corruption(self.path, exc)
            raise
        except Exception as exc:
            assert self._backend is not None
            mine = self._backend.store_error_for(exc, self.location)
            if mine is None:  # not a store error: the caller's own
                raise
            if isinstance(mine, StoreCorrupt):
                _tell_corruption(self.path, exc)
            raise mine from exc

    def _submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        if self._jobs is None:
            raise StoreError("store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(Exception):
                await self._submit(db.close)
        self._stop_thread()

    def _stop_thread(self) -> None:
        if self._jobs is not None:
            self._jobs.put(None)  # the thread ends after the jobs before this one
        self._jobs = self._thread = None

    async def __aenter__(self) -> AsyncStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


_Job = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    """The store thread: run each job, hand its outcome back to the job's loop."""
    while (job := jobs.get()) is not None:
        future, fn, args, kwargs = job
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # handed back to the caller, whatever it is
            _settle(future, None, exc)
        else:
            _settle(future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    def apply() -> None:
        if future.done():  # the caller was cancelled meanwhile
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        future.get_loop().call_soon_threadsafe(apply)
