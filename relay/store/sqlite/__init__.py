"""The SQLite backend: everything that knows the store is a SQLite file.

- :mod:`relay.store.sqlite.db` — opening (pragmas, migrations), transactions, backup,
  the async bridge (:class:`AsyncStore`) and the translation of ``sqlite3`` errors
  into the store's own (:mod:`relay.store.errors`);
- :mod:`relay.store.sqlite.schema` — the schema's DDL and its migrations
  (``PRAGMA user_version``);
- :mod:`relay.store.sqlite.changes` — the change feed (``PRAGMA data_version``);
- :mod:`relay.store.sqlite.lock` — the relay's OS lock beside the store file;
- :mod:`relay.store.sqlite.check` — ``PRAGMA quick_check`` with progress.

Nothing outside this package imports ``sqlite3`` (tests/test_boundaries.py).
"""
