"""The dialogue client against a real SMTP server (the capture sink with STARTTLS + AUTH)."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

from harness.client import (
    MASK,
    SendRequest,
    Stage,
    TlsMode,
    build_message,
    fingerprint,
    format_dialogue,
    parse_header_option,
    run_dialogue,
)
from harness.sink import CaptureSink

PASSWORD = "s3cret-Pa55word"


def _request(sink: CaptureSink, tls_files: dict[str, Path], **kw: object) -> SendRequest:
    base: dict[str, object] = dict(
        port=sink.port,
        cafile=str(tls_files["ca"]),
        auth_user="alice",
        auth_password=PASSWORD,
        mail_from="alice@example.com",
        recipients=["bob@example.net"],
        message=build_message(header_from="alice@example.com", to=["bob@example.net"], body="hello\n.\nworld"),
        timeout=10.0,
    )
    base.update(kw)
    return SendRequest(**base)  # type: ignore[arg-type]


def _cert_fingerprint(tls_files: dict[str, Path]) -> str:
    pem = tls_files["cert"].read_text()
    first = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    return fingerprint(ssl.PEM_cert_to_DER_cert(first))


async def test_full_dialogue_over_starttls_with_auth_plain(tls_sink: CaptureSink, tls_files: dict[str, Path]) -> None:
    result = await run_dialogue(_request(tls_sink, tls_files))
    assert result.ok and result.exit_code == 0
    assert result.tls is not None and result.tls.version.startswith("TLSv1.")
    assert result.tls.peer_fingerprint == _cert_fingerprint(tls_files)
    assert result.replies["auth"].code == 235
    assert result.replies["data"].code == 250
    client_lines = [line.text for line in result.lines if line.direction == "->"]
    assert client_lines[:2] == ["EHLO smtpplus-harness.localdomain", "STARTTLS"]
    assert f"AUTH PLAIN {MASK}" in client_lines
    # The message arrived whole, dot-stuffing undone by the server.
    assert len(tls_sink.messages) == 1
    assert b"hello\r\n.\r\nworld" in tls_sink.messages[0].data
    assert tls_sink.messages[0].auth_user == "alice"


async def test_auth_login_masks_the_password_and_never_shows_it(tls_sink: CaptureSink, tls_files: dict[str, Path]) -> None:
    result = await run_dialogue(_request(tls_sink, tls_files, auth_mech="login"))
    assert result.ok
    text = "\n".join(format_dialogue(result))
    assert PASSWORD not in text
    import base64

    assert base64.b64encode(PASSWORD.encode()).decode() not in text
    assert f"-> {MASK}" in text
    assert "AUTH LOGIN" in text


async def test_untrusted_certificate_fails_the_tls_stage(tls_sink: CaptureSink, tls_files: dict[str, Path]) -> None:
    result = await run_dialogue(_request(tls_sink, tls_files, cafile=None))
    assert result.failed_stage is Stage.TLS and result.exit_code == 3
    assert "--cafile" in result.error
    assert tls_sink.messages == []


async def test_insecure_accepts_any_certificate_and_says_so(tls_sink: CaptureSink, tls_files: dict[str, Path]) -> None:
    result = await run_dialogue(_request(tls_sink, tls_files, cafile=None, insecure=True))
    assert result.ok
    assert result.tls is not None and result.tls.verified is False
    assert any("not verified" in line.text for line in result.lines)


async def test_required_starttls_fails_when_not_offered() -> None:
    sink = CaptureSink("127.0.0.1", 0)  # no TLS context: no STARTTLS in EHLO
    await sink.start()
    try:
        required = await run_dialogue(SendRequest(port=sink.port, mail_from="a@example.com", recipients=["b@example.com"], message=b"x"))
        optional = await run_dialogue(
            SendRequest(port=sink.port, tls=TlsMode.OPTIONAL, mail_from="a@example.com", recipients=["b@example.com"], message=b"Subject: x\r\n\r\nx")
        )
    finally:
        await sink.stop()
    assert required.failed_stage is Stage.TLS and "does not offer STARTTLS" in required.error
    assert optional.ok and optional.tls is None
    assert len(sink.messages) == 1


async def test_connection_refused_is_the_connect_stage(refused_port: int) -> None:
    result = await run_dialogue(SendRequest(port=refused_port, timeout=5))
    assert result.failed_stage is Stage.CONNECT and result.exit_code == 2
    assert "refused" in result.error


async def test_quit_after_stops_early_without_failing(tls_sink: CaptureSink, tls_files: dict[str, Path]) -> None:
    result = await run_dialogue(_request(tls_sink, tls_files, quit_after="auth"))
    assert result.ok and result.stopped_after == "auth"
    assert "mail" not in result.replies
    assert [line.text for line in result.lines if line.direction == "->"][-1] == "QUIT"
    assert tls_sink.messages == []


async def test_rcpt_refusals_are_recorded_per_recipient(tls_files: dict[str, Path]) -> None:
    from harness.client import client_tls_context
    from harness.sink import Chaos
    from tests.harness.conftest import server_context

    sink = CaptureSink("127.0.0.1", 0, tls_context=server_context(tls_files), accept_auth=True, chaos=Chaos(perm_match="bad*"))
    await sink.start()
    try:
        context = client_tls_context(cafile=str(tls_files["ca"]))
        some = await run_dialogue(
            SendRequest(port=sink.port, tls_context=context, mail_from="a@example.com", recipients=["bad@x.example", "good@x.example"], message=b"Subject: s\r\n\r\nbody")
        )
        none = await run_dialogue(
            SendRequest(port=sink.port, tls_context=context, mail_from="a@example.com", recipients=["bad@x.example"], message=b"Subject: s\r\n\r\nbody")
        )
    finally:
        await sink.stop()
    assert some.ok and some.accepted_recipients == ["good@x.example"]
    assert [r.code for _, r in some.recipient_replies] == [550, 250]
    assert none.failed_stage is Stage.RCPT and none.exit_code == 6
    assert none.decisive_reply is not None and none.decisive_reply.code == 550
    assert none.decisive_reply.enhanced == "5.1.1"


def test_build_message_headers_replace_and_remove_defaults() -> None:
    data = build_message(header_from="a@example.com", to=["b@example.com"], subject="s", headers=[("From", ""), ("X-Tag", "t")], priority=2, body="b")
    head = data.split(b"\r\n\r\n")[0].decode()
    assert "From:" not in head
    assert "X-Priority: 2" in head and "X-Tag: t" in head and "Subject: s" in head
    with_data = build_message(header_from=None, headers=[("X-A", "1")], data=b"Subject: file\r\n\r\nbody\r\n")
    assert with_data == b"X-A: 1\r\nSubject: file\r\n\r\nbody\r\n"


def test_header_option_parsing_names_the_fix() -> None:
    assert parse_header_option("X-Tag:  v ") == ("X-Tag", "v")
    try:
        parse_header_option("no colon here")
    except ValueError as exc:
        assert "Name: value" in str(exc)
    else:
        raise AssertionError("a header without a colon must be refused")


def test_fingerprint_format() -> None:
    value = fingerprint(b"abc")
    assert value.startswith("SHA256:") and value[7:].replace(":", "").lower() == hashlib.sha256(b"abc").hexdigest()
