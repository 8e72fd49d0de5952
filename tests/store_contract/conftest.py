"""The store contract: every backend passes the same tests.

``backend`` is parametrized by backend name; the PostgreSQL issue adds ``"postgresql"``
to ``BACKENDS`` below with its own :class:`Case` (a server from the machine's
packages, a database per test). Each case knows how to open a fresh store and how to
provoke the failures that only a backend can (a full store); the tests themselves
use the interfaces only (:mod:`relay.store.interfaces`) and the store's own errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.store.backend import backend_named
from relay.store.interfaces import Backend


@dataclass
class Case:
    backend: Backend
    location: Path
    # Makes the store refuse to grow on this connection (the next big write is "full").
    fill_up: Callable[[Any], None]

    def open(self) -> Any:
        return self.backend.open(self.location)


def _sqlite_fill_up(db: Any) -> None:
    # A real SQLITE_FULL: this connection may not grow the file past its pages now.
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")


def _sqlite(tmp_path: Path) -> Case:
    return Case(backend_named("sqlite"), tmp_path / "contract.db", _sqlite_fill_up)


BACKENDS: dict[str, Callable[[Path], Case]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def conn(backend: Case) -> Iterator[Any]:
    db = backend.open()
    yield db
    db.close()
