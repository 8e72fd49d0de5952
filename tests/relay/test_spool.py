"""Issue 11, items 4 and 5: NUL refused; message data spooled as it arrives, within
a global in-flight byte budget (452 4.3.1 beyond it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.message import header_section_at
from relay.reasons import Reason
from relay.spool import MEMORY_LIMIT, Spool
from relay.writer import REPLY_NO_SPACE
from tests.relay.support import (
    Raw,
    Seeded,
    events,
    relay_config,
    running_relay,
    settle,
    split_trace,
    stored_body,
    stored_messages,
)
from tests.relay.test_replies import authed_raw


async def _send(raw: Raw, data: bytes) -> tuple[int, str]:
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
    assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
    assert (await raw.command("DATA"))[0] == 354
    await raw.send(data + b".\r\n")
    return await raw.reply(seconds=60)


def _big(lines: int, line: bytes = b"x" * 76 + b"\r\n") -> bytes:
    return b"From: x@a.example\r\nSubject: big\r\n\r\n" + line * lines


async def test_nul_in_message_data_is_554(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files)) as relay:
        raw = await authed_raw(relay, tls_files)
        assert await _send(raw, b"From: x@a.example\r\n\r\nhi\x00there\r\n") == (554, "554 5.6.0 Message contains NUL characters")
        code, _ = await _send(raw, b"From: x@a.example\r\n\r\nclean\r\n")  # the session goes on
        assert code == 250
        await raw.close()
        await settle(relay)
        assert len(events(seeded.store_path, reason=str(Reason.MESSAGE_NUL))) == 1
    assert len(stored_messages(seeded.store_path)) == 1


async def test_a_big_message_is_spooled_and_stored_exactly(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files)) as relay:
        assert relay.context is not None
        raw = await authed_raw(relay, tls_files)
        data = _big(40_000) + b"..dot-stuffed\r\n"  # ~3 MB
        code, text = await _send(raw, data)
        assert code == 250, text
        # A broken client's bare LF in a big message: fixed on the way in.
        code, text2 = await _send(raw, _big(20_000, b"y" * 40 + b"\n") + b"end\r\n")
        assert code == 250, text2
        await raw.close()
        assert relay.context.inflight.used == 0  # every byte given back
        assert relay.context.inflight.peak >= 3 * 1024 * 1024
    body = stored_body(seeded.store_path, text.rsplit(" ", 1)[1])
    assert body.startswith(b"Received: from client.test")
    assert split_trace(body)[2] == data.replace(b"\r\n..dot", b"\r\n.dot")
    body2 = stored_body(seeded.store_path, text2.rsplit(" ", 1)[1])
    assert body2.endswith(b"y" * 40 + b"\r\nend\r\n") and body2.count(b"\n") == body2.count(b"\r\n")


async def test_the_in_flight_budget_answers_452(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = relay_config(tmp_path, tls_files, inflight_bytes_limit=4 * 1024 * 1024)
    async with running_relay(seeded.store_path, config) as relay:
        assert relay.context is not None
        first, second = await authed_raw(relay, tls_files), await authed_raw(relay, tls_files)
        # The first client holds 3 MB in flight (its end of data not sent yet) ...
        for raw in (first, second):
            assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
            assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
            assert (await raw.command("DATA"))[0] == 354
        await first.send(_big(40_000))
        for _ in range(200):
            if relay.context.inflight.used >= 3 * 1024 * 1024:
                break
            await asyncio.sleep(0.05)
        # ... so the second one's 3 MB do not fit.
        await second.send(_big(40_000) + b".\r\n")
        assert await second.reply(seconds=60) == (452, REPLY_NO_SPACE)
        await first.send(b".\r\n")
        assert (await first.reply(seconds=60))[0] == 250
        # Budget given back: the second client's retry fits.
        assert (await _send(second, _big(40_000)))[0] == 250
        await first.close()
        await second.close()
        await settle(relay)
        assert relay.context.counters["inflight_refused"] == 1
        assert relay.context.inflight.used == 0
        [event] = events(seeded.store_path, reason=str(Reason.SERVER_BUSY))
        assert "over 4194304 bytes" in event.detail


def test_the_spool_moves_to_a_file_past_its_memory_limit(tmp_path: Path) -> None:
    spool = Spool(b"Received: x\r\n", directory=str(tmp_path))
    spool.write(b"From: a@a.example\r\n\r\n")
    assert not spool.spooled
    for _ in range(MEMORY_LIMIT // 10):
        spool.write(b"123456789\n")
    assert spool.spooled
    data = spool.finish()
    assert not isinstance(data, bytes)  # a mapped file, not a copy in memory
    assert data[:13] == b"Received: x\r\n" and len(data) == spool.size
    assert header_section_at(data, spool.prefix_length, 1000) == b"From: a@a.example\r\n"
    assert header_section_at(data, spool.prefix_length, 10) is None
    spool.close()
    assert header_section_at(b"\r\nbody", 0, 10) == b""
    assert header_section_at(b"A: b\r\n", 0, 10) == b"A: b\r\n"  # no empty line: all of it
