"""Pure helpers of the SMTP session: path parsing, header parsing, sanitizing."""

from __future__ import annotations

import pytest

from relay.message import (
    decoded_subject,
    header_addresses,
    header_section,
    normalize_line_endings,
    sanitize_ehlo,
    shown,
    split_headers,
)
from relay.smtp import split_path


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("FROM:<a@b.example>", ("a@b.example", [])),
        ("from: <a@b.example> SIZE=10 BODY=8BITMIME", ("a@b.example", ["SIZE=10", "BODY=8BITMIME"])),
        ("FROM:<>", ("", [])),
        ("FROM:<@x.example,@y.example:a@b.example>", ("@x.example,@y.example:a@b.example", [])),  # kept verbatim
        ('FROM:<"a>b"@c.example>', ('"a>b"@c.example', [])),
        ("FROM:a@b.example", ("a@b.example", [])),
        ("FROM:<a@b.example", None),
        ("FROM:<a@b.example>SIZE=1", None),
        ("TO:<a@b.example>", None),
        ("FROM:", None),
        (None, None),
    ],
)
def test_split_path(arg: str | None, expected: tuple[str, list[str]] | None) -> None:
    assert split_path(arg, "FROM:") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Alice <a@a.example>", ("a@a.example",)),
        ("a@a.example, Bob <b@b.example>", ("a@a.example", "b@b.example")),
        ('"a@a.example" <evil@evil.example>', ("evil@evil.example",)),
        ("=?utf-8?q?a@a.example?= <evil@evil.example>", None),  # the two parsers disagree
        ("a@a.example <evil@evil.example>", None),
        ("<@evil.example:a@a.example>", None),  # obsolete route syntax
        ("Alice <a@a.example", None),
        ("", None),
        ("undisclosed-recipients:;", None),
        ("<>", None),
    ],
)
def test_header_addresses(value: str, expected: tuple[str, ...] | None) -> None:
    assert header_addresses(value) == expected


def test_headers_are_split_unfolded_and_scanned_past_malformed_lines() -> None:
    data = b"Subject: one\r\n two\r\nnot a header\r\nFrom: a@a.example\r\n\r\nFrom: body@x.example\r\n"
    fields = split_headers(header_section(data))
    assert fields == [("subject", " one two"), ("from", " a@a.example")]
    assert header_section(b"\r\nbody only\r\n") == b""


def test_line_endings() -> None:
    assert normalize_line_endings(b"a\nb\rc\r\n") == b"a\r\nb\r\nc\r\n"
    same = b"a\r\nb\r\n"
    assert normalize_line_endings(same) is same


def test_text_from_clients_is_made_safe() -> None:
    assert sanitize_ehlo("host (x);\r\n") == "host??x??" + "??"
    assert sanitize_ehlo("") == "unknown"
    assert sanitize_ehlo("[192.0.2.1]") == "[192.0.2.1]"
    assert shown("ä\x01b" + "c" * 300).startswith("\\xe4?bccc") and shown("x" * 300).endswith("...")
    assert decoded_subject("=?utf-8?q?J=C3=B6rg?=  says\r\n hi") == "Jörg says hi"
