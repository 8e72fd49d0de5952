"""A real authoritative DNS server for loopback, answering from a table: MX (null MX
included), A, AAAA, TXT (long values split into 255-byte strings, as DKIM keys need),
CNAME and anything else dnspython can parse from text. Tests, the demo and the e2e
bench point the relay's resolver at it (``dns.resolver`` / ``$SMTPPLUS_DNS_RESOLVER``).

    dns = DnsServer({
        "example.test": {"MX": ["10 mx1.example.test", "20 mx2.example.test"]},
        "mx1.example.test": {"A": "127.0.0.2"},
        "null.example.test": {"MX": "0 ."},
    })
    await dns.start()                 # UDP and TCP on one 127.0.0.1 port (dns.port)
    dns.set("mx1.example.test", "A", "127.0.0.3", ttl=5)   # change it while running
    dns.behave("slow.example.test", "silent")              # never answers: a timeout
    await dns.stop()

It is authoritative (AA) for its zones — by default the root, so for every name: a name
with no records under a zone is NXDOMAIN, a name with records of other types (or only
names below it) is NODATA; both carry the zone's SOA, whose minimum (``negative_ttl``)
is how long a resolver may cache the negative answer. A name outside every zone gets
REFUSED. A UDP answer over 512 bytes (or the client's EDNS size) is truncated (TC) so
the client asks again over TCP; ``behave(name, "truncate")`` forces that for a name.

``start_thread()`` / ``stop_thread()`` run it on a loop of its own in a thread, for
blocking clients and subprocesses. Every query is logged in ``queries``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.ANY.TXT import TXT

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TTL = 300
NEGATIVE_TTL = 60
UDP_LIMIT = 512  # without EDNS (RFC 1035 §4.2.1)
MAX_CNAME_CHAIN = 8
BEHAVIOURS = ("silent", "servfail", "refused", "truncate")

RecordValues = str | Iterable[str]


class Query(NamedTuple):
    name: str  # as asked, lower case, no final dot (IDN names in their A-label form)
    rdtype: str  # "MX", "A", "TXT", …
    transport: str  # "udp" | "tcp"


class DnsServer:
    """See the module docstring. ``records``: name → type → value or values (text as in a
    zone file, absolute names without the final dot; a TXT value is the whole string)."""

    def __init__(
        self,
        records: Mapping[str, Mapping[str, RecordValues]] | None = None,
        *,
        zones: Iterable[str] = (".",),
        ttl: int = DEFAULT_TTL,
        negative_ttl: int = NEGATIVE_TTL,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.queries: list[Query] = []
        self.errors: list[str] = []  # answers that failed to build (answered SERVFAIL)
        self.host = DEFAULT_HOST
        self.port = 0
        self._lock = threading.RLock()  # the table may change from another thread
        self._zones = [_name(zone) for zone in zones]
        self._records: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rrset.RRset]] = {}
        self._behaviours: dict[dns.name.Name, str] = {}
        self._udp: Any = None
        self._tcp: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        for name, types in (records or {}).items():
            for rdtype, values in types.items():
                self.set(name, rdtype, *([values] if isinstance(values, str) else values))

    # -- the table ---------------------------------------------------------

    def set(self, name: str, rdtype: str, *values: str, ttl: int | None = None) -> None:
        """Replace ``name``'s records of ``rdtype`` with ``values`` (none: remove them)."""
        owner, kind = _name(name), dns.rdatatype.from_text(rdtype)
        rdatas = [_rdata(kind, value) for value in values]
        with self._lock:
            types = self._records.setdefault(owner, {})
            if rdatas:
                types[kind] = dns.rrset.from_rdata_list(owner, self.ttl if ttl is None else ttl, rdatas)
            else:
                types.pop(kind, None)
            if not types:
                del self._records[owner]

    def add(self, name: str, rdtype: str, value: str, ttl: int | None = None) -> None:
        """Add one record to ``name``'s records of ``rdtype``."""
        owner, kind = _name(name), dns.rdatatype.from_text(rdtype)
        with self._lock:
            current = self._records.get(owner, {}).get(kind)
            values = [] if current is None else [_text(rdata) for rdata in current]
            keep_ttl = ttl if ttl is not None else (current.ttl if current is not None else None)
        self.set(name, rdtype, *values, value, ttl=keep_ttl)

    def remove(self, name: str) -> None:
        """Forget every record of ``name`` (it becomes NXDOMAIN) and its behaviour."""
        owner = _name(name)
        with self._lock:
            self._records.pop(owner, None)
            self._behaviours.pop(owner, None)

    def mail_domain(self, domain: str, *addresses: str, preference: int = 10, ttl: int | None = None) -> str:
        """Publish ``MX preference mx.DOMAIN`` and that host's A/AAAA ``addresses`` (say
        127.0.0.2 for an MX host listening there); returns the host's name."""
        host = f"mx.{_name(domain).to_text(omit_final_dot=True)}"
        self.set(domain, "MX", f"{preference} {host}", ttl=ttl)
        self.set(host, "A", *(a for a in addresses if ":" not in a), ttl=ttl)
        self.set(host, "AAAA", *(a for a in addresses if ":" in a), ttl=ttl)
        return host

    def null_mx(self, domain: str, ttl: int | None = None) -> None:
        """Publish RFC 7505's null MX (``MX 0 .``): the domain accepts no mail."""
        self.set(domain, "MX", "0 .", ttl=ttl)

    def behave(self, name: str, behaviour: str | None) -> None:
        """``silent`` (never answers: the client times out), ``servfail``, ``refused``,
        ``truncate`` (UDP answers carry TC only: the client must use TCP), or None."""
        if behaviour is not None and behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour {behaviour!r}: use one of {', '.join(BEHAVIOURS)} or None")
        owner = _name(name)
        with self._lock:
            if behaviour is None:
                self._behaviours.pop(owner, None)
            else:
                self._behaviours[owner] = behaviour

    def count(self, name: str, rdtype: str | None = None) -> int:
        """How many queries asked for ``name`` (and ``rdtype``, if given)."""
        key = _name(name).to_text(omit_final_dot=True).lower()
        return sum(1 for q in list(self.queries) if q.name == key and rdtype in (None, q.rdtype))

    @property
    def address(self) -> str:
        """``HOST:PORT``, as ``dns.resolver`` and ``$SMTPPLUS_DNS_RESOLVER`` take it."""
        return f"{self.host}:{self.port}"

    @property
    def nameserver(self) -> tuple[str, int]:
        return (self.host, self.port)

    # -- answering -----------------------------------------------------------

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The reply to one query in wire format, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # not a DNS query at all: nothing sensible to answer
        if len(query.question) != 1:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        self.queries.append(
            Query(question.name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(question.rdtype), transport)
        )
        with self._lock:
            behaviour = self._behaviours.get(question.name)
            if behaviour == "silent":
                return None
            response = dns.message.make_response(query)
            if behaviour in ("servfail", "refused"):
                response.set_rcode(dns.rcode.SERVFAIL if behaviour == "servfail" else dns.rcode.REFUSED)
            else:
                try:
                    self._fill(response, question.name, question.rdtype)
                except Exception as exc:  # a table the server cannot render: say so, never hang
                    self.errors.append(f"{question.name} {dns.rdatatype.to_text(question.rdtype)}: {exc!r}")
                    response = dns.message.make_response(query)
                    response.set_rcode(dns.rcode.SERVFAIL)
        wire_out = response.to_wire()
        if transport == "udp":
            limit = max(UDP_LIMIT, query.payload) if query.edns >= 0 else UDP_LIMIT
            if behaviour == "truncate" or len(wire_out) > limit:
                truncated = dns.message.make_response(query)
                truncated.flags |= dns.flags.TC | dns.flags.AA
                return truncated.to_wire()
        return wire_out

    def _fill(self, response: dns.message.Message, qname: dns.name.Name, rdtype: int) -> None:
        zone = self._zone_of(qname)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            types = self._records.get(name, {})
            if name == zone and rdtype == dns.rdatatype.SOA and dns.rdatatype.SOA not in types:
                response.answer.append(self._soa(zone))
                return
            if rdtype in types:
                response.answer.append(types[dns.rdatatype.RdataType(rdtype)])
                return
            cname = types.get(dns.rdatatype.CNAME)
            if cname is None or rdtype == dns.rdatatype.CNAME:
                break
            response.answer.append(cname)
            name = cname[0].target
            next_zone = self._zone_of(name)
            if next_zone is None:
                return  # the chain leaves our zones: the resolver follows it elsewhere
            zone = next_zone
        else:
            return
        if not self._exists(name, zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(self._soa(zone))

    def _zone_of(self, name: dns.name.Name) -> dns.name.Name | None:
        # The closest enclosing zone.
        enclosing = [zone for zone in self._zones if name.is_subdomain(zone)]
        return max(enclosing, key=len, default=None)

    def _exists(self, name: dns.name.Name, zone: dns.name.Name) -> bool:
        # A name exists if it owns records, or names below it do (an empty non-terminal,
        # like _domainkey.example.test when sel._domainkey.example.test has a TXT).
        return name == zone or any(owner.is_subdomain(name) for owner in self._records)

    def _soa(self, zone: dns.name.Name) -> dns.rrset.RRset:
        mname = dns.name.Name(("ns",) + zone.labels) if zone != dns.name.root else _name("ns.invalid")
        rname = dns.name.Name(("hostmaster",) + zone.labels) if zone != dns.name.root else _name("hostmaster.invalid")
        soa = SOA(
            dns.rdataclass.IN, dns.rdatatype.SOA, mname, rname,
            1, 3600, 600, 86400, self.negative_ttl,
        )
        return dns.rrset.from_rdata_list(zone, self.negative_ttl, [soa])

    # -- serving -------------------------------------------------------------

    async def start(self, host: str = DEFAULT_HOST, port: int = 0) -> int:
        """Serve UDP and TCP on ``host``:``port`` (0: one free port for both); returns it."""
        loop = asyncio.get_running_loop()
        self.host = host
        for _ in range(20 if port == 0 else 1):
            transport, _protocol = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port)
            )
            bound = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, host, bound)
            except OSError:
                # The kernel's free UDP port is taken for TCP: let it pick again.
                transport.close()
                continue
            self._udp, self.port = transport, bound
            return bound
        raise OSError(f"could not bind UDP and TCP on one port of {host}")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None

    def start_thread(self, host: str = DEFAULT_HOST, port: int = 0) -> DnsServer:
        """Serve from a thread with its own event loop (for blocking callers); returns self."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="harness-dns", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(host, port), self._loop).result(timeout=10)
        return self

    def stop_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None

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


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.answer(data, "udp")
        if reply is not None:
            self.transport.sendto(reply, addr)


def _name(text: str) -> dns.name.Name:
    # Absolute, whatever the caller wrote; a U-label name is stored in its A-label form.
    return dns.name.from_text(text, origin=dns.name.root)


def _rdata(rdtype: dns.rdatatype.RdataType, value: str) -> dns.rdata.Rdata:
    if rdtype == dns.rdatatype.TXT:
        # The whole value, split into character-strings of at most 255 bytes.
        data = value.encode()
        chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
        return TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)
    return dns.rdata.from_text(dns.rdataclass.IN, rdtype, value, origin=dns.name.root, relativize=False)


def _text(rdata: dns.rdata.Rdata) -> str:
    if isinstance(rdata, TXT):
        return b"".join(rdata.strings).decode()
    return rdata.to_text()
