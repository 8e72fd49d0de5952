"""A real authoritative DNS server on 127.0.0.1 (harness.dns) and a clock tests move."""

from __future__ import annotations

import pytest

from harness.dns import DnsServer


class Clock:
    """A monotonic clock that moves only when told (TTL expiry without waiting)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def dns_server(dns: DnsServer) -> DnsServer:
    return dns  # tests/conftest.py's server


@pytest.fixture
def clock() -> Clock:
    return Clock()
