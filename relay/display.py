"""One sanitizer for text from outside on its way to a person or a log.

Every string that came from a client, a next hop or an operator's input (headers,
addresses, replies, list and member names, command lines) passes :func:`clean` before
it reaches CLI output, a console widget, a log line or an event. Terminals act on more
than colour codes: OSC 52 writes the clipboard, OSC 0 sets the window title, DCS and CSI
move the cursor, and bidi overrides reorder what is shown. Rich strips colour and cursor
codes but not these, so the escaping happens here, once, as visible text.
"""

from __future__ import annotations

# Unicode "format" characters that reorder or hide text (bidi embeddings, overrides and
# isolates, zero-width joiners are left alone: they are harmless in names).
_BIDI = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


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
    if any(needs_escape(ch) for ch in value):
        value = "".join(
            ch if (not needs_escape(ch) or (keep_newlines and ch == "\n")) else _escape_char(ch)
            for ch in value
        )
    if limit is not None and len(value) > limit:
        value = value[: max(limit - 1, 0)] + "…"
    return value


def clean_bytes(data: bytes, limit: int | None = None) -> str:
    """Raw bytes from the wire as safe text: invalid UTF-8 as ``\\xNN``, then :func:`clean`."""
    return clean(data.decode("utf-8", "backslashreplace"), limit)
