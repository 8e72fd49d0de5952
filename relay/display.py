"""One sanitizer for text from outside on its way to a person or a log.

Every string that came from a client, a next hop or an operator's input (headers,
addresses, replies, list and member names, command lines) passes :func:`clean` before
it reaches CLI output, a console widget, a log line or an event. Terminals act on more
than colour codes: OSC 52 writes the clipboard, OSC 0 sets the window title, DCS and CSI
move the cursor, and bidi overrides reorder what is shown. Rich strips colour and cursor
codes but not these, so the escaping happens here, once, as visible text.
"""

from __future__ import annotations

import logging
import re

# Unicode "format" characters that reorder or hide text (bidi embeddings, overrides and
# isolates, zero-width joiners are left alone: they are harmless in names).
_BIDI = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


# The same set as :func:`needs_escape`, as one compiled class: the common case (nothing to
# escape) is one C-level scan, which matters on hot paths (a log line per accepted message).
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f" + "".join(sorted(_BIDI)) + "]")


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def needs_escape(ch: str) -> bool:
    """C0 controls (TAB kept), DEL, C1 controls (which include 8-bit CSI, OSC, DCS)
    and bidi controls."""
    code = ord(ch)
    if code < 0x20:
        return ch != "\t"
    return code == 0x7F or 0x80 <= code <= 0x9F or ch in _BIDI


def clean(text: object, limit: int | None = None, *, keep_newlines: bool = False) -> str:
    """``text`` as a single safe line: every control character becomes a visible
    ``\\xNN`` / ``\\uNNNN`` escape (so ESC ] 52 ; … shows as ``\\x1b]52;…``), a backslash
    stays a backslash. ``limit`` caps the result (``…`` marks a cut). ``keep_newlines``
    keeps LF (for multi-line bodies shown as such); CR is always escaped."""
    value = text if isinstance(text, str) else str(text)
    if _UNSAFE.search(value) is not None:
        value = _UNSAFE.sub(lambda m: "\n" if keep_newlines and m.group() == "\n" else _escape_char(m.group()), value)
    if limit is not None and len(value) > limit:
        value = value[: max(limit - 1, 0)] + "…"
    return value


def clean_bytes(data: bytes, limit: int | None = None) -> str:
    """Raw bytes from the wire as safe text: invalid UTF-8 as ``\\xNN``, then :func:`clean`."""
    return clean(data.decode("utf-8", "backslashreplace"), limit)


# Length caps for names an operator types (one line each, shown in tables).
MAX_LIST_NAME = 100
MAX_DESCRIPTION = 2000
MAX_MEMBER_NAME = 200


class BadName(ValueError):
    """An operator-entered name a rule refused; the message is one line naming the fix."""


def check_name(value: str, what: str, limit: int) -> str:
    """``value`` stripped, or :class:`BadName` when it holds a control character
    (newline, ESC, NUL, bidi override, …) or is longer than ``limit`` characters.
    Pure: the store and the CLI share it, so a list named "Line1\\nLine2" never exists."""
    text = value.strip()
    bad = next((ch for ch in text if needs_escape(ch) or ch == "\t"), None)
    if bad is not None:
        raise BadName(
            f"{what} contains a control character ({_escape_char(bad)}) — use plain text on one line"
        )
    if len(text) > limit:
        raise BadName(f"{what} is {len(text):,} characters — keep it to {limit} or fewer")
    return text


class EscapingFilter(logging.Filter):
    """Escapes every record's message (and so its args) with :func:`clean`: a client's
    bytes reach a log line only as visible text — aiosmtpd's own "unrecognised command"
    warnings log what the client sent as it came."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_smtpplus_escaped", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format: show the pieces instead, escaped
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = clean(message)
        record.args = None
        record._smtpplus_escaped = True
        return True


_FILTER = EscapingFilter()

# The loggers that carry client text: ours and aiosmtpd's.
LOGGERS = ("smtpplus", "smtpplus.relay", "smtpplus.delivery", "smtpplus.campaigns", "mail.log")


def install_log_escaping(*logger_names: str) -> None:
    """Put :class:`EscapingFilter` on every handler of the root logger, on Python's
    last-resort handler (used when nothing is configured) and on the named loggers
    (records logged there directly, whatever handler is added later). Idempotent."""
    handlers = list(logging.getLogger().handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    targets: list[logging.Filterer] = [*handlers, *(logging.getLogger(name) for name in logger_names)]
    for target in targets:
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)
