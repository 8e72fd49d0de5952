"""The shared store. All SQL of the project lives in this package.

Functions here take a :class:`Connection` opened by :func:`open_store` and are
synchronous; async code runs them on the store's own thread via
:class:`AsyncStore`. Callers name the connection type as ``relay.store.Connection``
and catch the store's own errors (:mod:`relay.store.errors`), never a driver's.

The operation modules (``queue``, ``directory``, ``campaigns``, ``views``, …) are
shared by every backend (:mod:`relay.store.connection` says what SQL they may use);
what is per backend lives in the backend's package — SQLite's is
:mod:`relay.store.sqlite`, the only code that imports ``sqlite3`` — and is reached
through :func:`relay.store.backend.backend_for` (a ``--db`` location) or the
connection's own dialect. The names below dispatch that way.
"""

from __future__ import annotations

import os
from typing import Any

from relay.store.backend import backend_for, backend_of, is_corrupt, store_error_for, store_errors
from relay.store.bridge import AsyncStore, on_corruption
from relay.store.connection import Connection, transaction
from relay.store.errors import (
    AlreadyExists,
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    RelayAlreadyRunning,
    StoreBusy,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreTooNew,
    StoreUnavailable,
)
from relay.store.sqlite.db import corrupt_message, default_db_path

__all__ = [
    "AlreadyExists",
    "AsyncStore",
    "Conflict",
    "Connection",
    "IntegrityError",
    "InvalidInput",
    "NotFound",
    "RelayAlreadyRunning",
    "StoreBusy",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreTooNew",
    "StoreUnavailable",
    "backend_for",
    "backup",
    "corrupt_message",
    "default_db_path",
    "is_corrupt",
    "on_corruption",
    "open_store",
    "store_error_for",
    "store_errors",
    "transaction",
]


def open_store(location: str | os.PathLike[str], *, create: bool = True, **options: Any) -> Connection:
    """Open (and create or upgrade, when ``create``) the store ``location`` names:
    a file path (SQLite) or a ``postgresql://`` URL. ``options`` go to the backend
    (SQLite: ``migrate_to``, ``create_parent``)."""
    return backend_for(location).open(location, create=create, **options)


def backup(db: Connection, target: str | os.PathLike[str]) -> None:
    """A consistent copy of the live store ``db`` is open on, written to ``target``."""
    backend_of(db).backup(db, target)
