"""The shared SQLite store. All SQL of the project lives in this package.

Functions here take a ``sqlite3.Connection`` opened by :func:`open_store` and are
synchronous; async code runs them on the store's own thread via
:class:`relay.store.db.AsyncStore`.
"""

from relay.store.db import (
    AsyncStore,
    Connection,
    StoreError,
    StoreTooNew,
    backup,
    default_db_path,
    open_store,
    transaction,
)

__all__ = [
    "AsyncStore",
    "Connection",
    "StoreError",
    "StoreTooNew",
    "backup",
    "default_db_path",
    "open_store",
    "transaction",
]
