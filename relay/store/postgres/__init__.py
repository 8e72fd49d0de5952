"""The PostgreSQL backend (``--db postgresql://user@host:port/dbname``).

- :mod:`.location`: which locations are PostgreSQL's, and how to show one (the
  password masked). Imports no driver.
- :mod:`.connection`: opening a store, the connection adapter the store's operations
  run on (``dialect = "postgresql"``), transactions, error translation.
- :mod:`.schema`: the DDL of every schema version, migrated on open under an
  advisory lock.
- :mod:`.changes`: the change feed from LISTEN/NOTIFY.
- :mod:`.bridge`: the async bridge and the process's connection pool.
- :mod:`.backend`: all of it as a :class:`relay.store.interfaces.Backend`.

Import the submodules (not this package) where psycopg may be loaded: the CLI
imports only :mod:`.location` until a PostgreSQL store is named.
"""
