"""harness.dns.DnsServer judged by an independent client: dnspython's own queries."""

from __future__ import annotations

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from harness.dns import DnsServer

DKIM_KEY = "v=DKIM1; k=rsa; p=" + "M" * 736  # a 4096-bit RSA key's length


async def ask(server: DnsServer, name: str, rdtype: str, *, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(query, server.host, timeout=5, port=server.port)
    return await dns.asyncquery.udp(query, server.host, timeout=5, port=server.port)


async def test_a_long_txt_value_is_split_in_255_byte_strings_and_comes_over_tcp(dns_server: DnsServer) -> None:
    dns_server.set("sel._domainkey.example.test", "TXT", DKIM_KEY)
    over_udp = await ask(dns_server, "sel._domainkey.example.test", "TXT")
    assert over_udp.flags & dns.flags.TC and not over_udp.answer  # too big for 512 bytes
    over_tcp = await ask(dns_server, "sel._domainkey.example.test", "TXT", tcp=True)
    (rdata,) = over_tcp.answer[0]
    assert [len(s) for s in rdata.strings] == [255, 255, 244]
    assert b"".join(rdata.strings).decode() == DKIM_KEY
    assert over_tcp.flags & dns.flags.AA


async def test_nxdomain_and_nodata_carry_the_soa_for_negative_caching() -> None:
    server = DnsServer({"example.test": {"MX": "10 mx.example.test"}}, zones=["example.test"], negative_ttl=42)
    await server.start()
    try:
        missing = await ask(server, "nope.example.test", "A")
        assert missing.rcode() == dns.rcode.NXDOMAIN
        (soa,) = missing.authority
        assert soa.name.to_text() == "example.test." and soa[0].minimum == 42
        nodata = await ask(server, "example.test", "A")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority
        # An empty non-terminal exists: NODATA, not NXDOMAIN.
        server.set("sel._domainkey.example.test", "TXT", "v=DKIM1; p=")
        assert (await ask(server, "_domainkey.example.test", "TXT")).rcode() == dns.rcode.NOERROR
        # Outside its zones the server is not authoritative.
        assert (await ask(server, "example.org", "A")).rcode() == dns.rcode.REFUSED
        apex = await ask(server, "example.test", "SOA")
        assert apex.answer[0].rdtype == dns.rdatatype.SOA
    finally:
        await server.stop()


async def test_records_change_while_it_runs(dns_server: DnsServer) -> None:
    dns_server.set("example.test", "A", "127.0.0.2", ttl=7)
    first = await ask(dns_server, "example.test", "A")
    assert first.answer[0].ttl == 7 and first.answer[0][0].address == "127.0.0.2"
    dns_server.add("example.test", "A", "127.0.0.3")
    assert sorted(r.address for r in (await ask(dns_server, "example.test", "A")).answer[0]) == ["127.0.0.2", "127.0.0.3"]
    dns_server.remove("example.test")
    assert (await ask(dns_server, "example.test", "A")).rcode() == dns.rcode.NXDOMAIN
    assert [q.transport for q in dns_server.queries] == ["udp"] * 3 and dns_server.count("example.test", "A") == 3


@pytest.mark.parametrize(("behaviour", "rcode"), [("servfail", dns.rcode.SERVFAIL), ("refused", dns.rcode.REFUSED)])
async def test_failing_names(dns_server: DnsServer, behaviour: str, rcode: dns.rcode.Rcode) -> None:
    dns_server.set("example.test", "A", "127.0.0.2")
    dns_server.behave("example.test", behaviour)
    assert (await ask(dns_server, "example.test", "A")).rcode() == rcode
    dns_server.behave("example.test", None)
    assert (await ask(dns_server, "example.test", "A")).rcode() == dns.rcode.NOERROR


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_a_silent_name_never_answers(dns_server: DnsServer, tcp: bool) -> None:
    dns_server.behave("slow.test", "silent")
    with pytest.raises(dns.exception.Timeout):
        await ask_with_timeout(dns_server, "slow.test", tcp=tcp)
    assert dns_server.count("slow.test") == 1


async def ask_with_timeout(server: DnsServer, name: str, *, tcp: bool) -> None:
    query = dns.message.make_query(name, "A")
    if tcp:
        await dns.asyncquery.tcp(query, server.host, timeout=0.3, port=server.port)
    else:
        await dns.asyncquery.udp(query, server.host, timeout=0.3, port=server.port)


async def test_null_mx_cname_and_idn(dns_server: DnsServer) -> None:
    dns_server.null_mx("null.test")
    (mx,) = (await ask(dns_server, "null.test", "MX")).answer[0]
    assert (mx.preference, mx.exchange.to_text()) == (0, ".")
    dns_server.set("www.test", "CNAME", "host.test")
    dns_server.set("host.test", "A", "127.0.0.2")
    chain = await ask(dns_server, "www.test", "A")
    assert [rrset.rdtype for rrset in chain.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    dns_server.set("bücher.test", "A", "127.0.0.3")  # stored in its A-label form
    assert (await ask(dns_server, "xn--bcher-kva.test", "A")).answer[0][0].address == "127.0.0.3"


def test_a_bad_behaviour_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="silent, servfail, refused, truncate"):
        DnsServer().behave("x.test", "sometimes")


def test_it_serves_blocking_clients_from_a_thread() -> None:
    import dns.query

    server = DnsServer({"example.test": {"TXT": ["hello"]}}).start_thread()
    try:
        reply = dns.query.udp(dns.message.make_query("example.test", "TXT"), server.host, timeout=5, port=server.port)
        assert reply.answer[0][0].strings == (b"hello",)
    finally:
        server.stop_thread()
