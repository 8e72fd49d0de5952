"""The store contract: every backend passes the same tests.

``backend`` is parametrized by backend name (``BACKENDS`` below): ``"sqlite"`` (a
file in a fresh directory) and ``"postgresql"`` (a database per test of a private
cluster, tests/pg.py); each function makes a fresh store and says how to make it
refuse to grow. Each :class:`Case` opens that store through the backend
(:class:`relay.store.interfaces.Backend`); ``conn`` / ``db`` are an open connection to
it. The tests use the interfaces only — ``ops(db).queue.dispatch_round(db, …)``, the
store's own errors — and the data types of the operation modules. What only one
backend can show (a query plan, a file lock, PRAGMAs) stays out of this package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.store.backend import backend_named, backend_of
from relay.store.interfaces import Backend
from tests.pg import Cluster, find_bindir


@dataclass
class Case:
    backend: Backend
    location: Any  # what --db would name: a file path, or a URL
    # Makes the store refuse to grow on this connection (the next big write is "full").
    fill_up: Callable[[Any], None]
    # Where no store is: opening it with create=False is refused (a file in a missing
    # directory; a database the server does not have).
    missing: Any = None

    def open(self) -> Any:
        """Another connection to this case's store (tests close it)."""
        return self.backend.open(self.location)


def _sqlite_fill_up(db: Any) -> None:
    # A real SQLITE_FULL: this connection may not grow the file past its pages now.
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")


def _sqlite(where: Path) -> Case:
    return Case(backend_named("sqlite"), where / "contract.db", _sqlite_fill_up, where / "missing" / "nothing.db")


def _postgresql(where: Path) -> Case:
    # A database of this process's private cluster (tests/pg.py: one per xdist worker,
    # started on first use), cloned from a template that has the schema.
    from tests.pg import NoServer, session_cluster

    try:
        cluster = session_cluster()
    except NoServer as exc:
        pytest.fail(str(exc), pytrace=False)
    return Case(backend_named("postgresql"), cluster.new_database(), cluster.fill_up, cluster.url("no_such_database"))


# Backend name -> a fresh store of that backend (given a new empty directory).
BACKENDS: dict[str, Callable[[Path], Case]] = {"sqlite": _sqlite, "postgresql": _postgresql}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def conn(backend: Case) -> Iterator[Any]:
    db = backend.open()
    yield db
    db.close()


@pytest.fixture
def db(conn: Any) -> Any:
    return conn


def ops(db: Any) -> Backend:
    """The backend ``db`` belongs to: its interfaces are what the tests call."""
    return backend_of(db)


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A cluster of this test's own, to stop and start (the session's stays up)."""
    bindir, source = find_bindir()
    cluster = Cluster(bindir, source).start()
    yield cluster
    cluster.stop()
