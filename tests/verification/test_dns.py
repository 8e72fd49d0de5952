"""DNS TXT checks against a real DNS server on loopback that answers from a table
(harness.dns.DnsServer)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.dnscheck import DnsOutcome, check_dns, check_dns_async
from relay.verification import txt_record

TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_found_record_verifies(table_dns: Any, tcp: bool) -> None:
    table_dns.set("example.org", "txt", "v=spf1 -all", txt_record(TOKEN))
    result = check_dns("example.org", TOKEN, table_dns.address, 5, tcp=tcp)
    assert result.outcome is DnsOutcome.VERIFIED and result.verified
    assert result.found == (txt_record(TOKEN),)
    assert result.resolver == table_dns.address and table_dns.address in result.message
    assert table_dns.queries == [("example.org", "TXT", "tcp" if tcp else "udp")]


def test_truncated_udp_answer_is_retried_over_tcp(table_dns: Any) -> None:
    # A long record split into several 255-byte strings, as real zones do.
    long_noise = "x" * 600
    table_dns.set("example.org", "txt", long_noise, txt_record(TOKEN))
    table_dns.behave("example.org", "truncate")
    result = check_dns("example.org", TOKEN, table_dns.address, 5)
    assert result.outcome is DnsOutcome.VERIFIED and result.transport == "udp+tcp"
    assert table_dns.queries == [("example.org", "TXT", "udp"), ("example.org", "TXT", "tcp")]


def test_an_answer_too_big_for_udp_is_truncated_and_retried_over_tcp(table_dns: Any) -> None:
    # Over 512 bytes without EDNS: the server sets TC by itself (a 2048-bit DKIM key's size).
    table_dns.set("example.org", "txt", "k" * 700, txt_record(TOKEN))
    result = check_dns("example.org", TOKEN, table_dns.address, 5)
    assert result.outcome is DnsOutcome.VERIFIED and result.transport == "udp+tcp"


def test_nxdomain(table_dns: Any) -> None:
    table_dns.set("example.org", "txt", "v=spf1 -all")  # a sibling exists; this name does not
    result = check_dns("gone.example.org", TOKEN, table_dns.address, 5)
    assert result.outcome is DnsOutcome.NXDOMAIN
    assert "no such domain (NXDOMAIN)" in result.message and "gone.example.org" in result.message


@pytest.mark.parametrize("values", [[], ["v=spf1 -all", "google-site-verification=abc"]], ids=["none", "others"])
def test_no_smtpplus_txt_record_says_what_to_publish(table_dns: Any, values: list[str]) -> None:
    table_dns.set("example.org", "A", "192.0.2.1")  # the name exists (NODATA without TXT)
    table_dns.set("example.org", "txt", *values)
    result = check_dns("example.org", TOKEN, table_dns.address, 5)
    assert result.outcome is DnsOutcome.NO_TXT and result.found == ()
    assert f"publish 'smtpplus-verification={TOKEN}'" in result.message


def test_wrong_token_shows_what_was_found_and_what_is_expected(table_dns: Any) -> None:
    table_dns.set("example.org", "txt", txt_record("stale-token"))
    result = check_dns("example.org", TOKEN, table_dns.address, 5)
    assert result.outcome is DnsOutcome.WRONG_TOKEN
    assert "stale-token" in result.message and TOKEN in result.message
    assert result.found == (txt_record("stale-token"),)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_a_silent_resolver_times_out(table_dns: Any, tcp: bool) -> None:
    table_dns.behave("example.org", "silent")
    result = check_dns("example.org", TOKEN, table_dns.address, 0.5, tcp=tcp)
    assert result.outcome is DnsOutcome.TIMEOUT
    assert "did not answer within 0.5 s" in result.message
    assert len(table_dns.queries) == 1  # it was asked, and kept quiet


def test_servfail_is_an_error_naming_the_rcode(table_dns: Any) -> None:
    table_dns.behave("example.org", "servfail")
    result = check_dns("example.org", TOKEN, table_dns.address, 5)
    assert result.outcome is DnsOutcome.ERROR and "SERVFAIL" in result.message


async def test_async_variant_keeps_the_event_loop_free(table_dns: Any) -> None:
    table_dns.set("example.org", "txt", txt_record(TOKEN))
    result = await check_dns_async("example.org", TOKEN, table_dns.address, 5)
    assert result.verified
