"""Bounce details that need no next hop: MTA names, 8-bit originals, NOTIFY rules,
and the undotted server name warning in `smtpplus status`."""

from __future__ import annotations

import email
from email.policy import default as default_policy
from typing import Any

import pytest

from relay.bounce import FailedRecipient, build_dsn, mta_name, wants_report, xtext_decode
from relay.config import server_name_warning
from relay.store.settings import Keys, set_setting


@pytest.mark.parametrize(
    ("hop", "name"),
    [
        ("mx.example.com", "mx.example.com"),
        ("mx.example.com:2525", "mx.example.com"),
        ("127.0.0.1", "[127.0.0.1]"),
        ("127.0.0.1:4454", "[127.0.0.1]"),
        ("::1", "[IPv6:::1]"),
        ("[2001:db8::1]", "[IPv6:2001:db8::1]"),
        (None, None),
    ],
)
def test_remote_mta_is_a_host_name_or_an_address_literal_never_with_a_port(hop: str | None, name: str | None) -> None:
    assert mta_name(hop) == name


def test_notify_decides_who_is_reported() -> None:
    assert wants_report(None, "failed") and not wants_report(None, "relayed")
    assert not wants_report("NEVER", "failed") and not wants_report("never", "relayed")
    assert wants_report("SUCCESS,FAILURE", "failed") and wants_report("SUCCESS,FAILURE", "relayed")
    assert not wants_report("DELAY", "failed") and not wants_report("FAILURE", "relayed")
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"


def dsn(original: bytes, **kw: Any) -> bytes:
    return build_dsn(
        original=original, original_sender="ann@example.com",
        failed=[FailedRecipient("bob@example.net", "550 5.1.1 no such user")],
        queue_id="Q1", arrival=0.0, reporting_mta="relay.example.com", next_hop="127.0.0.1", **kw,
    )


def test_8bit_original_headers_are_declared_and_encoded_so_the_bounce_is_7bit() -> None:
    original = "From: ann@example.com\r\nSubject: Grüße aus Köln\r\n\r\nKörper\r\n".encode()
    data = dsn(original)
    assert data.isascii()
    headers = list(email.message_from_bytes(data, policy=default_policy).iter_parts())[2]
    assert headers.get_content_type() == "text/rfc822-headers" and headers.get_content_charset() == "utf-8"
    assert headers["Content-Transfer-Encoding"] == "quoted-printable"
    assert headers.get_payload(decode=True).decode("utf-8") == "From: ann@example.com\r\nSubject: Grüße aus Köln\r\n"
    assert "Reporting-MTA: dns; relay.example.com" in data.decode() and "Remote-MTA: dns; [127.0.0.1]" in data.decode()


