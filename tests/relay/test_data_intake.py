"""Message data taken a block of whole lines at a time (what has already arrived)
gives exactly what a line at a time gives: the same stored bytes (dots unstuffed),
the same refusal (the limit a message broke first) and the same bare CR/LF
finding — the fast path of ``RelaySMTP._read_data`` changes no outcome."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp import SPOOL_STEP, _DataIntake
from relay.spool import InFlight, Spool

_LINE = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\r\n" not in b),
    st.sampled_from([b"", b".", b"..", b".x", b"a\rb", b"a\nb", b"\0", b"x" * 1200, b"\r", b"\n"]),
)


def _lines(body: list[bytes]) -> list[bytes]:
    # ".\r\n" alone is the end of the data: never inside a message.
    return [line + b"\r\n" for line in body if line + b"\r\n" != b".\r\n"]


def _outcome(intake: _DataIntake, spool: Spool) -> tuple[object, ...]:
    read = intake.read
    data = spool.finish() if read.refusal is None else b""
    return (read.refusal, read.bare_line_ends if read.refusal is None else None,
            bytes(data), intake.size)


def _run(lines: list[bytes], cuts: list[int], limit: int, budget: int, by_block: bool) -> tuple[object, ...]:
    spool = Spool(b"Received: x\r\n")
    intake = _DataIntake(spool, limit, InFlight(budget))
    if not by_block:
        for line in lines:
            intake.line(line, True)
        return _outcome(intake, spool)
    start = 0
    for cut in [*sorted({c for c in cuts if 0 < c < len(lines)}), len(lines)]:
        if cut > start:
            intake.block(b"".join(lines[start:cut]))
            start = cut
    return _outcome(intake, spool)


@settings(max_examples=400, deadline=None)
@given(
    body=st.lists(_LINE, max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=4),
    limit=st.sampled_from([0, 50, 300, 5000]),
    budget=st.sampled_from([0, SPOOL_STEP]),
)
def test_blocks_and_lines_agree(body: list[bytes], cuts: list[int], limit: int, budget: int) -> None:
    lines = _lines(body)
    assert _run(lines, cuts, limit, budget, by_block=True) == _run(lines, cuts, limit, budget, by_block=False)


def test_a_block_unstuffs_each_line_once() -> None:
    spool = Spool()
    intake = _DataIntake(spool, 0, InFlight(0))
    intake.block(b"..a\r\n...b\r\nc.\r\n.d\r\n\r\n")
    assert spool.finish() == b".a\r\n..b\r\nc.\r\nd\r\n\r\n"
    assert not intake.read.bare_line_ends

