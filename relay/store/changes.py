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

The SQLite backend (:mod:`relay.store.sqlite.changes`) answers with
``PRAGMA data_version`` on the caller's own connection (a cheap read that changes
whenever another connection commits), polled every ``poll`` seconds in ``wait``. A
PostgreSQL backend will answer from LISTEN/NOTIFY (``changed()`` then reads a flag
the listener sets, and falls back to polling while the listening connection is down)
— behind the same two protocols. A backend hands out its feeds
(``Backend.change_feed`` / ``Backend.async_change_feed``).

This module imports no driver.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

DEFAULT_POLL = 0.05  # seconds between two looks while waiting (SQLite: one PRAGMA)
# What a backend that can say what a commit wrote (PostgreSQL's notifications) says of
# commits that wrote new mail only: see announced_as_intake.
INTAKE = "intake"
# … and of commits that wrote a relay's heartbeat only: no mail, no control either.
BEAT = "beat"


@contextlib.contextmanager
def announced_as_intake(db: Any) -> Iterator[None]:
    """The commits made on ``db`` inside wrote new mail only (messages, their bodies,
    recipients and events — a relay's group commit): a backend whose change feed can
    say so does (PostgreSQL: a note in the notification), so a reader waiting for
    other changes (a paused engine waits for its controls) skips its look at the
    store. SQLite's feed cannot tell: nothing changes there."""
    with _announced(db, INTAKE):
        yield


@contextlib.contextmanager
def announced_as_beat(db: Any) -> Iterator[None]:
    """The commits made on ``db`` inside wrote a relay's heartbeat row only (every
    second per relay): for the readers of :func:`announced_as_intake` it changes
    nothing they wait for — a paused engine's controls, the queue under its claim
    floors (relay.store.claim_floors)."""
    with _announced(db, BEAT):
        yield


@contextlib.contextmanager
def _announced(db: Any, note: str) -> Iterator[None]:
    announcing = getattr(db, "announcing", None)
    if announcing is None:
        yield
        return
    with announcing(note):
        yield


class ChangeFeed(Protocol):
    """Async: has another process committed since I last asked?"""

    async def changed(self) -> bool: ...

    async def wait(self, seconds: float) -> bool: ...


class SyncChangeFeed(Protocol):
    """The same for a thread with its own connection (the console's watcher)."""

    def changed(self) -> bool: ...

    def wait(self, seconds: float) -> bool: ...
