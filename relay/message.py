"""Pure message handling shared by the SMTP session and campaigns: line endings,
header sections, From:/Sender: address extraction, Received: lines. No I/O.

The address readers are strict on purpose, and any address-looking text in a
From:/Sender: value counts as a sender to authorize.

Everything here that reads a header value works in one pass, in time linear in the
value's length (:class:`HeaderScanner` counts its steps so tests can check that):
the email package's header parser takes time that grows with the square of the
length (20 KB of backslashes took 3 s; a folded 70,000-character From: 43 s) and
ran on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import functools
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Protocol

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


def header_section(data: bytes) -> bytes:
    """The bytes before the first empty line (all of it when there is none)."""
    if data.startswith(b"\r\n"):
        return b""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


class _Searchable(Protocol):
    def find(self, sub: bytes, start: int = ..., end: int = ...) -> int: ...
    def __getitem__(self, index: slice) -> bytes: ...
    def __len__(self) -> int: ...


def header_section_at(data: _Searchable, start: int, limit: int) -> bytes | None:
    """The header section of the message that begins at ``start`` of ``data`` (bytes
    or an mmap of a spooled message), or None when it is over ``limit`` bytes. Looks at
    no more than ``limit`` + 4 bytes, however big the message."""
    if data[start : start + 2] == b"\r\n":
        return b""
    end = data.find(b"\r\n\r\n", start, start + limit + 4)
    if end >= 0:
        return data[start : end + 2] if end + 2 - start <= limit else None
    return data[start:] if len(data) - start <= limit else None


def split_headers(section: bytes) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) for every field of a header section.

    Lines that are neither a field nor a continuation are skipped, and scanning goes
    on: a ``From:`` hidden after a malformed line still counts."""
    fields: list[tuple[str, list[str]]] = []
    for line in section.decode("utf-8", "surrogateescape").split("\r\n"):
        if not line:
            continue
        if line[0] in " \t":
            if fields:
                fields[-1][1].append(line)  # joined once below: no quadratic concatenation
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or " " in name.strip() or "\t" in name.strip():
            continue
        fields.append((name.strip().lower(), [value]))
    return [(name, "".join(parts)) for name, parts in fields]


CACHED_TEXT = 1000  # longer inputs are checked every time, never remembered


def check_address(raw: str) -> policy.AddressCheck:
    """:func:`relay.policy.check_address`, remembered: bulk mail repeats its addresses."""
    return _check_address_cached(raw) if len(raw) <= CACHED_TEXT else policy.check_address(raw)


_check_address_cached = functools.lru_cache(maxsize=4096)(policy.check_address)


def header_addresses(value: str) -> tuple[str, ...] | None:
    """The addr-specs of a From:/Sender: value (RFC 5322 mailbox-list); None unless it
    parses cleanly. Pure, so remembered per value."""
    return _header_addresses_cached(value) if len(value) <= CACHED_TEXT else HeaderScanner().addresses(value)


_header_addresses_cached = functools.lru_cache(maxsize=4096)(lambda value: HeaderScanner().addresses(value))


