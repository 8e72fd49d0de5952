"""Pure transformations of a message on its way to a next hop.

``fold_long_lines(data, limit=998) -> Folded``
    Breaks every line longer than ``limit`` octets (RFC 5321 §4.5.3.1.6) as Postfix's
    ``smtp_line_length_limit`` does: by inserting CRLF + SPACE (in a body, one extra
    line starting with a space). A header line is folded before its own whitespace
    where it has some, so unfolding gives back the same text. A break never splits a
    UTF-8 sequence.
``downgrade_8bit(data) -> Downgraded``
    RFC 6152 §3: for a next hop without 8BITMIME, every MIME leaf whose body holds
    8-bit octets is re-encoded — ``text/*`` as quoted-printable, anything else as
    base64 — walking ``multipart/*`` and ``message/rfc822``. Every other byte stays as
    it was, so a reader (the email package, a mail client) decodes the same content.
``needs_smtputf8(mail_from, recipients, data)``
    Whether the envelope or the header section holds non-ASCII (RFC 6531).

Messages are bytes with CRLF line ends (as the SMTP side stores them).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

LINE_LIMIT = 998  # octets, without the CRLF
CRLF = b"\r\n"
_HEADER_PARSER = BytesHeaderParser(policy=compat32)
_CTE_LINE = re.compile(rb"^content-transfer-encoding\s*:", re.IGNORECASE)
_MIME_VERSION = re.compile(rb"^mime-version\s*:", re.IGNORECASE | re.MULTILINE)
_IDENTITY_ENCODINGS = {"", "7bit", "8bit", "binary"}


# ---------------------------------------------------------------------------
# Long lines


@dataclass(frozen=True, slots=True)
class Folded:
    data: bytes
    lines_folded: int  # original lines that were longer than the limit
    longest: int  # octets of the longest original line


def fold_line(line: bytes, limit: int = LINE_LIMIT) -> list[bytes]:
    """``line`` (no CRLF) as pieces of at most ``limit`` octets; every piece after the
    first starts with the inserted space. ``pieces[0] + b"".join(p[1:] for p in
    pieces[1:]) == line``."""
    if limit < 8:
        raise ValueError("line limit too small")
    if len(line) <= limit:
        return [line]
    pieces: list[bytes] = []
    rest = line
    room = limit
    while len(rest) > room:
        cut = _utf8_boundary(rest, room)
        pieces.append(rest[:cut] if not pieces else b" " + rest[:cut])
        rest = rest[cut:]
        room = limit - 1  # later pieces carry the inserted space
    pieces.append(rest if not pieces else b" " + rest)
    return pieces


def fold_header_line(line: bytes, limit: int = LINE_LIMIT) -> list[bytes]:
    """A header field line as RFC 5322 §2.2.3 folds it: break before existing
    whitespace where there is some (unfolding then gives back exactly ``line``),
    else as :func:`fold_line` does."""
    pieces: list[bytes] = []
    rest = line
    while len(rest) > limit:
        at = max(rest.rfind(b" ", 1, limit + 1), rest.rfind(b"\t", 1, limit + 1))
        if at <= 0 or (pieces and at == 0):
            break
        pieces.append(rest[:at])
        rest = rest[at:]
    if len(rest) > limit:
        tail = fold_line(rest, limit)
        return pieces + tail
    return [*pieces, rest]


def _utf8_boundary(data: bytes, cut: int) -> int:
    """``cut`` moved back (at most 3 octets) so it does not split a UTF-8 sequence."""
    for back in range(4):
        at = cut - back
        if at <= 0:
            break
        if not 0x80 <= data[at] <= 0xBF:  # not a continuation octet: a sequence starts here
            return at
    return cut  # not UTF-8 anyway: cut where the limit is


def fold_long_lines(data: bytes, limit: int = LINE_LIMIT) -> Folded:
    lines = data.split(CRLF)
    folded = 0
    longest = 0
    out: list[bytes] = []
    in_header = True
    for line in lines:
        longest = max(longest, len(line))
        if len(line) > limit:
            folded += 1
            out.extend(fold_header_line(line, limit) if in_header else fold_line(line, limit))
        else:
            out.append(line)
        if not line:
            in_header = False
    if not folded:
        return Folded(data, 0, longest)
    return Folded(CRLF.join(out), folded, longest)


# ---------------------------------------------------------------------------
# 8-bit → 7-bit (RFC 6152 §3)


@dataclass(frozen=True, slots=True)
class Downgraded:
    data: bytes
    parts: int  # MIME leaves re-encoded
    seven_bit: bool  # the result is all ASCII (8-bit header text, for one, cannot be fixed here)


def downgrade_8bit(data: bytes) -> Downgraded:
    if data.isascii():
        return Downgraded(data, 0, True)
    out, parts = _entity(data, top=True, default_type="text/plain")
    return Downgraded(out, parts, out.isascii())


def _split_entity(entity: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block without its final CRLF, separator, body)."""
    if entity.startswith(CRLF):
        return b"", CRLF, entity[2:]
    end = entity.find(b"\r\n\r\n")
    if end < 0:
        return entity, b"", b""
    return entity[:end], b"\r\n\r\n", entity[end + 4 :]


