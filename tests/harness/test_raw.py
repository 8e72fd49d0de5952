"""Byte-exact raw sends against a real SMTP server (the capture sink, STARTTLS + AUTH)."""

from __future__ import annotations

from pathlib import Path

from harness.client import MASK, Stage, client_tls_context
from harness.raw import RawSend, parse_reply_lines, raw_send, shown
from harness.scenario import message_fixture
from harness.sink import CaptureSink


def _spec(sink: CaptureSink, tls_files: dict[str, Path], **kw: object) -> RawSend:
    base: dict[str, object] = dict(
        host="127.0.0.1",
        port=sink.port,
        mail_from=b"mallory@bad.example",
        recipients=[b"rcpt@dest.example"],
        payload=b"Subject: raw\r\n\r\nbody\r\n",
        tls_context=client_tls_context(cafile=str(tls_files["ca"])),
        server_hostname="127.0.0.1",
        auth_user="mallory",
        auth_password="pw-never-shown",
        timeout=10.0,
    )
    base.update(kw)
    return RawSend(**base)  # type: ignore[arg-type]


async def test_smuggled_message_stays_text_of_one_message(tls_sink: CaptureSink, tls_files: dict[str, Path]) -> None:
    payload = message_fixture("smuggle-lf-dot-lf.eml")
    assert b"\n.\nMAIL FROM:" in payload  # the fixture really holds the bare-LF variant
    result = await raw_send(_spec(tls_sink, tls_files, payload=payload))
    assert result.ok, result.error
    assert result.tls is not None
    assert result.extra_replies == []
    assert len(tls_sink.messages) == 1
    # Sent byte for byte: the bare LFs reached the server untouched.
    assert b"fake end\n.\nMAIL FROM:<mallory@bad.example>" in tls_sink.messages[0].data


async def test_after_tls_and_auth_the_transcript_masks_auth(tls_sink: CaptureSink, tls_files: dict[str, Path]) -> None:
    result = await raw_send(_spec(tls_sink, tls_files))
    sent = [line.text for line in result.lines if line.direction == "->"]
    assert "STARTTLS" in sent and f"AUTH PLAIN {MASK}" in sent
    assert all("pw-never-shown" not in line.text for line in result.lines)
    assert result.replies["auth"].code == 235


async def test_control_character_goes_out_unchanged(tls_sink: CaptureSink, tls_files: dict[str, Path]) -> None:
    result = await raw_send(_spec(tls_sink, tls_files, recipients=[b"rc\x00pt@dest.example"]))
    # The capture sink accepts anything: what matters is that the NUL went out as is.
    assert any("rc\\x00pt@dest.example" in line.text for line in result.lines if line.direction == "->")
    assert result.recipient_replies and result.recipient_replies[0][0] == "rc\x00pt@dest.example"


async def test_overlong_command_line_gets_a_reply_not_a_hang(tls_sink: CaptureSink, tls_files: dict[str, Path]) -> None:
    result = await raw_send(_spec(tls_sink, tls_files, recipients=[b"rcpt@dest.example> " + b"X" * 2000]))
    assert result.failed_stage is Stage.RCPT
    assert result.decisive_reply is not None and result.decisive_reply.code == 500


async def test_refused_port_is_a_connect_failure(refused_port: int) -> None:
    result = await raw_send(RawSend("127.0.0.1", refused_port, b"a@b.example", [b"c@d.example"], b"x", timeout=5))
    assert result.failed_stage is Stage.CONNECT
    assert result.lines == []


def test_reply_parser_and_transcript_escapes() -> None:
    reply = parse_reply_lines([b"250-first\r\n", b"250 second\r\n"])
    assert reply.code == 250 and reply.text == "first\nsecond"
    assert reply.lines() == ["250-first", "250 second"]
    assert shown(b"a\r\nb\x00") == "a\\r\\nb\\x00"