def store_text(value: str) -> str:
    """Header text as the store can hold it: bytes that were not UTF-8 (kept as lone
    surrogates by ``surrogateescape``) become U+FFFD. The message itself keeps them."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that no byte stands for
        return value.encode("utf-8", "replace").decode("utf-8")


def address_like(value: str) -> tuple[str, ...]:
    """Address-looking text anywhere in a From:/Sender: value — display names and
    comments included, RFC 2047 encoded words decoded. A reader (or a lenient parser
    downstream) may take any of them for the sender, so each one counts. Pure, so
    remembered per value."""
    return _address_like_cached(value) if len(value) <= CACHED_TEXT else HeaderScanner().address_like(value)


_address_like_cached = functools.lru_cache(maxsize=4096)(lambda value: HeaderScanner().address_like(value))


def lookalike_addresses(value: str, actual: tuple[str, ...]) -> tuple[str, ...]:
    """Addresses spelled in a From:/Sender: value's display names, comments or encoded
    words that differ from its actual addresses, once the value is read the way a
    person reads it: encoded words decoded, compatibility forms folded (full-width
    ``＠`` is ``@``, NFKC) and quoting backslashes dropped (``"evil\\@evil.com"``).
    Pure, so remembered per (value, actual): bulk mail repeats its From:."""
    if len(value) <= CACHED_TEXT:
        return _lookalikes_cached(value, actual)
    return HeaderScanner().lookalikes(value, actual)


_lookalikes_cached = functools.lru_cache(maxsize=4096)(lambda value, actual: HeaderScanner().lookalikes(value, actual))


def decoded_subject(value: str) -> str:
    text = HeaderScanner().decode_words(value) if "=?" in value else value
    return " ".join(text.split())[:200]


# ---------------------------------------------------------------------------
# The one-pass header scanner

_SPECIALS = frozenset('()<>[]:;@\\,."')
_WSP = frozenset(" \t")
_NOT_IN_ADDRESS_LIKE = frozenset(' \t\r\n<>()[]",;:@\\')


def _atext(ch: str) -> bool:
    """RFC 5322 atext, with RFC 6532's non-ASCII (and bytes that were not UTF-8)."""
    code = ord(ch)
    if code >= 0x80:
        return not 0x80 <= code <= 0x9F
    return 0x21 <= code <= 0x7E and ch not in _SPECIALS