def _entity(entity: bytes, *, top: bool, default_type: str) -> tuple[bytes, int]:
    head, separator, body = _split_entity(entity)
    if body.isascii():
        return entity, 0
    headers = _HEADER_PARSER.parsebytes(head + b"\r\n\r\n")
    has_type = headers.get("content-type") is not None
    ctype = headers.get_content_type() if has_type else default_type
    maintype = ctype.split("/")[0]
    if maintype == "multipart":
        boundary = headers.get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            return entity, 0
        new_body, parts = _multipart(body, boundary.encode("ascii", "surrogateescape"), ctype)
        return head + separator + new_body, parts
    if ctype == "message/rfc822":
        # message/* may not be base64/QP encoded (RFC 2046 §5.2.1): encode inside it.
        inner, parts = _entity(body, top=False, default_type="text/plain")
        if parts:
            head = _set_header(head, b"Content-Transfer-Encoding", b"7bit" if inner.isascii() else b"8bit")
        return head + separator + inner, parts
    encoding = str(headers.get("content-transfer-encoding", "")).strip().lower()
    if encoding not in _IDENTITY_ENCODINGS:
        return entity, 0  # says it is encoded already: not ours to second-guess
    if maintype == "text":
        new_body, cte = encode_quoted_printable(body), b"quoted-printable"
    else:
        new_body, cte = encode_base64(body), b"base64"
    head = _set_header(head, b"Content-Transfer-Encoding", cte)
    if top and not _MIME_VERSION.search(head):
        head = _set_header(head, b"MIME-Version", b"1.0")
    if top and not has_type and _is_utf8(body):
        # No Content-Type means us-ascii (RFC 2045 §5.2); encoded, 8-bit text would
        # decode as garbage. UTF-8 is what such a body almost always is.
        head = _set_header(head, b"Content-Type", b"text/plain; charset=utf-8")
    return head + b"\r\n\r\n" + new_body, 1


def _multipart(body: bytes, boundary: bytes, ctype: str) -> tuple[bytes, int]:
    """Re-encode each part between the delimiter lines; the delimiters, preamble
    and epilogue stay byte for byte."""
    lines = body.split(CRLF)
    delimiter = b"--" + boundary
    default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
    out: list[bytes] = []
    part: list[bytes] | None = None  # lines of the part being collected
    closed = False
    parts = 0
    for line in lines:
        if not closed and line.startswith(delimiter):
            rest = line[len(delimiter) :]
            is_close = rest.startswith(b"--")
            if is_close or not rest.strip(b" \t"):
                if part is not None:
                    new, n = _entity(CRLF.join(part), top=False, default_type=default)
                    parts += n
                    out.append(new)
                out.append(line)
                part = None if is_close else []
                closed = is_close
                continue
        if part is not None:
            part.append(line)
        else:
            out.append(line)
    if part is not None:  # no closing delimiter: the last part runs to the end
        new, n = _entity(CRLF.join(part), top=False, default_type=default)
        parts += n
        out.append(new)
    return CRLF.join(out), parts


def _set_header(head: bytes, name: bytes, value: bytes) -> bytes:
    """``head`` without any ``name`` field (continuation lines included), plus ``name: value``."""
    pattern = re.compile(rb"^" + re.escape(name) + rb"\s*:", re.IGNORECASE)
    kept: list[bytes] = []
    dropping = False
    for line in head.split(CRLF) if head else []:
        if line[:1] in (b" ", b"\t") and dropping:
            continue
        dropping = bool(pattern.match(line))
        if not dropping:
            kept.append(line)
    kept.append(name + b": " + value)
    return CRLF.join(kept)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode_quoted_printable(body: bytes) -> bytes:
    """Quoted-printable, line by line: CRLF stays the hard line break; a bare CR or LF
    inside a line is encoded, so decoding gives back exactly ``body``."""
    out = []
    for line in body.split(CRLF):
        encoded = binascii.b2a_qp(line, quotetabs=False, istext=False, header=False)
        # istext=False: every literal LF in the output is a soft break ("=\n").
        out.append(encoded.replace(b"=\n", b"=\r\n"))
    return CRLF.join(out)


def encode_base64(body: bytes) -> bytes:
    return base64.encodebytes(body).replace(b"\n", CRLF)


# ---------------------------------------------------------------------------
# SMTPUTF8


def header_block(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[:end]


def needs_smtputf8(mail_from: str, recipients: Sequence[str], data: bytes) -> bool:
    """RFC 6531: a non-ASCII address in the envelope or non-ASCII header text."""
    if not mail_from.isascii() or not all(r.isascii() for r in recipients):
        return True
    return not header_block(data).isascii()

