"""The shared store. All SQL of the project lives in this package.

Functions here take a :data:`Connection` opened by :func:`open_store` and are
synchronous; async code runs them on the store's own thread via
:class:`relay.store.AsyncStore`. Callers name the connection type as
``relay.store.Connection`` and catch the store's own errors
(:mod:`relay.store.errors`), never a driver's: today's backend is SQLite
(:mod:`relay.store.sqlite` is its package), and nothing outside this package imports
``sqlite3``.
"""

from relay.store.errors import (
    AlreadyExists,
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    StoreBusy,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreTooNew,
    StoreUnavailable,
)
from relay.store.sqlite.db import (
    AsyncStore,
    Connection,
    backup,
    corrupt_message,
    default_db_path,
    is_corrupt,
    on_corruption,
    open_store,
    store_error_for,
    store_errors,
    transaction,
)

__all__ = [
    "AlreadyExists",
    "AsyncStore",
    "Conflict",
    "Connection",
    "IntegrityError",
    "InvalidInput",
    "NotFound",
    "StoreBusy",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreTooNew",
    "StoreUnavailable",
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
