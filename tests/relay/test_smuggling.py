"""SMTP smuggling: only <CRLF>.<CRLF> ends the data. Sent byte for byte over raw streams."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.service import RelayService
from tests.relay.support import Raw, Seeded, stored_body, stored_messages

VARIANTS = [b"\n.\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r\n\x00.\r\n"]
NUL = b"\r\n\x00.\r\n"  # text too, and then refused whole: NUL is not allowed in message data


@pytest.mark.parametrize("end", VARIANTS, ids=[repr(v)[2:-1] for v in VARIANTS])
async def test_smuggled_end_of_data_is_message_text(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path], end: bytes) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert (await raw.login("alice"))[0] == 235
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
    assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
    assert (await raw.command("DATA"))[0] == 354
    # The smuggled transaction is authorized too: only framing decides how many messages.
    smuggled = (
        b"MAIL FROM:<x@a.example>\r\nRCPT TO:<victim@d.example>\r\nDATA\r\n"
        b"From: x@a.example\r\nSubject: smuggled\r\n\r\nsmuggled body"
    )
    await raw.send(b"From: x@a.example\r\nSubject: carrier\r\n\r\ncarrier body" + end + smuggled)
    # Pipelined after the real end of data: a second, legitimate transaction.
    await raw.send(
        b"\r\n.\r\nMAIL FROM:<x@a.example>\r\nRCPT TO:<second@d.example>\r\nDATA\r\n"
        b"From: x@a.example\r\nSubject: second\r\n\r\nsecond body\r\n.\r\n"
    )
    replies = [await raw.reply() for _ in range(5)]
    await raw.close()
    if end == NUL:
        assert replies[0] == (554, "554 5.6.0 Message contains NUL characters")
        assert [code for code, _ in replies[1:]] == [250, 250, 354, 250], replies
        assert [r["subject"] for r in stored_messages(seeded.store_path)] == ["second"]
        return
    assert [code for code, _ in replies] == [250, 250, 250, 354, 250], replies
    rows = stored_messages(seeded.store_path)
    assert [r["subject"] for r in rows] == ["carrier", "second"]
    carrier = stored_body(seeded.store_path, rows[0]["queue_id"])
    # The would-be end of data and the smuggled commands are text of the first message.
    assert b"RCPT TO:<victim@d.example>" in carrier and carrier.endswith(b"smuggled body\r\n")
    # Bare CR and LF are stored as CRLF.
    body = carrier.split(b"\r\n\r\n", 1)[1]
    assert body.count(b"\r") == body.count(b"\n") == body.count(b"\r\n")
