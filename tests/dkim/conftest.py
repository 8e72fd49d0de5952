"""DKIM fixtures: the harness's DNS server on loopback (UDP and TCP on 127.0.0.1)
publishing keys as TXT records, and a dkimpy ``dnsfunc`` that asks it over the wire."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest

from harness.dns import DnsServer


@pytest.fixture
def dkim_dns() -> Iterator[DnsServer]:
    """A running DNS server (its own thread) with nothing published."""
    server = DnsServer().start_thread()
    yield server
    server.stop_thread()


def port_of(server: Any) -> int:
    return int(server.address.rpartition(":")[2])


def asked(server: Any, name: str) -> bool:
    return any(query[0] == name for query in list(server.queries))


def dkimpy_dnsfunc(server: Any) -> Callable[..., bytes | None]:
    """dkimpy's TXT lookup, answered by ``server`` through real queries (dnspython: UDP,
    TCP when the answer is truncated)."""

    def get_txt(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        query = dns.message.make_query(text, dns.rdatatype.TXT)
        response, _ = dns.query.udp_with_fallback(query, "127.0.0.1", port=port_of(server), timeout=timeout)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(next(iter(rrset)).strings)
        return None

    return get_txt
