"""`domains check`: verification state, SPF for the relay's public address, DMARC —
looked up in a real DNS server on loopback, through the library and the real CLI."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.dns import DnsServer
from relay.admin import dkim as dkim_admin
from relay.domains import Lookups, check_domain, parse_public_addresses, spf_result
from relay.nameserver import Resolver, parse_resolver
from relay.passwords import hash_password
from relay.policy import PolicyError
from relay.store import directory
from relay.store.verification import approve

RELAY = "203.0.113.5"


@pytest.fixture
def zone() -> Iterator[DnsServer]:
    server = DnsServer().start_thread()
    yield server
    server.stop_thread()


def lookups(server: DnsServer, timeout: float = 5.0) -> Lookups:
    return Lookups(Resolver(server.host, server.port), timeout)


def spf(server: DnsServer, domain: str = "example.test", address: str = RELAY) -> str:
    return str(spf_result(domain, address, lookups(server)))


@pytest.mark.parametrize(
    ("record", "result"),
    [
        (f"v=spf1 ip4:{RELAY} -all", "pass"),
        ("v=spf1 ip4:203.0.113.0/24 -all", "pass"),
        ("v=spf1 ip4:198.51.100.1 -all", "fail"),
        ("v=spf1 ip4:198.51.100.1 ~all", "softfail"),
        ("v=spf1 ip4:198.51.100.1 ?all", "neutral"),
        ("v=spf1 ip4:198.51.100.1", "neutral"),
        (f"v=spf1 -ip4:{RELAY} +all", "fail"),
        ("v=spf1 ip6:2001:db8::/32 -all", "fail"),
        (f"V=SPF1 IP4:{RELAY} -ALL", "pass"),
        (f"v=spf1 exp=explain.example.test ip4:{RELAY} -all", "pass"),
        ("v=spf1 ip4:not-an-address -all", "permerror"),
        ("v=spf1 frobnicate -all", "permerror"),
        ("v=spf1 a/99 -all", "permerror"),
    ],
)
def test_spf_mechanisms_without_lookups(zone: DnsServer, record: str, result: str) -> None:
    zone.set("example.test", "TXT", "some-other=text", record)
    assert spf(zone).split(":")[0] == result


def test_spf_mechanisms_that_look_things_up(zone: DnsServer) -> None:
    zone.set("example.test", "TXT", "v=spf1 include:_spf.provider.test -all")
    zone.set("_spf.provider.test", "TXT", "v=spf1 a:relay.provider.test mx/24 ~all")
    zone.set("relay.provider.test", "A", "198.51.100.9")
    zone.set("_spf.provider.test", "MX", "10 mx.provider.test")
    zone.set("mx.provider.test", "A", "203.0.113.77")
    assert spf(zone) == "pass"  # include → mx/24 covers 203.0.113.5
    assert spf(zone, address="198.51.100.9") == "pass"  # include → a:
    assert spf(zone, address="192.0.2.1") == "fail"  # the include says softfail: no match, then -all

    zone.set("redirected.test", "TXT", "v=spf1 redirect=example.test")
    assert spf(zone, "redirected.test") == "pass"
    zone.set("exists.test", "TXT", "v=spf1 exists:ok.exists.test -all")
    zone.set("ok.exists.test", "A", "127.0.0.2")
    assert spf(zone, "exists.test") == "pass"
    zone.set("v6.test", "TXT", "v=spf1 a//64 -all")
    zone.set("v6.test", "AAAA", "2001:db8::1")
    assert spf(zone, "v6.test", "2001:db8::abcd") == "pass"


@pytest.mark.parametrize(
    ("records", "result", "said"),
    [
        (["v=spf1 -all", "v=spf1 +all"], "permerror", "2 SPF records"),
        (["v=spf1 include:nothing.test -all"], "permerror", "no SPF record"),
        (["v=spf1 exists:%{i}.spf.test -all"], "unsupported", "macros"),
        (["v=spf1 ptr -all"], "unsupported", "ptr"),
        (["v=spf1 " + " ".join(f"a:h{i}.example.test" for i in range(11)) + " -all"], "permerror", "more than 10"),
    ],
)
def test_spf_errors(zone: DnsServer, records: list[str], result: str, said: str) -> None:
    zone.set("example.test", "TXT", *records)
    zone.set("nothing.test", "A", "127.0.0.2")
    outcome = spf(zone)
    assert outcome.startswith(result) and said in outcome


def test_a_dns_timeout_is_a_temperror(zone: DnsServer) -> None:
    zone.set("example.test", "TXT", "v=spf1 include:slow.test -all")
    zone.behave("slow.test", "silent")
    assert str(spf_result("example.test", RELAY, lookups(zone, 0.3))).startswith("temperror")


@pytest.fixture
def identities(db: Any) -> Any:
    directory.create_list(db, "news")
    directory.create_user(
        db, list_name="news", password_hash=hash_password("x" * 16), username="alice",
        senders=["alice@example.test"], domains=["example.test", "other.test"],
    )
    approve(db, ["other.test"], "checked by phone")
    return db


def report(db: Any, zone: DnsServer, domain: str, addresses: tuple[str, ...] = (RELAY,)) -> dict[str, Any]:
    checked = check_domain(db, domain, resolver=parse_resolver(zone.address), public_addresses=addresses)
    return {finding.check: finding for finding in checked.findings}


def test_a_domain_with_nothing_in_place(identities: Any, zone: DnsServer) -> None:
    zone.set("example.test", "A", "192.0.2.1")
    found = report(identities, zone, "EXAMPLE.test")
    assert [(f.ok, f.status) for f in found.values()] == [(False, "pending"), (False, "no-key"), (False, "missing"), (False, "missing")]
    assert "smtpplus dkim add example.test" in found["dkim"].message
    assert "smtpplus-verification=" in found["verification"].message
    assert "addresses at it: 0 verified, 1 pending" in found["verification"].message
    assert f'"v=spf1 ip4:{RELAY} ~all"' in found["spf"].message
    assert "_dmarc.example.test" in found["dmarc"].message


def test_a_domain_ready_to_send(identities: Any, zone: DnsServer) -> None:
    zone.set("other.test", "TXT", f"v=spf1 ip4:{RELAY} -all")
    zone.set("_dmarc.other.test", "TXT", "v=DMARC1; p=reject; rua=mailto:d@other.test")
    key = dkim_admin.add(identities, "other.test", algorithm="ed25519")
    zone.set(key.name, "TXT", key.value)
    checked = check_domain(identities, "other.test", resolver=parse_resolver(zone.address), public_addresses=(RELAY,))
    assert checked.ok and [f.status for f in checked.findings] == ["verified", "published", "pass", "present"]
    assert checked.as_dict()["findings"][3]["records"] == ["v=DMARC1; p=reject; rua=mailto:d@other.test"]


def test_a_dkim_key_not_yet_published_or_replaced_in_dns(identities: Any, zone: DnsServer) -> None:
    key = dkim_admin.add(identities, "other.test", algorithm="rsa-2048")
    missing = report(identities, zone, "other.test")["dkim"]
    assert (missing.ok, missing.status) == (False, "missing") and key.value in missing.message and key.name in missing.message
    zone.set(key.name, "TXT", "v=DKIM1; k=rsa; p=MIIBIjANother")
    other = report(identities, zone, "other.test")["dkim"]
    assert (other.ok, other.status) == (False, "mismatch") and other.records == ("v=DKIM1; k=rsa; p=MIIBIjANother",)
    zone.set(key.name, "TXT", key.value)  # a 2048-bit key: over 255 bytes, in two strings
    assert report(identities, zone, "other.test")["dkim"].status == "published"


def test_spf_without_a_public_address_cannot_tell(identities: Any, zone: DnsServer) -> None:
    zone.set("other.test", "TXT", "v=spf1 -all")
    spf_line = report(identities, zone, "other.test", ())["spf"]
    assert (spf_line.ok, spf_line.status) == (None, "found") and "domains settings --public-address" in spf_line.message


@pytest.mark.parametrize(
    ("records", "ok", "status"),
    [
        (["v=DMARC1; p=none"], True, "present"),
        (["v=DMARC1; p=sometimes"], False, "invalid"),
        (["v=DMARC1; p=none", "v=DMARC1; p=reject"], False, "invalid"),
        (["not dmarc"], False, "missing"),
    ],
)
def test_dmarc(identities: Any, zone: DnsServer, records: list[str], ok: bool, status: str) -> None:
    zone.set("_dmarc.other.test", "TXT", *records)
    line = report(identities, zone, "other.test")["dmarc"]
    assert (line.ok, line.status) == (ok, status)


def test_records_from_dns_are_escaped(identities: Any, zone: DnsServer) -> None:
    zone.set("_dmarc.other.test", "TXT", "v=DMARC1; p=none; x=\x1b]52;c;bad\x07")
    line = report(identities, zone, "other.test")["dmarc"]
    assert "\x1b" not in line.records[0] and "\x07" not in line.records[0]


def test_dns_trouble_is_reported_not_raised(identities: Any, zone: DnsServer) -> None:
    zone.behave("other.test", "servfail")
    zone.behave("_dmarc.other.test", "servfail")
    found = report(identities, zone, "other.test")
    assert (found["spf"].ok, found["dmarc"].ok) == (None, None) and "SERVFAIL" in found["spf"].message


def test_public_addresses() -> None:
    assert parse_public_addresses(" 203.0.113.5, 2001:DB8::5;203.0.113.5 ") == ("203.0.113.5", "2001:db8::5")
    assert parse_public_addresses("") == ()
    with pytest.raises(PolicyError, match="'relay.example' is not an IP address"):
        parse_public_addresses("relay.example")


def test_the_cli(cli: Any, identities: Any, zone: DnsServer) -> None:
    zone.set("other.test", "TXT", f"v=spf1 ip4:{RELAY} -all")
    cli.env["SMTPPLUS_DNS_RESOLVER"] = zone.address
    assert cli.json("domains", "settings", "--public-address", RELAY) == {"public_address": RELAY, "dns_resolver": None}
    # The resolver is settable where an operator sets up domains (the same store setting
    # as `senders settings --resolver`); a bad one is a one-line error naming it.
    assert cli.json("domains", "settings", "--resolver", "127.0.0.1:5353")["dns_resolver"] == "127.0.0.1:5353"
    assert cli.json("senders", "settings")["dns_resolver"] == "127.0.0.1:5353"
    bad_resolver = cli("domains", "settings", "--resolver", "dns.example")
    assert bad_resolver.returncode == 1 and len(bad_resolver.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad_resolver.stderr
    assert cli.json("domains", "settings", "--resolver", "") == {"public_address": RELAY, "dns_resolver": None}
    shown = cli.json("domains", "check", "other.test")
    assert (shown["domain"], shown["resolver"], shown["ok"]) == ("other.test", zone.address, False)
    assert [(f["check"], f["ok"]) for f in shown["findings"]] == [
        ("verification", True), ("dkim", False), ("spf", True), ("dmarc", False)
    ]
    text = cli("domains", "check", "other.test", check=True).stdout  # a report: exit 0
    assert "spf           ok   pass" in text and "dmarc         FIX  missing" in text

    bad = cli("domains", "check", "other.test", "--public-address", "relay.example")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ["smtpplus: error: public address 'relay.example' is not an IP address (e.g. 203.0.113.5 or 2001:db8::5)"]
    cli.env["SMTPPLUS_DNS_RESOLVER"] = "dns.example"
    env_error = cli("domains", "check", "other.test")
    assert env_error.returncode == 1 and "$SMTPPLUS_DNS_RESOLVER" in env_error.stderr and len(env_error.stderr.strip().splitlines()) == 1
