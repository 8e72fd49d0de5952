"""A store file with one list, for the admin operations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from relay.store import directory


@pytest.fixture
def listed(db: Any) -> Any:
    directory.create_list(db, "News")
    return db


@pytest.fixture
def table_dns() -> Iterator[Any]:
    """The harness's table-driven DNS server on loopback (real UDP/TCP), in a thread."""
    from harness.dns import DnsServer

    server = DnsServer().start_thread()
    yield server
    server.stop_thread()
