"""Port specs (relay.ports) and the client settings built from served ports."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import client_settings as cs
from relay.ports import (
    DEFAULT_SPEC,
    DEFAULT_TLS_SPEC,
    PortSpecError,
    format_port_spec,
    parse_port_spec,
    sample_ports,
)


def test_default_spec_is_3978_starttls_ports_plus_465() -> None:
    ports = parse_port_spec(DEFAULT_SPEC)
    assert len(ports) == 3978
    assert ports[:3] == [25, 587, 1025] and ports[-1] == 5000
    assert format_port_spec(ports) == DEFAULT_SPEC == "25,587,1025-5000"
    assert parse_port_spec(DEFAULT_TLS_SPEC) == [465] and 465 not in ports


def test_parse_sorts_dedupes_and_trims() -> None:
    assert parse_port_spec(" 4000-4002 , 25,2525, 4001 ") == [25, 2525, 4000, 4001, 4002]
    assert parse_port_spec("7-7") == [7]
    assert parse_port_spec("1,65535") == [1, 65535]


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("25,,26", "empty item"),
        ("abc", "not a port number"),
        ("25;26", "not a port number"),
        ("-5", "not a port number"),
        ("0", "out of range"),
        ("65536", "out of range"),
        ("10-5", "write 5-10"),
    ],
)
def test_bad_specs(spec: str, fragment: str) -> None:
    with pytest.raises(PortSpecError, match=fragment):
        parse_port_spec(spec)


@given(st.lists(st.integers(1, 65535), max_size=60))
def test_format_and_parse_round_trip(ports: list[int]) -> None:
    spec = format_port_spec(ports)
    if not ports:
        assert spec == ""
        return
    assert parse_port_spec(spec) == sorted(set(ports))
    assert format_port_spec(parse_port_spec(spec)) == spec
    # The shortest form: no two items could merge.
    items = [tuple(map(int, item.split("-"))) for item in spec.split(",")]
    assert all(later[0] > earlier[-1] + 1 for earlier, later in zip(items, items[1:], strict=False))


def test_sample_ports_is_deterministic_sorted_and_a_subset() -> None:
    ports = parse_port_spec(DEFAULT_SPEC)
    sample = sample_ports(ports, 50, seed=7)
    assert sample == sample_ports(list(reversed(ports)), 50, seed=7)
    assert len(sample) == 50 == len(set(sample))
    assert sample == sorted(sample) and set(sample) <= set(ports)
    assert sample_ports([3, 1, 2], 10) == [1, 2, 3]


# ---------------------------------------------------------------------------
# Client settings (relay.client_settings): pure assembly from what the relay published


def test_client_settings_before_any_relay_ran() -> None:
    s = cs.client_settings(server_name="relay.example.com", served=[])
    assert s.relay_has_run is False
    assert s.ports_text == "no relay has run yet — default 25,587,1025-5000 (STARTTLS); 465 (SSL/TLS)"
    assert (s.ports_spec, s.tls_ports_spec, s.implicit_tls) == (DEFAULT_SPEC, "465", [465])
    assert (s.tls_port, s.port) == (465, 587)  # implicit TLS first (RFC 8314), then submission
    assert s.encryption == "STARTTLS (required for AUTH); SSL/TLS on 465" and s.starttls_required
    assert s.fingerprint is None and s.fingerprint_text == "not yet generated — start the relay once"
    assert s.block.startswith("# SMTP+ outgoing server — port 465, SSL/TLS; or 587, STARTTLS\n")
    for client in ("Thunderbird", "Outlook", "Apple Mail", "SMTP_HOST=relay.example.com", "SMTP_PORT=465"):
        assert client in s.block
    assert "Connection security: SSL/TLS  (or Port 587 with STARTTLS)" in s.block
    assert "Encryption method: SSL/TLS  (or Port 587 with STARTTLS)" in s.block
    assert "SMTP_SSL=true\nSMTP_STARTTLS=false\n# or SMTP_PORT=587 with SMTP_SSL=false and SMTP_STARTTLS=true" in s.block
    assert "SMTP_USERNAME=<relay username>" in s.block


def test_client_settings_with_implicit_tls_served() -> None:
    s = cs.client_settings(server_name="mx.example.net", served=[465, 587, 2525], implicit_tls=[465])
    assert s.ports_text == "587,2525 (STARTTLS); 465 (SSL/TLS)" and s.ports_spec == "587,2525"
    assert (s.tls_port, s.port, s.implicit_tls) == (465, 587, [465])
    assert "port 465, SSL/TLS; or 587, STARTTLS" in s.block and "SMTP_PORT=465" in s.block
    # Only implicit TLS: no STARTTLS alternative named.
    only = cs.client_settings(server_name="h", served=[10465], implicit_tls=[10465])
    assert only.port is None and only.tls_port == 10465 and only.ports_text == "10465 (SSL/TLS)"
    assert only.block.startswith("# SMTP+ outgoing server — port 10465, SSL/TLS\n") and "STARTTLS)" not in only.block
    # An implicit-TLS port the relay did not serve is not offered.
    none = cs.client_settings(server_name="h", served=[2525], not_served={465: "in use"}, implicit_tls=[465])
    assert none.tls_port is None and none.implicit_tls == [] and "SMTP_STARTTLS=true" in none.block


def test_client_settings_from_a_relay_that_ran() -> None:
    s = cs.client_settings(
        server_name="mx.example.net",
        served=[25, 1026, 1025, 1027],
        not_served={2525: "address in use"},
        allow_plain_auth=True,
        fingerprint="SHA256:AB:CD",
        username="shop-1",
    )
    assert s.relay_has_run and s.ports_text == s.ports_spec == "25,1025-1027"
    assert s.port == 1025 and s.not_served == {2525: "address in use"}
    assert s.encryption == "STARTTLS optional; plain AUTH allowed" and not s.starttls_required
    assert s.fingerprint_text == "SHA256:AB:CD" and "SHA256:AB:CD" in s.block
    assert "SMTP_USERNAME=shop-1" in s.block and "SMTP_PORT=1025" in s.block
    assert "SMTP_STARTTLS=true" in s.block  # still recommended when plain AUTH is allowed


def test_client_settings_when_the_relay_served_nothing() -> None:
    s = cs.client_settings(server_name="h", served=[], not_served={25: "permission denied"})
    assert s.relay_has_run and s.port is None and "none" in s.ports_text
    assert "<no port served yet>" in s.block


@pytest.mark.parametrize(
    ("ports", "expected"), [([25, 587, 2525], 587), ([25, 1025, 2525], 2525), ([25, 4000, 1030], 1030), ([25], 25), ([], None)]
)
def test_suggested_port(ports: list[int], expected: int | None) -> None:
    assert cs.suggested_port(ports) == expected
