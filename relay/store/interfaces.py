"""Typed interfaces of the store: what callers may rely on, whatever the backend.

The first, smaller parts of the store seam (issue 13): settings, the event log and
the change feed, plus :class:`Backend`, which bundles one backend's implementations
and how to open it. The SQLite implementation is behind them today
(:mod:`relay.store.backend`); a PostgreSQL backend adds another ``Backend``, and the
contract tests (``tests/store_contract/``) run against every one.

The operations are the store's module functions, which take the connection first
(``get_setting(db, key)``): a backend's module satisfies the protocol as it is
(mypy checks a module against a protocol), so callers do not change. Errors are the
store's own (:mod:`relay.store.errors`).

This module imports no driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from relay.store.changes import ChangeFeed, SyncChangeFeed

if TYPE_CHECKING:
    from relay.store.events import Event, NewEvent
    from relay.store.sqlite.db import AsyncStore, Connection

__all__ = ["Backend", "ChangeFeed", "EventLog", "Settings", "SyncChangeFeed"]


class Settings(Protocol):
    """Key/value settings (JSON values): runtime controls and relay-published facts."""

    def get_setting(self, db: Connection, key: str, default: Any = None) -> Any: ...

    def get_settings(self, db: Connection, keys: list[str] | None = None) -> dict[str, Any]: ...

    def set_setting(self, db: Connection, key: str, value: Any) -> None: ...

    def seed_setting(self, db: Connection, key: str, value: Any) -> bool:
        """Set ``key`` only when unset; True when it was set."""
        ...

    def delete_setting(self, db: Connection, key: str) -> None: ...


class EventLog(Protocol):
    """The event log: append, read one message's, page through newest first."""

    def record_event(self, db: Connection, event: NewEvent) -> int: ...

    def record_events(self, db: Connection, events: Iterable[NewEvent]) -> None: ...

    def events_for_message(self, db: Connection, message_id: int) -> list[Event]: ...

    def find_events(
        self,
        db: Connection,
        *,
        username: str | None = None,
        kind: str | None = None,
        kinds: Sequence[str] | None = None,
        reason: str | None = None,
        port: int | None = None,
        since: float | None = None,
        until: float | None = None,
        before_id: int | None = None,
        limit: int = 200,
    ) -> list[Event]: ...


class Backend(Protocol):
    """One store backend: how to open it, and its implementations of the interfaces."""

    name: str
    settings: Settings
    events: EventLog

    def open(self, location: str | Path, *, create: bool = True) -> Connection:
        """A synchronous connection (created and migrated when ``create``)."""
        ...

    def transaction(self, db: Connection) -> AbstractContextManager[Connection]:
        """One write transaction (nested use joins the outer one); a driver error
        leaving the outermost one comes out as the store's own."""
        ...

    def async_store(self, location: str | Path) -> AsyncStore:
        """The async bridge (not yet open: ``await store.open()`` or ``async with``)."""
        ...

    def change_feed(self, db: Connection) -> SyncChangeFeed: ...

    def async_change_feed(self, store: AsyncStore) -> ChangeFeed: ...
