"""The pure verification rules: codes, hashes, expiry, the code mail, TXT records, resolvers."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from relay import dnscheck
from relay import verification as rules
from relay.verification import CodeOutcome


def test_codes_are_eight_random_digits() -> None:
    codes = [rules.generate_code() for _ in range(300)]
    assert all(len(c) == rules.CODE_DIGITS >= 6 and c.isdigit() for c in codes)
    # 300 draws from 10^8 values: any repeat would mean a broken generator.
    assert len(set(codes)) == len(codes)
    # Leading zeros are kept (a string of digits, not a number): P(no leading 0) ≈ 0.9^300.
    assert "0" in {c[0] for c in codes}


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("01234567", "01234567"),
        ("0123 4567", "01234567"),
        (" 0123-4567 ", "01234567"),
        ("1234567", None),
        ("123456789", None),
        ("1234abcd", None),
        ("١٢٣٤٥٦٧٨", None),  # Arabic-Indic digits are digits to str.isdigit, not to us
        ("", None),
    ],
)
def test_typed_codes_are_normalized(typed: str, expected: str | None) -> None:
    assert rules.normalize_code(typed) == expected


def test_code_hash_is_salted_argon2id_and_checks_only_the_right_code() -> None:
    first, second = rules.hash_code("01234567"), rules.hash_code("01234567")
    assert first.startswith("$argon2id$") and first != second
    assert "01234567" not in first
    assert rules.code_matches(first, "01234567") and rules.code_matches(second, "01234567")
    assert not rules.code_matches(first, "01234568")
    assert not rules.code_matches("not a hash", "01234567")


def test_code_state_explains_the_most_useful_reason_first() -> None:
    def state(**kw: object) -> CodeOutcome | None:
        args = {"expires_at": 100.0, "attempts": 0, "used_at": None, "now": 50.0} | kw
        return rules.code_state(**args)  # type: ignore[arg-type]

    assert state() is None
    assert state(attempts=rules.MAX_ATTEMPTS - 1) is None
    assert state(attempts=rules.MAX_ATTEMPTS) is CodeOutcome.TOO_MANY_TRIES
    assert state(now=100.0) is CodeOutcome.EXPIRED  # expiry is exclusive
    assert state(now=99.9) is None
    assert state(now=200.0, attempts=9) is CodeOutcome.EXPIRED
    assert state(used_at=60.0, now=200.0, attempts=9) is CodeOutcome.USED


def test_expiry_needs_a_positive_lifetime() -> None:
    assert rules.expiry(1000.0) == 1000.0 + 24 * 3600
    assert rules.expiry(1000.0, 60) == 1060.0
    with pytest.raises(ValueError):
        rules.expiry(1000.0, 0)


@pytest.mark.parametrize("outcome", list(CodeOutcome))
def test_every_outcome_has_a_one_line_message_naming_the_address(outcome: CodeOutcome) -> None:
    message = rules.outcome_message(outcome, "a@example.com", attempts_left=2, at=0.0, method="manual")
    assert "a@example.com" in message and "\n" not in message
    if outcome in (CodeOutcome.EXPIRED, CodeOutcome.TOO_MANY_TRIES):
        assert "send-code a@example.com" in message  # the fix
    assert outcome.ok == (outcome in (CodeOutcome.VERIFIED, CodeOutcome.ALREADY_VERIFIED))


def test_wrong_code_message_counts_down_and_then_asks_for_a_new_code() -> None:
    assert "2 tries left" in rules.outcome_message(CodeOutcome.WRONG, "a@x.org", attempts_left=2)
    assert "1 try left" in rules.outcome_message(CodeOutcome.WRONG, "a@x.org", attempts_left=1)
    last = rules.outcome_message(CodeOutcome.WRONG, "a@x.org", attempts_left=0)
    assert "no tries left" in last and "send-code a@x.org" in last


def test_code_mail_carries_the_code_and_says_what_it_is_for() -> None:
    data = rules.code_email(
        address="alice@example.com",
        code="01234567",
        sender="smtpplus@relay.example.net",
        expires_at=86400.0,
        now=0.0,
        server_name="relay.example.net",
    )
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    message = message_from_bytes(data, policy=default_policy)
    assert message["From"] == "smtpplus@relay.example.net"
    assert message["To"] == "alice@example.com"
    assert message["Subject"] == rules.CODE_SUBJECT
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@relay.example.net>")
    body = message.get_content()
    assert "0123 4567" in body
    assert "relay.example.net" in body and "1970-01-02 00:00:00 UTC" in body
    assert "ignore" in body


def test_txt_record_format_and_parsing() -> None:
    assert rules.txt_record("abc123") == "smtpplus-verification=abc123"
    assert rules.txt_instructions("example.org", "abc") == 'example.org. IN TXT "smtpplus-verification=abc"'
    assert rules.txt_token("smtpplus-verification=abc") == "abc"
    assert rules.txt_token("  SMTPPLUS-Verification=abc ") == "abc"
    assert rules.txt_token("v=spf1 -all") is None


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1", "127.0.0.1", 53),
        ("127.0.0.1:5353", "127.0.0.1", 5353),
        ("::1", "::1", 53),
        ("[::1]:5353", "::1", 5353),
        ("[::1]", "::1", 53),
    ],
)
def test_resolver_addresses(text: str, host: str, port: int) -> None:
    resolver = dnscheck.parse_resolver(text)
    assert (resolver.host, resolver.port) == (host, port)
    assert dnscheck.parse_resolver(str(resolver)) == resolver


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("dns.example.com:53", "IP address"),
        ("127.0.0.1:0", "1 to 65535"),
        ("127.0.0.1:99999", "1 to 65535"),
        ("127.0.0.1:x", "1 to 65535"),
        ("[::1", "[ADDRESS]:PORT"),
        ("", "HOST[:PORT]"),
    ],
)
def test_bad_resolver_addresses_say_how_to_write_one(text: str, hint: str) -> None:
    with pytest.raises(dnscheck.ResolverError, match=hint.replace("[", r"\[").replace("]", r"\]")):
        dnscheck.parse_resolver(text)


def test_resolver_choice_explicit_then_setting_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dnscheck.RESOLVER_ENV, "127.0.0.3:53")
    assert dnscheck.choose_resolver("127.0.0.1:1053", "127.0.0.2:53").host == "127.0.0.1"
    assert dnscheck.choose_resolver(None, "127.0.0.2:53").host == "127.0.0.2"
    assert dnscheck.choose_resolver(None, None) == dnscheck.Resolver("127.0.0.3", 53)
