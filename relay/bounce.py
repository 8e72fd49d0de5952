"""Delivery status notifications (RFC 3464) for messages that finally failed.

Pure: builds the ``multipart/report; report-type=delivery-status`` message and the
:class:`~relay.store.intake.NewMessage` that queues it as system mail with an empty
envelope sender. Never called for a message whose own sender is empty (no bounce
of a bounce).
"""

from __future__ import annotations

import email.utils
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from relay.store.intake import NewMessage, new_queue_id

BOUNCE_PRIORITY = 3
_STATUS = re.compile(r"^\s*(\d)\d\d[\s-]+([245]\.\d{1,3}\.\d{1,3})")


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    address: str
    reply: str  # the next hop's reply, or our own reason ("queue lifetime exceeded …")
    remote: bool = True  # the reply came from the next hop


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


def _clean(text: str) -> str:
    """One line of printable ASCII (replies may carry anything)."""
    return "".join(c if 32 <= ord(c) < 127 else " " for c in text).strip()


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
) -> bytes:
    """The DSN message (CRLF line ends): a human-readable part, the
    ``message/delivery-status`` part and the original headers (``text/rfc822-headers``)."""
    stamp = time.time() if now is None else now
    boundary = f"=_smtpplus_{secrets.token_hex(12)}"
    mta = _clean(reporting_mta) or "localhost"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        f"To: <{original_sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {email.utils.formatdate(stamp, localtime=True)}",
        f"Message-ID: <{new_queue_id()}.dsn@{mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
        f"This is the mail system at {mta}.",
        "",
        f"Your message (queue id {queue_id}) could not be delivered to",
        "one or more recipients. It has been removed from the queue.",
        "",
    ]
    for r in failed:
        lines.append(f"<{r.address}>: {_clean(r.reply)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        f"Reporting-MTA: dns; {mta}",
        f"X-Smtpplus-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival, localtime=True)}",
    ]
    for r in failed:
        lines += ["", f"Final-Recipient: rfc822; {r.address}", "Action: failed", f"Status: {status_code(r.reply)}"]
        if r.remote and next_hop:
            lines.append(f"Remote-MTA: dns; {_clean(next_hop)}")
        lines.append(f"Diagnostic-Code: smtp; {_clean(r.reply)}")
        lines.append(f"Last-Attempt-Date: {email.utils.formatdate(stamp, localtime=True)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "Content-Description: Undelivered message headers",
        "",
    ]
    head = "\r\n".join(lines).encode("ascii", "replace") + b"\r\n"
    return head + _header_block(original) + f"\r\n--{boundary}--\r\n".encode()


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
) -> NewMessage:
    """The DSN as system mail: empty envelope sender, to the original sender."""
    if not original_sender:
        raise ValueError("no bounce for a message with an empty sender")
    data = build_dsn(
        original=original, original_sender=original_sender, failed=failed, queue_id=queue_id,
        arrival=arrival, reporting_mta=reporting_mta, next_hop=next_hop, now=now,
    )
    return NewMessage(
        mail_from="",
        recipients=[original_sender],
        data=data,
        origin="system",
        header_priority=BOUNCE_PRIORITY,
        user_priority=BOUNCE_PRIORITY,
        priority=BOUNCE_PRIORITY,
        header_from=f"MAILER-DAEMON@{_clean(reporting_mta) or 'localhost'}",
        subject="Undelivered Mail Returned to Sender",
        list_id=list_id,
        list_name=list_name,
    )
