"""Pure message handling shared by the SMTP session and campaigns: line endings,
header sections, From:/Sender: address extraction, Received: lines. No I/O.

The address readers are strict on purpose: two parsers must agree, and any
address-looking text in a From:/Sender: value counts as a sender to authorize.
"""

from __future__ import annotations

import datetime as dt
import email.header
import email.policy
import email.utils
import functools
import re
import time
from typing import Any

from relay import policy

_EHLO_UNSAFE = re.compile(r"[^A-Za-z0-9.\-:\[\]_]")
_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")


def shown(address: str, limit: int = 256) -> str:
    """An address safe to echo in a reply: ASCII, no control characters, bounded."""
    text = address.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


def sanitize_ehlo(name: str) -> str:
    """The EHLO name as it may appear in a Received: header."""
    return _EHLO_UNSAFE.sub("?", name)[:255] or "unknown"


def normalize_line_endings(data: bytes) -> bytes:
    """Every bare CR or LF becomes CRLF."""
    crlf = data.count(b"\r\n")
    if crlf == data.count(b"\r") and crlf == data.count(b"\n"):
        return data
    return _LINE_ENDINGS.sub(b"\r\n", data)


def longest_line(data: bytes) -> int:
    longest = 0
    start = 0
    while True:
        end = data.find(b"\r\n", start)
        if end < 0:
            return max(longest, len(data) - start)
        longest = max(longest, end + 2 - start)
        start = end + 2


def header_section(data: bytes) -> bytes:
    """The bytes before the first empty line (all of it when there is none)."""
    if data.startswith(b"\r\n"):
        return b""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def split_headers(section: bytes) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) for every field of a header section.

    Lines that are neither a field nor a continuation are skipped, and scanning goes
    on: a ``From:`` hidden after a malformed line still counts."""
    fields: list[tuple[str, str]] = []
    for line in section.decode("utf-8", "surrogateescape").split("\r\n"):
        if not line:
            continue
        if line[0] in " \t":
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, value + line)
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or " " in name.strip() or "\t" in name.strip():
            continue
        fields.append((name.strip().lower(), value))
    return fields


CACHED_TEXT = 1000  # longer inputs are checked every time, never remembered


def check_address(raw: str) -> policy.AddressCheck:
    """:func:`relay.policy.check_address`, remembered: bulk mail repeats its addresses."""
    return _check_address_cached(raw) if len(raw) <= CACHED_TEXT else policy.check_address(raw)


_check_address_cached = functools.lru_cache(maxsize=4096)(policy.check_address)


def header_addresses(value: str) -> tuple[str, ...] | None:
    """The addr-specs of a From:/Sender: value; None unless it parses cleanly.

    Two parsers must agree (the header registry and ``getaddresses``): a value that
    one reads differently from the other is how a forged sender slips through.
    Pure, so remembered per value."""
    return _header_addresses_cached(value) if len(value) <= CACHED_TEXT else _header_addresses(value)


def _header_addresses(value: str) -> tuple[str, ...] | None:
    try:
        header: Any = email.policy.default.header_factory("from", value)
        addresses = [a.addr_spec for a in header.addresses]
        defects = header.defects
    except Exception:
        return None
    if defects or not addresses or any(not a or a == "<>" for a in addresses):
        return None
    known = {a.lower() for a in addresses}
    try:
        others = {addr.lower() for _, addr in email.utils.getaddresses([value]) if "@" in addr}
    except Exception:
        return None
    if not others <= known:
        return None
    return tuple(addresses)


_header_addresses_cached = functools.lru_cache(maxsize=4096)(_header_addresses)


def store_text(value: str) -> str:
    """Header text as the store can hold it: bytes that were not UTF-8 (kept as lone
    surrogates by ``surrogateescape``) become U+FFFD. The message itself keeps them."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that no byte stands for
        return value.encode("utf-8", "replace").decode("utf-8")


_ADDRESS_LIKE = re.compile(r"""[^\s<>()\[\]",;:@\\]+@[^\s<>()\[\]",;:@\\]+""")


def address_like(value: str) -> tuple[str, ...]:
    """Address-looking text anywhere in a From:/Sender: value — display names and
    comments included, RFC 2047 encoded words decoded. A reader (or a lenient parser
    downstream) may take any of them for the sender, so each one counts. Pure, so
    remembered per value."""
    return _address_like_cached(value) if len(value) <= CACHED_TEXT else _address_like(value)


def _address_like(value: str) -> tuple[str, ...]:
    text = value
    if "=?" in value:
        try:
            text = str(email.header.make_header(email.header.decode_header(value)))
        except Exception:
            text = value
    found: dict[str, str] = {}
    for candidate in _ADDRESS_LIKE.findall(text):
        candidate = candidate.strip(".")
        if "." in candidate.rpartition("@")[2]:
            found.setdefault(candidate.lower(), candidate)
    return tuple(found.values())


_address_like_cached = functools.lru_cache(maxsize=4096)(_address_like)


def decoded_subject(value: str) -> str:
    if "=?" not in value:  # no encoded words: nothing to decode
        return " ".join(value.split())[:200]
    try:
        text = str(email.header.make_header(email.header.decode_header(value)))
    except Exception:
        text = value
    return " ".join(text.split())[:200]


@functools.lru_cache(maxsize=4)
def _rfc5322_date(second: int) -> str:
    return email.utils.format_datetime(dt.datetime.fromtimestamp(second, dt.UTC))


def received_header(ehlo: str, client: str, server_name: str, protocol: str, queue_id: str) -> bytes:
    stamp = _rfc5322_date(int(time.time()))
    line = (
        f"Received: from {sanitize_ehlo(ehlo)} ({shown(client, 64)}) by {sanitize_ehlo(server_name)} "
        f"(smtpplus) with {protocol} id {queue_id}; {stamp}\r\n"
    )
    return line.encode("ascii", "replace")
