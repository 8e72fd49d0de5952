"""DKIM fixtures: the loopback DNS server of the verification tests (real UDP/TCP on
127.0.0.1) publishing keys, and a dkimpy ``dnsfunc`` that asks it over the wire."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.verification.conftest import TableDns


@pytest.fixture
def table_dns() -> Iterator[TableDns]:
    server = TableDns({}).start()
    yield server
    server.stop()


def dkimpy_dnsfunc(server: TableDns) -> Callable[..., bytes | None]:
    """dkimpy's TXT lookup, answered by ``server`` through a real UDP query (dnspython)."""

    def get_txt(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        query = dns.message.make_query(text, dns.rdatatype.TXT)
        response = dns.query.udp(query, "127.0.0.1", port=server.port, timeout=timeout)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(next(iter(rrset)).strings)
        return None

    return get_txt