def test_ret_full_returns_the_original_declared_as_8bit_when_it_is() -> None:
    original = "From: ann@example.com\r\nSubject: x\r\n\r\nKörper\r\n".encode()
    data = dsn(original, ret="FULL", envid="abc+2B1", sender="postmaster@example.com")
    report = email.message_from_bytes(data, policy=default_policy)
    assert report["From"].addresses[0].addr_spec == "postmaster@example.com"
    returned = list(report.iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822" and returned["Content-Transfer-Encoding"] == "8bit"
    assert original in data and "Original-Envelope-Id: abc+1" in data.decode("utf-8")


def test_a_server_name_without_a_dot_is_a_warning_with_the_fix() -> None:
    assert server_name_warning("relay.example.com") is None and server_name_warning("[192.0.2.1]") is None
    warning = server_name_warning("vm")
    assert warning is not None and "has no dot" in warning and "server_name" in warning and "--system-sender" in warning


def test_status_shows_the_undotted_server_name_warning(db: Any, cli: Any) -> None:
    set_setting(db, Keys.SERVER_NAME, "vm")
    db.commit()
    result = cli("status")
    assert result.returncode == 3  # no relay alive: LSB "not running"
    out = result.stdout
    assert "warning" in out and "has no dot" in out
    set_setting(db, Keys.SERVER_NAME, "relay.example.com")
    db.commit()
    assert "has no dot" not in cli("status").stdout


def test_non_ascii_addresses_are_reported_as_themselves_never_as_another_address() -> None:
    data = build_dsn(
        original=b"Subject: x\r\n\r\nbody\r\n", original_sender="j\u00f6rg@example.com",
        failed=[
            FailedRecipient("fail@b\u00fccher.example", "550 5.1.1 <fail@b\u00fccher.example>: no such user"),
            FailedRecipient("\u00fcser@example.net", "550 5.1.1 no such user", orcpt="utf-8;\u00fcser@example.net"),
        ],
        queue_id="Q1", arrival=0.0, reporting_mta="relay.example.com", next_hop="127.0.0.1",
    )
    report = email.message_from_string(data.decode("utf-8"), policy=default_policy)  # RFC 6532 header
    assert report["To"].addresses[0].addr_spec == "j\u00f6rg@example.com"
    notice, status, _headers = report.iter_parts()
    text = notice.get_content()  # type: ignore[attr-defined]
    assert "<fail@b\u00fccher.example>" in text and "<\u00fcser@example.net>" in text
    fields = "".join(str(p) for p in status.get_payload())  # type: ignore[union-attr]
    assert fields.isascii()  # message/delivery-status stays 7-bit (RFC 6533 §3 xtext form)
    # An ASCII local part at an IDN domain: the same mailbox with the domain's A-label.
    assert "Final-Recipient: rfc822; fail@xn--bcher-kva.example" in fields
    assert "Final-Recipient: utf-8; \\x{FC}ser@example.net" in fields
    assert "Original-Recipient: utf-8;\\x{FC}ser@example.net" in fields
    assert "Diagnostic-Code: smtp; 550 5.1.1 <fail@b\\x{FC}cher.example>: no such user" in fields
    assert "ser@example.net" not in fields.replace("\\x{FC}ser@example.net", "")


def test_controls_in_addresses_and_replies_cannot_start_a_header_line() -> None:
    data = build_dsn(
        original=b"Subject: x\r\n\r\nbody\r\n", original_sender="ann@example.com\r\nBcc: eve@example.org",
        failed=[FailedRecipient("bob@example.net\nX-Evil: 1\x85\u2028", "550 5.1.1 no\r\nX-Evil: 2")],
        queue_id="Q1", arrival=0.0, reporting_mta="relay.example.com", next_hop=None,
    )
    lines = data.decode("utf-8").split("\r\n")
    assert not any(line.startswith(("Bcc:", "X-Evil:")) for line in lines)
    assert "\n" not in "".join(lines) and "\x85" not in data.decode() and "\u2028" not in data.decode()


def test_the_relays_own_failures_say_x_smtpplus_and_name_no_remote_mta() -> None:
    # RFC 3464 §2.3.6: "smtp" is for a reply an SMTP server sent; Remote-MTA only for a
    # server that answered. A lifetime expiry after the hop's 4xx is still the hop's reply.
    data = build_dsn(
        original=b"Subject: x\r\n\r\nbody\r\n", original_sender="ann@example.com",
        failed=[
            FailedRecipient("bob@example.net", "550 5.1.1 <bob@example.net>: no such user"),
            FailedRecipient(
                "cy@example.net", "552 5.3.4 message size 9000 exceeds size limit 3000 of server 127.0.0.1:25",
                remote=False,
            ),
            FailedRecipient("dee@example.net", "451 4.2.0 busy (queue lifetime exceeded)"),
            FailedRecipient("eve@example.net", "451 4.4.1 example.net is backing off (queue lifetime exceeded)", remote=False),
        ],
        queue_id="Q1", arrival=0.0, reporting_mta="relay.example.com", next_hop="127.0.0.1:25",
    )
    report = email.message_from_bytes(data, policy=default_policy)
    _notice, status, _headers = report.iter_parts()
    _per_message, *groups = status.get_payload()  # type: ignore[misc]
    by = {str(g["Final-Recipient"]).removeprefix("rfc822; "): g for g in groups}
    assert list(by) == ["bob@example.net", "cy@example.net", "dee@example.net", "eve@example.net"]
    assert by["bob@example.net"]["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.net>: no such user"
    assert by["bob@example.net"]["Remote-MTA"] == "dns; [127.0.0.1]"
    assert by["cy@example.net"]["Diagnostic-Code"] == (
        "X-Smtpplus; 552 5.3.4 message size 9000 exceeds size limit 3000 of server 127.0.0.1:25"
    )
    assert by["cy@example.net"]["Remote-MTA"] is None and by["cy@example.net"]["Status"] == "5.3.4"
    assert by["dee@example.net"]["Diagnostic-Code"] == "smtp; 451 4.2.0 busy (queue lifetime exceeded)"
    assert by["dee@example.net"]["Remote-MTA"] == "dns; [127.0.0.1]"
    assert str(by["eve@example.net"]["Diagnostic-Code"]).startswith("X-Smtpplus; 451 4.4.1")
    assert by["eve@example.net"]["Remote-MTA"] is None and by["eve@example.net"]["Status"] == "4.4.1"
