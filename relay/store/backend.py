"""The store backends, and which one a ``--db`` location names.

A location without ``://`` is a SQLite file (:mod:`relay.store.sqlite`); a
``postgresql://`` URL names the PostgreSQL backend (:mod:`relay.store.postgres`).
Each backend is one package with a ``backend`` module whose ``BACKEND`` implements
:class:`relay.store.interfaces.Backend`; it is imported on first use, so a SQLite
relay never loads a PostgreSQL driver. An open connection names its backend too
(``db.dialect``): :func:`backend_of`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from relay.store.errors import StoreCorrupt, StoreError, StoreUnavailable

if TYPE_CHECKING:
    from relay.store.connection import Connection
    from relay.store.interfaces import Backend

__all__ = [
    "BACKEND_MODULES",
    "backend_for",
    "backend_named",
    "backend_of",
    "is_corrupt",
    "loaded_backends",
    "store_error_for",
    "store_errors",
]

# Backend name (= a connection's dialect) -> the module holding its BACKEND.
BACKEND_MODULES: dict[str, str] = {
    "sqlite": "relay.store.sqlite.backend",
    "postgresql": "relay.store.postgres.backend",
}

# URL schemes -> backend name.
SCHEMES: dict[str, str] = {"postgresql": "postgresql", "postgres": "postgresql"}

_loaded: dict[str, Backend] = {}


def backend_named(name: str) -> Backend:
    """The backend called ``name`` (``"sqlite"``, ``"postgresql"``); ImportError when
    it (or its driver) is not installed."""
    found = _loaded.get(name)
    if found is None:
        found = _loaded[name] = importlib.import_module(BACKEND_MODULES[name]).BACKEND
    return found


def loaded_backends() -> list[Backend]:
    """The backends imported so far (SQLite at least, once any store was opened)."""
    return list(_loaded.values())


def shown(location: str | os.PathLike[str]) -> str:
    """``location`` fit for a message: a URL's password replaced by ``***`` (also in a
    URL that went through ``pathlib.Path``, and in ``?password=``)."""
    from relay.store.postgres.location import masked  # text only: loads no driver

    return masked(location)


def backend_for(location: str | os.PathLike[str]) -> Backend:
    """The backend a ``--db`` location names, or a one-line StoreUnavailable."""
    from relay.store.postgres.location import normalize  # text only: loads no driver

    text = normalize(location)  # a URL that went through pathlib.Path (click.Path) lost a slash
    if "://" not in text:
        return backend_named("sqlite")
    scheme = text.split("://", 1)[0].lower()
    name = SCHEMES.get(scheme)
    if name is None:
        raise StoreUnavailable(
            f"store {shown(text)}: {scheme}:// is no kind of store smtpplus knows — "
            "use a file path (SQLite) or a postgresql:// URL for --db / SMTPPLUS_DB"
        )
    try:
        return backend_named(name)
    except ImportError as exc:
        raise StoreUnavailable(
            f"store {shown(text)}: the PostgreSQL backend is not available in this smtpplus ({exc}) — "
            "install it, or use a SQLite file path for --db / SMTPPLUS_DB"
        ) from None


def backend_of(db: Connection) -> Backend:
    """The backend an open connection belongs to."""
    return backend_named(db.dialect)


def store_error_for(exc: BaseException, location: str | os.PathLike[str] | None = None) -> StoreError | None:
    """``exc`` as the store's own error (itself, or its translation by a backend in
    use), or None when it is no store error: for a top-level handler (the CLI's, the
    console's) that must give one line for a store call made outside the edges."""
    if isinstance(exc, StoreError):
        return exc
    for backend in loaded_backends():
        mine = backend.store_error_for(exc, location)
        if mine is not None:
            return mine
    return None


def is_corrupt(exc: BaseException) -> bool:
    """Whether ``exc`` says the store is damaged (raw from a driver, or translated)."""
    return isinstance(store_error_for(exc), StoreCorrupt)


@contextmanager
def store_errors(location: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Translate any driver error raised inside into the store's own (the edge for
    synchronous callers that read outside a transaction)."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        mine = store_error_for(exc, location)
        if mine is None:
            raise
        raise mine from exc
