"""Fixtures for sender verification: a small table-driven DNS server on loopback,
and a store with a list and users whose identities start pending."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from dns.rdtypes.ANY.TXT import TXT

from relay.passwords import hash_password
from relay.store import directory

# ---------------------------------------------------------------------------
# A DNS server that answers from a table


@dataclass
class Entry:
    """How the server answers for one name.

    kind: ``txt`` (NOERROR with ``values``; none = no TXT), ``nxdomain``, ``servfail``,
    ``silent`` (never answers: the timeout case). ``truncate_udp`` answers UDP with the
    TC flag and nothing else, so the client must retry over TCP.
    """

    kind: str = "txt"
    values: list[str] = field(default_factory=list)
    truncate_udp: bool = False


class TableDns:
    """UDP and TCP on the same 127.0.0.1 port (bound to port 0), answering from ``table``.
    Runs its own event loop in a thread so blocking clients and subprocesses can use it."""

    def __init__(self, table: dict[str, Entry]) -> None:
        self.table = table
        self.queries: list[tuple[str, str]] = []  # (name, "udp" | "tcp")
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="table-dns", daemon=True)
        self._udp: Any = None
        self._tcp: asyncio.Server | None = None

    def set(self, name: str, kind: str = "txt", *values: str, truncate_udp: bool = False) -> None:
        """Answer for ``name``: see :class:`Entry` for the kinds."""
        self.table[name] = Entry(kind, list(values), truncate_udp)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TableDns:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._bind(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._udp is not None:
                self._udp.close()
            if self._tcp is not None:
                self._tcp.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _bind(self) -> None:
        # The TCP listener must share the UDP port; if the kernel's pick is taken for
        # TCP, let it pick again.
        for _ in range(20):
            transport, _protocol = await self._loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=("127.0.0.1", 0)
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, "127.0.0.1", port)
            except OSError:
                transport.close()
                continue
            self._udp, self.port = transport, port
            return
        raise RuntimeError("could not bind UDP and TCP on one loopback port")

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        self.queries.append((name, transport))
        response = dns.message.make_response(query)
        entry = self.table.get(name, Entry("nxdomain"))
        if entry.kind == "silent":
            return None
        if entry.kind == "nxdomain":
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif entry.kind == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif entry.truncate_udp and transport == "udp":
            response.flags |= dns.flags.TC
        elif entry.values and question.rdtype == dns.rdatatype.TXT:
            rdatas = [TXT(dns.rdataclass.IN, dns.rdatatype.TXT, _chunks(v.encode())) for v in entry.values]
            response.answer.append(dns.rrset.from_rdata_list(question.name, 300, rdatas))
        return response.to_wire()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(2), "big")
                reply = self.answer(await reader.readexactly(length), "tcp")
                if reply is None:
                    await reader.read()  # never answer; wait for the client to give up
                    return
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _chunks(data: bytes) -> list[bytes]:
    # A TXT character-string holds at most 255 bytes; long values are split.
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: TableDns) -> None:
        self.server = server
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.answer(data, "udp")
        if reply is not None:
            self.transport.sendto(reply, addr)


@pytest.fixture
def table_dns() -> Iterator[TableDns]:
    """A running DNS server with an empty table (every name is NXDOMAIN until set)."""
    server = TableDns({}).start()
    yield server
    server.stop()


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
