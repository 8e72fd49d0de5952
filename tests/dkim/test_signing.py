"""relay/dkim.py: keys, records and signatures, verified by dkimpy against the record a
real loopback DNS server publishes."""

from __future__ import annotations

import email
import email.policy
from typing import Any

import dkim
import pytest
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import dkim as rules
from tests.dkim.conftest import asked, dkimpy_dnsfunc

MESSAGE = (
    b"Received: from client by relay\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Cc: carol@example.com\r\n"
    b"Subject: the report\r\n"
    b"Date: Mon, 30 Nov 2026 16:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"List-Unsubscribe: <mailto:unsub@example.org>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"X-Other: not signed\r\n"
    b"\r\n" + b"A line of the body, as mail has them.\r\n" * 250
)


def verifies(data: bytes, server: Any) -> bool:
    """dkimpy's verdict on the first signature (a body hash mismatch raises there)."""
    try:
        return bool(dkim.DKIM(data).verify(dnsfunc=dkimpy_dnsfunc(server)))
    except dkim.ValidationError:
        return False


def publish(server: Any, selector: str, domain: str, pair: rules.KeyPair) -> None:
    server.set(rules.record_name(selector, domain), "TXT", rules.txt_value(pair.algorithm, pair.public))


@pytest.mark.parametrize("algorithm", rules.ALGORITHMS)
def test_a_signature_verifies_against_the_published_record(dkim_dns: Any, algorithm: str) -> None:
    pair = rules.generate(algorithm)
    publish(dkim_dns, "s1", "example.org", pair)
    key = rules.SigningKey.load("example.org", "s1", algorithm, pair.private_pem)
    signed = rules.sign(MESSAGE, key)
    assert signed.endswith(MESSAGE) and signed.startswith(b"DKIM-Signature: v=1; a=")

    verifier = dkim.DKIM(signed)
    assert verifier.verify(dnsfunc=dkimpy_dnsfunc(dkim_dns)) is True
    assert asked(dkim_dns, "s1._domainkey.example.org")
    fields = verifier.signature_fields
    assert fields[b"c"] == b"relaxed/relaxed" and fields[b"d"] == b"example.org" and fields[b"s"] == b"s1"
    assert fields[b"a"] == (b"rsa-sha256" if algorithm == "rsa-2048" else b"ed25519-sha256")
    signed_names = [name.strip() for name in fields[b"h"].split(b":")]
    assert signed_names == [
        b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
        b"list-unsubscribe", b"list-unsubscribe-post", b"from",
    ]

    # What a signature protects: the body, a signed header, an added From:.
    assert not verifies(signed.replace(b"as mail has them", b"as mail HAS them", 1), dkim_dns)
    assert not verifies(signed.replace(b"the report", b"the rep0rt"), dkim_dns)
    assert not verifies(signed.replace(b"X-Other:", b"From: mallory@example.net\r\nX-Other:"), dkim_dns)
    # ...and what it does not: an unsigned header, whitespace relaxed canonicalization forgives.
    assert verifies(signed.replace(b"not signed", b"changed"), dkim_dns)
    assert verifies(signed.replace(b"Subject: the report", b"Subject:   the    report"), dkim_dns)


def test_a_key_that_is_not_the_published_one_fails(dkim_dns: Any) -> None:
    publish(dkim_dns, "s1", "example.org", rules.generate("ed25519"))
    other = rules.generate("ed25519")
    signed = rules.sign(MESSAGE, rules.SigningKey.load("example.org", "s1", "ed25519", other.private_pem))
    assert not verifies(signed, dkim_dns)


def test_an_8bit_body_is_made_7bit_and_folded_before_signing(dkim_dns: Any) -> None:
    pair = rules.generate("ed25519")
    publish(dkim_dns, "s1", "example.org", pair)
    text = "Grüße aus Köln — ✓\r\n".encode() * 3 + b"x" * 1500 + b"\r\n"
    raw = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + text
    converted, notes = rules.seven_bit(raw)
    assert converted.isascii() and max(len(line) for line in converted.split(b"\r\n")) <= 998
    assert [str(reason) for reason, _ in notes] == ["downgraded-8bit"]  # QP also shortens the long line
    signed = rules.sign(converted, rules.SigningKey.load("example.org", "s1", "ed25519", pair.private_pem))
    assert verifies(signed, dkim_dns)
    parsed = email.message_from_bytes(signed, policy=email.policy.default)
    assert parsed.get_content().replace("\r\n", "\n") == text.decode().replace("\r\n", "\n")  # the same text


def test_records_and_names() -> None:
    rsa = rules.generate("rsa-2048")
    assert rules.txt_value("rsa-2048", rsa.public).startswith("v=DKIM1; k=rsa; p=MIIBIjAN")
    ed = rules.generate("ed25519")
    assert rules.txt_value("ed25519", ed.public) == f"v=DKIM1; k=ed25519; p={ed.public}" and len(ed.public) == 44
    assert rules.record_name("s202611", "example.org") == "s202611._domainkey.example.org"
    assert "BEGIN PRIVATE KEY" not in repr(rsa) and rsa.private_pem not in repr(rsa)
    assert rules.record_matches(f"v=DKIM1; k=rsa; p={rsa.public[:100]} {rsa.public[100:]}", "rsa-2048", rsa.public)
    assert not rules.record_matches(f"v=DKIM1; k=ed25519; p={rsa.public}", "rsa-2048", rsa.public)
    assert rules.default_selector(1796054400.0) == "s202611"
    assert rules.default_selector(1796054400.0, ["s202611", "s202611b"]) == "s202611c"
    for bad in ("", "-a", "a_b", "a" * 64, "x y"):
        with pytest.raises(rules.DkimError):
            rules.check_selector(bad)
    with pytest.raises(rules.DkimError, match="rsa-2048 or ed25519"):
        rules.check_algorithm("rsa-1024")


def test_the_from_domain() -> None:
    assert rules.from_domain(MESSAGE) == "example.org"
    assert rules.from_domain(b"From: =?utf-8?q?A?= <a@B\xc3\xbccher.example>\r\n\r\nx") == "xn--bcher-kva.example"
    assert rules.from_domain(b"To: x@example.org\r\n\r\nbody") is None
    assert rules.from_domain(b"From: a@example.org\r\nFrom: b@example.net\r\n\r\n") is None
    assert rules.from_domain(b"From: not an address\r\n\r\n") is None


_LINE = st.text(alphabet=st.sampled_from(["a", "b", " ", "\t", "é", "."]), max_size=12).map(lambda s: s.encode())


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_LINE, max_size=12), end=st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b" \r\n \r\n"]))
def test_the_fast_relaxed_body_is_dkimpys(lines: list[bytes], end: bytes) -> None:
    body = b"\r\n".join(lines) + end
    expected = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").canonicalize_body(body)
    assert rules.relaxed_body(body) == expected