class HeaderScanner:
    """One-pass readers for From:/Sender: values. ``steps`` counts the characters
    examined (some twice: a mailbox is first tried as a bare addr-spec), so tests can
    check that the work stays proportional to the input."""

    def __init__(self) -> None:
        self.steps = 0

    # -- RFC 5322 mailbox-list ---------------------------------------------------

    def addresses(self, value: str) -> tuple[str, ...] | None:
        """``mailbox *("," mailbox)`` with CFWS; groups, routes, empty list members and
        ``<>`` are refused (None)."""
        found: list[str] = []
        pos = 0
        while True:
            parsed = self._mailbox(value, pos)
            if parsed is None:
                return None
            address, end = parsed
            found.append(address)
            after = self._cfws(value, end)
            if after is None:
                return None
            if after == len(value):
                return tuple(found)
            if value[after] != ",":
                return None
            pos = after + 1

    def _mailbox(self, value: str, pos: int) -> tuple[str, int] | None:
        start = self._cfws(value, pos)
        if start is None or start == len(value):
            return None
        # A bare addr-spec, when what follows it can end a mailbox.
        end = self._addr_spec(value, start)
        if end is not None:
            after = self._cfws(value, end)
            if after is not None and (after == len(value) or value[after] == ","):
                return value[start:end], end
        # Otherwise: [display-name] "<" addr-spec ">".
        pos = start
        words = 0
        while pos < len(value) and value[pos] != "<":
            self.steps += 1
            ch = value[pos]
            if ch == '"':
                end = self._quoted(value, pos)
                if end is None:
                    return None
                words += 1
                pos = end
            elif ch == "." and words:  # obs-phrase: "John Q. Public"
                pos += 1
            elif _atext(ch):
                while pos < len(value) and _atext(value[pos]):
                    self.steps += 1
                    pos += 1
                words += 1
            else:
                return None
            after = self._cfws(value, pos)
            if after is None:
                return None
            pos = after
        if pos == len(value):
            return None
        end = self._addr_spec(value, pos + 1)
        if end is None or end >= len(value) or value[end] != ">":
            return None
        return value[pos + 1 : end], end + 1

    def _addr_spec(self, value: str, pos: int) -> int | None:
        """End of ``local-part "@" domain`` starting at ``pos`` (no CFWS inside)."""
        if pos >= len(value):
            return None
        if value[pos] == '"':
            end = self._quoted(value, pos)
        else:
            end = self._dot_atom(value, pos)
        if end is None or end >= len(value) or value[end] != "@":
            return None
        pos = end + 1
        if pos < len(value) and value[pos] == "[":
            while pos < len(value) and value[pos] != "]":
                self.steps += 1
                if value[pos] == "\\" or ord(value[pos]) < 0x21 or value[pos] == "\x7f":
                    return None
                pos += 1
            return pos + 1 if pos < len(value) else None
        return self._dot_atom(value, pos)

    def _dot_atom(self, value: str, pos: int) -> int | None:
        start = pos
        while pos < len(value):
            self.steps += 1
            if _atext(value[pos]):
                pos += 1
            elif value[pos] == "." and pos > start and _atext(value[pos - 1]) and pos + 1 < len(value) and _atext(value[pos + 1]):
                pos += 1
            else:
                break
        return pos if pos > start else None

    def _quoted(self, value: str, pos: int) -> int | None:
        """End (after the closing quote) of the quoted-string at ``pos``."""
        pos += 1
        while pos < len(value):
            self.steps += 1
            ch = value[pos]
            if ch == '"':
                return pos + 1
            if ch == "\\":
                if pos + 1 >= len(value) or _control(value[pos + 1]):
                    return None
                pos += 2
                continue
            if _control(ch):
                return None
            pos += 1
        return None

    def _cfws(self, value: str, pos: int) -> int | None:
        """Past white space and (nested) comments; None for an unclosed comment."""
        depth = 0
        while pos < len(value):
            self.steps += 1
            ch = value[pos]
            if depth == 0 and ch not in _WSP and ch != "(":
                return pos
            if ch == "(":
                depth += 1
            elif ch == ")" and depth:
                depth -= 1
            elif ch == "\\" and depth:
                if pos + 1 >= len(value) or _control(value[pos + 1]):
                    return None
                pos += 1
            elif depth and _control(ch):
                return None
            pos += 1
        return pos if depth == 0 else None

    # -- address-looking text ------------------------------------------------------

    def address_like(self, value: str) -> tuple[str, ...]:
        text = self.decode_words(value) if "=?" in value else value
        return self._address_like(text)

    def _address_like(self, text: str) -> tuple[str, ...]:
        """Every ``x@y.z`` run of non-special characters: expanding from each ``@``
        stops at the neighbouring ``@`` at the latest, so each character is looked at
        at most twice."""
        found: dict[str, str] = {}
        at = text.find("@")
        while at >= 0:
            left = at
            while left > 0 and text[left - 1] not in _NOT_IN_ADDRESS_LIKE:
                self.steps += 1
                left -= 1
            right = at + 1
            while right < len(text) and text[right] not in _NOT_IN_ADDRESS_LIKE:
                self.steps += 1
                right += 1
            candidate = text[left:right].strip(".")
            local, _, domain = candidate.rpartition("@")
            if local and "." in domain:
                found.setdefault(candidate.lower(), candidate)
            self.steps += 1
            at = text.find("@", at + 1)
        return tuple(found.values())

    def lookalikes(self, value: str, actual: tuple[str, ...]) -> tuple[str, ...]:
        text = self.decode_words(value) if "=?" in value else value
        self.steps += len(text)
        # NFKC leaves ASCII as it is: the common From: skips the normalizer.
        text = (text if text.isascii() else unicodedata.normalize("NFKC", text)).replace("\\", "")
        own = {unicodedata.normalize("NFKC", a).replace("\\", "").lower() for a in actual}
        return tuple(a for a in self._address_like(text) if a.lower() not in own)

    # -- RFC 2047 encoded words ----------------------------------------------------

    def decode_words(self, text: str) -> str:
        """``=?charset?Q|B?text?=`` decoded; white space between two encoded words
        dropped (RFC 2047 6.2); a word that does not decode is kept as it is. Every
        search resumes past what it examined, so the whole pass is linear."""
        out: list[str] = []
        pos = 0
        last_word_end = -1
        while True:
            start = text.find("=?", pos)
            if start < 0:
                self.steps += len(text) - pos
                out.append(text[pos:])
                return "".join(out)
            self.steps += start - pos
            charset_end = text.find("?", start + 2)
            encoding = text[charset_end + 1 : charset_end + 2].upper() if charset_end >= 0 else ""
            if encoding not in ("Q", "B") or text[charset_end + 2 : charset_end + 3] != "?":
                out.append(text[pos : start + 2])
                self.steps += 2
                pos = start + 2
                continue
            end = text.find("?=", charset_end + 3)
            if end < 0:
                self.steps += len(text) - pos
                out.append(text[pos:])
                return "".join(out)
            self.steps += end + 2 - start
            between = text[pos:start]
            if not (last_word_end == pos and between.strip() == ""):
                out.append(between)
            decoded = _decode_word(text[start + 2 : charset_end], encoding, text[charset_end + 3 : end])
            out.append(decoded if decoded is not None else text[start : end + 2])
            pos = last_word_end = end + 2


