"""The bytes and parameters to send one message to one hop, given what its EHLO offers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relay.reasons import Reason
from relay.store.queue import Claimed
from relay.transcode import downgrade_8bit, fold_long_lines, needs_smtputf8


@dataclass(slots=True)
class Prepared:
    """A message made fit for one next hop: the bytes to send and the MAIL/RCPT
    parameters, or the refusal when the hop cannot take it at all."""

    data: bytes
    mail_options: list[str]
    encoding: str  # of the envelope addresses
    dsn: bool  # the hop offers DSN: RCPT gets NOTIFY/ORCPT, it reports by itself
    notes: list[tuple[Reason, str]] = field(default_factory=list)
    refusal: str | None = None
    refusal_reason: Reason = Reason.FAILED_NO_SMTPUTF8

    def rcpt_options(self, m: Claimed, rcpt: str) -> list[str]:
        given = m.recipient_dsn.get(rcpt)
        if not self.dsn or given is None:
            return []
        options = [f"NOTIFY={given.notify}"] if given.notify else []
        return options + ([f"ORCPT={given.orcpt}"] if given.orcpt else [])


def size_limit(value: str | None) -> int | None:
    """The limit in a hop's ``SIZE`` keyword (RFC 1870 §4): ``SIZE 200`` → 200; none
    (``SIZE`` alone, ``SIZE 0``, not a number) → None, no limit declared."""
    text = (value or "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def prepare(m: Claimed, supports: Any, hop: str, limit: int | None = None) -> Prepared:
    """What to send to a hop whose EHLO ``supports(keyword)`` says what it offers:
    SMTPUTF8 or a 5.6.7 refusal (RFC 6531 §3.2), 8-bit downgraded without 8BITMIME
    (RFC 6152 §3), long lines folded, SIZE/BODY/DSN parameters passed on, and a 5.3.4
    refusal when the bytes exceed the hop's declared SIZE ``limit`` (RFC 1870 §6)."""
    notes: list[tuple[Reason, str]] = []
    internationalized = needs_smtputf8(m.mail_from, m.recipients, m.data)
    # Needed: a non-ASCII address (no other way to send it), or non-ASCII headers the
    # client declared SMTPUTF8 for. All-ASCII mail goes without it, as Postfix does;
    # 8-bit headers from a client that did not declare it go as they did before.
    envelope_ascii = m.mail_from.isascii() and all(r.isascii() for r in m.recipients)
    needed = not envelope_ascii or (m.smtputf8 and internationalized)
    # Only when needed: SMTPUTF8 on MAIL says the sender vouches for UTF-8 headers, and
    # a client that did not declare it did not (Postfix: smtputf8_autodetect_classes
    # leaves out smtpd mail).
    utf8 = needed and bool(supports("smtputf8"))
    if needed and not utf8:
        refusal = (
            f"550 5.6.7 next hop {hop} does not offer SMTPUTF8, which this message needs "
            "(internationalized address or header) — RFC 6531 §3.2"
        )
        return Prepared(m.data, [], "utf-8", False, notes, refusal)
    data = m.data
    eight_bit = bool(supports("8bitmime"))
    if not eight_bit and not data.isascii():
        down = downgrade_8bit(data)
        data = down.data
        if down.parts:
            notes.append((Reason.DOWNGRADED_8BIT, f"{down.parts} 8-bit MIME part(s) re-encoded to 7-bit: {hop} lacks 8BITMIME"))
    folded = fold_long_lines(data)
    if folded.lines_folded:
        data = folded.data
        notes.append((
            Reason.LINES_FOLDED,
            f"{folded.lines_folded} line(s) over 998 octets folded for {hop} (longest {folded.longest})",
        ))
    if limit is not None and len(data) > limit:
        # RFC 1870 §6: do not send what the hop said it will refuse; fail it here for
        # this destination, as Postfix does (a bounce follows, as for any 5xx).
        refusal = f"552 5.3.4 message size {len(data)} exceeds size limit {limit} of server {hop}"
        return Prepared(data, [], "ascii", False, notes, refusal, Reason.FAILED_SIZE_LIMIT)
    options: list[str] = []
    if supports("size"):
        options.append(f"SIZE={len(data)}")
    if eight_bit and (not data.isascii() or m.body_type == "8BITMIME"):
        options.append("BODY=8BITMIME")
    if utf8:
        options.append("SMTPUTF8")
    dsn = bool(supports("dsn"))
    if dsn and m.dsn_ret:
        options.append(f"RET={m.dsn_ret}")
    if dsn and m.dsn_envid:
        options.append(f"ENVID={m.dsn_envid}")
    # AUTH= (m.mail_auth) is kept, not passed on: it is optional (RFC 4954 §5), Postfix
    # does not send it by default, and aiosmtpd-based hops answer it with 555.
    return Prepared(data, options, "utf-8" if utf8 else "ascii", dsn, notes)

