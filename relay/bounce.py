"""Delivery status notifications (RFC 3464): bounces and "relayed" reports.

Pure: builds the ``multipart/report; report-type=delivery-status`` message and the
:class:`~relay.store.intake.NewMessage` that queues it as system mail with an empty
envelope sender. Never called for a message whose own sender is empty (no bounce
of a bounce). RFC 3461 is honoured here: ``NOTIFY`` decides which recipients are
reported (:func:`wants_report`), ``RET=HDRS`` returns the headers only (``FULL`` the
whole message), ``ENVID`` and ``ORCPT`` are echoed back.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import idna

from relay.store.intake import NewMessage, new_queue_id
from relay.transcode import encode_quoted_printable

BOUNCE_PRIORITY = 3
LOCAL_DIAGNOSTIC_TYPE = "X-Smtpplus"  # RFC 3464 §2.3.6: a failure no remote server reported
_STATUS = re.compile(r"^\s*(\d)\d\d[\s-]+([245]\.\d{1,3}\.\d{1,3})")
_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")
# C0 and C1 controls (CR and LF among them), DEL, and Unicode's own line and paragraph
# separators: what could end a header line early. Everything else, non-ASCII letters
# included, is part of an address and stays.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# RFC 6533 §3 QCHAR: printable ASCII but SP, "\\", "+" and "=" (those and non-ASCII are
# written \x{HEX} in utf-8-addr-xtext).
_QCHAR = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]")


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    address: str
    reply: str  # the next hop's reply, or our own reason ("552 5.3.4 message size …")
    # The reply came from the next hop: ``Diagnostic-Code: smtp;`` and ``Remote-MTA``.
    # False: the relay's own text, ``Diagnostic-Code: X-Smtpplus;`` and no Remote-MTA.
    remote: bool = True
    action: str = "failed"  # "failed" | "relayed" (delivered to a next hop without DSN)
    orcpt: str | None = None  # the ORCPT= the client gave ("rfc822;ann@example.com", xtext)


def wants_report(notify: str | None, action: str) -> bool:
    """RFC 3461 §4.1: no NOTIFY means failures only; NEVER means nothing; else the
    listed events (SUCCESS covers "relayed")."""
    if notify is None:
        return action == "failed"
    events = {word.strip().upper() for word in notify.split(",")}
    if "NEVER" in events:
        return False
    return ("SUCCESS" if action in ("relayed", "delivered") else "FAILURE") in events


def xtext_decode(value: str) -> str:
    """RFC 3461 §4: ``+XX`` is the octet XX."""
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value)


def mta_name(host: str | None) -> str | None:
    """A next hop as an RFC 3464 ``dns`` MTA name: the host name without a port, an
    address as a literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``)."""
    if not host:
        return None
    name = host.strip()
    if name.count(":") == 1 and name.rsplit(":", 1)[1].isdigit():
        name = name.rsplit(":", 1)[0]  # "host:port": a port is no part of a DNS name
    name = name.strip("[]")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return _clean(name) or None
    return f"[{address}]" if address.version == 4 else f"[IPv6:{address}]"


def status_code(reply: str, default: str = "5.0.0") -> str:
    """The enhanced status code in a reply (``550 5.1.1 …`` → ``5.1.1``), else by class."""
    match = _STATUS.match(reply)
    if match:
        return match.group(2)
    if reply[:1] == "4":
        return "4.0.0"
    return default


def _header_block(original: bytes, limit: int = 64 * 1024) -> bytes:
    end = original.find(b"\r\n\r\n")
    block = original[: end if end >= 0 else min(len(original), limit)][:limit]
    return block.rstrip(b"\r\n") + b"\r\n"


def _returned_part(original: bytes, ret: str | None) -> list[bytes]:
    """The third part: the original's headers (default, ``RET=HDRS``) or the whole
    message (``RET=FULL``). 8-bit headers are declared and quoted-printable encoded,
    so the report itself is 7-bit; a full 8-bit original is declared ``8bit``."""
    if (ret or "").upper() == "FULL":
        cte = b"7bit" if original.isascii() else b"8bit"
        body = original if original.endswith(b"\r\n") else original + b"\r\n"
        return [
            b"Content-Type: message/rfc822",
            b"Content-Description: Undelivered message",
            b"Content-Transfer-Encoding: " + cte,
            b"",
            body,
        ]
    block = _header_block(original)
    if block.isascii():
        head = [b"Content-Type: text/rfc822-headers", b"Content-Description: Undelivered message headers"]
        return [*head, b"", block]
    charset = b"utf-8" if _is_utf8(block) else b"unknown-8bit"
    return [
        b"Content-Type: text/rfc822-headers; charset=" + charset,
        b"Content-Description: Undelivered message headers",
        b"Content-Transfer-Encoding: quoted-printable",
        b"",
        encode_quoted_printable(block),
    ]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _clean(text: str) -> str:
    """One line of printable ASCII (replies may carry anything). Non-ASCII is written
    ``\\x{HEX}`` (RFC 6533's embedded form) rather than dropped: a reply naming
    ``<üser@example.net>`` must not come out naming ``ser@example.net``."""
    return "".join(
        c if 32 <= ord(c) < 127 else f"\\x{{{ord(c):X}}}" if ord(c) > 0x9F else " " for c in _one_line(text)
    ).strip()


def _one_line(text: str) -> str:
    """``text`` on one line: controls become spaces, so no input can start a header
    line of its own; non-ASCII letters are kept (an address is not ours to change)."""
    return _CONTROLS.sub(" ", text).strip()


def utf8_addr_xtext(address: str) -> str:
    """RFC 6533 §3 ``utf-8-addr-xtext``: 7-bit, every character that is not a QCHAR
    written ``\\x{HEX}`` — ``jörg@example.com`` → ``j\\x{F6}rg@example.com``."""
    return "".join(c if _QCHAR.fullmatch(c) else f"\\x{{{ord(c):X}}}" for c in address)


def dsn_address(address: str) -> str:
    """An address for ``Final-Recipient``/``Original-Recipient`` (RFC 3464 §2.3, RFC
    6533 §3): ``rfc822;`` when it is ASCII — or becomes ASCII with its domain's A-label
    (``fail@xn--bcher-kva.example``, the same mailbox) —, else ``utf-8;`` in the 7-bit
    xtext form, so the report part stays 7-bit whatever the bounce travels over."""
    address = _one_line(address)
    if address.isascii():
        return f"rfc822; {address}"
    local, at, domain = address.rpartition("@")
    if at and local.isascii():
        try:
            return f"rfc822; {local}@{idna.encode(domain, uts46=True).decode('ascii')}"
        except (idna.IDNAError, UnicodeError):
            pass  # not a name IDNA can write: the utf-8 form names it as given
    return f"utf-8; {utf8_addr_xtext(address)}"


def _original_recipient(orcpt: str) -> str:
    """The client's ``ORCPT`` (xtext decoded) as given; one in UTF-8 (RFC 6533's
    ``utf-8-addr-unitext``, allowed with SMTPUTF8) in the 7-bit xtext form."""
    decoded = _one_line(xtext_decode(orcpt))
    if decoded.isascii():
        return decoded
    _kind, _, address = decoded.partition(";")
    return f"utf-8;{utf8_addr_xtext(address.strip())}"


def _notification_part(text: list[str]) -> list[str]:
    """The human-readable part: US-ASCII as it was, or UTF-8 in quoted-printable when it
    names a non-ASCII address, so it reads as the sender wrote it and stays 7-bit."""
    body = "\r\n".join(text)
    if body.isascii():
        return ["Content-Type: text/plain; charset=us-ascii", "Content-Description: Notification", "", *text]
    encoded = encode_quoted_printable(body.encode("utf-8") + b"\r\n").decode("ascii").removesuffix("\r\n")
    return [
        "Content-Type: text/plain; charset=utf-8",
        "Content-Description: Notification",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        encoded,
    ]


def build_dsn(
    *,
    original: bytes,
    original_sender: str,
    failed: Sequence[FailedRecipient],
    queue_id: str,
    arrival: float,
    reporting_mta: str,
    next_hop: str | None,
    now: float | None = None,
    ret: str | None = None,
    envid: str | None = None,
    sender: str | None = None,
) -> bytes:
    """The DSN message (CRLF line ends): a human-readable part, the
    ``message/delivery-status`` part and the original headers (``text/rfc822-headers``)
    or, with ``ret="FULL"``, the original (``message/rfc822``). ``next_hop`` is the
    next hop's host name or address; ``sender`` the ``From:`` address (the system
    sender), ``MAILER-DAEMON@<reporting_mta>`` when None."""
    stamp = time.time() if now is None else now
    boundary = f"=_smtpplus_{secrets.token_hex(12)}"
    mta = _clean(reporting_mta) or "localhost"
    remote = mta_name(next_hop)
    # The bounce's own header fields name the real addresses: with a non-ASCII one the
    # bounce goes with SMTPUTF8 (bounce_message), where UTF-8 header text is allowed
    # (RFC 6532); a next hop without SMTPUTF8 refuses it (5.6.7) rather than get it mangled.
    from_address = _one_line(sender or "") or f"MAILER-DAEMON@{mta}"
    failures = [r for r in failed if r.action == "failed"]
    relayed = [r for r in failed if r.action != "failed"]
    subject = "Undelivered Mail Returned to Sender" if failures else "Successful Mail Delivery Report"
    lines = [
        f"From: Mail Delivery System <{from_address}>",
        f"To: <{_one_line(original_sender)}>",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(stamp, localtime=True)}",
        f"Message-ID: <{new_queue_id()}.dsn@{mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
    ]
    text = [f"This is the mail system at {mta}.", ""]
    if failures:
        text += [
            f"Your message (queue id {queue_id}) could not be delivered to",
            "one or more recipients. It has been removed from the queue.",
            "",
        ]
        text += [f"<{_one_line(r.address)}>: {_one_line(r.reply)}" for r in failures]
        text.append("")
    if relayed:
        text += [
            f"Your message (queue id {queue_id}) was handed on to a mail system that does",
            "not send delivery notifications; no further notice will come from it.",
            "",
        ]
        text += [f"<{_one_line(r.address)}>: relayed{f' to {remote}' if remote else ''}" for r in relayed]
        text.append("")
    lines += _notification_part(text)
    lines += [
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
    ]
    if envid:
        lines.append(f"Original-Envelope-Id: {_clean(xtext_decode(envid))}")
    lines += [
        f"Reporting-MTA: dns; {mta}",
        f"X-Smtpplus-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival, localtime=True)}",
    ]
    for r in failed:
        lines.append("")
        if r.orcpt:
            lines.append(f"Original-Recipient: {_original_recipient(r.orcpt)}")
        lines.append(f"Final-Recipient: {dsn_address(r.address)}")
        if r.action == "failed":
            lines += ["Action: failed", f"Status: {status_code(r.reply)}"]
        else:
            lines += ["Action: relayed", f"Status: {status_code(r.reply, '2.0.0') if r.reply[:1] == '2' else '2.0.0'}"]
        # RFC 3464 §2.3.5/§2.3.6: Remote-MTA and the "smtp" diagnostic-type only for a
        # reply a server sent; the relay's own failures (refused before sending, DNS,
        # backing off) get its own type, as Postfix writes "X-Postfix;" for its own.
        if r.remote and remote:
            lines.append(f"Remote-MTA: dns; {remote}")
        if r.reply:
            lines.append(f"Diagnostic-Code: {'smtp' if r.remote else LOCAL_DIAGNOSTIC_TYPE}; {_clean(r.reply)}")
        lines.append(f"Last-Attempt-Date: {email.utils.formatdate(stamp, localtime=True)}")
    lines += ["", f"--{boundary}"]
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"  # non-ASCII only in From:/To: (see above)
    returned = b"\r\n".join(_returned_part(original, ret))
    return head + returned + f"\r\n--{boundary}--\r\n".encode()


def bounce_message(
    *,
    original: bytes,
    original_sender: str,
    failed: Sequence[FailedRecipient],
    queue_id: str,
    arrival: float,
    reporting_mta: str,
    next_hop: str | None,
    list_id: int | None = None,
    list_name: str | None = None,
    now: float | None = None,
    ret: str | None = None,
    envid: str | None = None,
    sender: str | None = None,
) -> NewMessage:
    """The DSN as system mail: empty envelope sender, to the original sender, ``From:``
    the system sender (``sender``)."""
    if not original_sender:
        raise ValueError("no bounce for a message with an empty sender")
    data = build_dsn(
        original=original, original_sender=original_sender, failed=failed, queue_id=queue_id,
        arrival=arrival, reporting_mta=reporting_mta, next_hop=next_hop, now=now, ret=ret, envid=envid,
        sender=sender,
    )
    failures = any(r.action == "failed" for r in failed)
    from_address = _one_line(sender or "") or f"MAILER-DAEMON@{_clean(reporting_mta) or 'localhost'}"
    return NewMessage(
        mail_from="",
        recipients=[original_sender],
        data=data,
        origin="system",
        header_priority=BOUNCE_PRIORITY,
        user_priority=BOUNCE_PRIORITY,
        priority=BOUNCE_PRIORITY,
        header_from=from_address,
        subject="Undelivered Mail Returned to Sender" if failures else "Successful Mail Delivery Report",
        list_id=list_id,
        list_name=list_name,
        body_type=None if data.isascii() else "8BITMIME",
        # Declared when an address in its envelope or header fields is non-ASCII: the
        # only case its headers carry UTF-8 (the report and returned headers are 7-bit).
        smtputf8=not (original_sender.isascii() and from_address.isascii()),
    )