def _control(ch: str) -> bool:
    code = ord(ch)
    return (code < 0x20 and ch != "\t") or code == 0x7F


def _decode_word(charset: str, encoding: str, payload: str) -> str | None:
    charset = charset.partition("*")[0]  # RFC 2231 language suffix
    try:
        raw = payload.encode("ascii")
        if encoding == "B":
            data = base64.b64decode(raw + b"=" * (-len(raw) % 4))
        else:
            data = binascii.a2b_qp(raw, header=True)
        return data.decode(charset or "ascii", "replace")
    except (UnicodeError, LookupError, ValueError, binascii.Error):
        return None


@functools.lru_cache(maxsize=4)
def _rfc5322_date(second: int) -> str:
    return email.utils.format_datetime(dt.datetime.fromtimestamp(second, dt.UTC))


@functools.lru_cache(maxsize=4)
def _message_id_stamp(second: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(second))


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What a Received: header says of a TLS session."""

    version: str  # "TLSv1.3"
    cipher: str  # "TLS_AES_256_GCM_SHA384"
    bits: int


def address_literal(ip: str) -> str:
    """RFC 5321 4.1.3: ``[192.0.2.1]``, ``[IPv6:2001:db8::1]``."""
    text = shown(ip, 64)
    return f"[IPv6:{text}]" if ":" in text else f"[{text}]"


def received_header(
    ehlo: str,
    client: str,
    server_name: str,
    protocol: str,
    queue_id: str,
    *,
    rdns: str | None = None,
    tls: TlsInfo | None = None,
    user: str | None = None,
) -> bytes:
    """The trace header (RFC 5321 4.4) as Postfix writes it, folded::

        Received: from client.example (host.example [192.0.2.1])
                (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))
                (Authenticated sender: alice)
                by relay.example (smtpplus) with ESMTPSA id ABCDEFGHIJKL;
                Mon, 30 Nov 2026 14:03:40 +0000

    ``rdns``: the client's forward-confirmed name (None: ``unknown``); ``user``: named
    only when the operator asks for it (``received_names_user``)."""
    stamp = _rfc5322_date(int(time.time()))
    head = _received_head(ehlo, client, server_name, protocol, rdns, tls, user)
    return head + f"{queue_id};\r\n\t{stamp}\r\n".encode("ascii", "replace")


@functools.lru_cache(maxsize=1024)
def _received_head(ehlo: str, client: str, server_name: str, protocol: str, rdns: str | None, tls: TlsInfo | None, user: str | None) -> bytes:
    """A Received: header up to its queue id: the same for every message of a session
    (and of every session of the same client), so built once. Each part is encoded on
    its own: a non-ASCII character becomes the same single ``?`` either way."""
    lines = [f"Received: from {sanitize_ehlo(ehlo)} ({sanitize_ehlo(rdns) if rdns else 'unknown'} {address_literal(client)})"]
    if tls is not None:
        lines.append(f"(using {sanitize_ehlo(tls.version)} with cipher {sanitize_ehlo(tls.cipher)} ({tls.bits}/{tls.bits} bits))")
    if user is not None:
        lines.append(f"(Authenticated sender: {sanitize_ehlo(user)})")
    lines.append(f"by {sanitize_ehlo(server_name)} (smtpplus) with {protocol} id ")
    return "\r\n\t".join(lines).encode("ascii", "replace")


def owned_headers(fields: list[tuple[str, str]], queue_id: str, server_name: str, now: float) -> bytes:
    """The ``Message-ID:`` and ``Date:`` a submission server adds when the message has
    none (RFC 6409 8.3): the server's name in the Message-ID, the time of submission."""
    names = {name for name, _ in fields}
    added = b""
    if "message-id" not in names:
        stamp = _message_id_stamp(int(now))
        added += f"Message-ID: <{stamp}.{queue_id}@{sanitize_ehlo(server_name)}>\r\n".encode("ascii", "replace")
    if "date" not in names:
        added += f"Date: {_rfc5322_date(int(now))}\r\n".encode("ascii")
    return added
