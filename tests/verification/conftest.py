"""Fixtures for sender verification: the harness's table-driven DNS server on loopback,
and a store with a list and users whose identities start pending."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.dns import DnsServer
from relay.passwords import hash_password
from relay.store import directory


@pytest.fixture
def table_dns() -> Iterator[DnsServer]:
    """A running DNS server (its own thread, so blocking clients and subprocesses can use
    it) with an empty table: every name is NXDOMAIN until set."""
    server = DnsServer().start_thread()
    yield server
    server.stop_thread()


# ---------------------------------------------------------------------------
# A store with pending identities


@pytest.fixture(scope="session")
def password_hash() -> str:
    return hash_password("correct horse battery staple")


@pytest.fixture
def people(db: Any, password_hash: str) -> dict[str, Any]:
    """List ``news`` with user ``alice`` (sender alice@example.com, domain example.org)
    and user ``bob`` (domain example.org too: verification is shared)."""
    directory.create_list(db, "news")
    alice = directory.create_user(
        db,
        list_name="news",
        password_hash=password_hash,
        username="alice",
        senders=["alice@example.com"],
        domains=["example.org"],
    )
    bob = directory.create_user(
        db, list_name="news", password_hash=password_hash, username="bob", domains=["example.org"]
    )
    return {"alice": alice, "bob": bob}
