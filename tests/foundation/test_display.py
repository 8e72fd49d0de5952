"""The one display sanitizer: nothing a terminal acts on survives it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.display import clean, clean_bytes, needs_escape

OSC52 = "\x1b]52;c;ZXZpbA==\x07"
OSC0 = "\x1b]0;owned\x1b\\"
CSI = "\x1b[31mred\x1b[0m"
C1_CSI = "\x9b31m"
BIDI = "abc\u202etxt.exe"


def test_terminal_sequences_become_visible_text() -> None:
    assert clean(OSC52) == "\\x1b]52;c;ZXZpbA==\\x07"
    assert clean(OSC0) == "\\x1b]0;owned\\x1b\\"
    assert clean(CSI) == "\\x1b[31mred\\x1b[0m"
    assert clean(C1_CSI) == "\\x9b31m"
    assert clean(BIDI) == "abc\\u202etxt.exe"
    assert clean("line1\nline2\r") == "line1\\x0aline2\\x0d"
    assert clean("a\nb", keep_newlines=True) == "a\nb"


def test_plain_text_is_untouched_and_limit_marks_the_cut() -> None:
    assert clean("Ünïcode — fine\tTAB") == "Ünïcode — fine\tTAB"
    assert clean("x" * 10, limit=5) == "xxxx…"
    assert clean_bytes(b"ok\xff\x1b") == "ok\\xff\\x1b"


@given(st.text())
def test_no_control_character_survives(text: str) -> None:
    assert not any(needs_escape(ch) for ch in clean(text))


def test_the_fast_check_agrees_with_needs_escape_on_every_code_point() -> None:
    from relay.display import _UNSAFE

    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        ch = chr(code)
        assert (_UNSAFE.match(ch) is not None) == needs_escape(ch), hex(code)
