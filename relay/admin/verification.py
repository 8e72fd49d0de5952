"""Sender verification: mail a code, confirm it, check a domain's DNS record, approve.

Nothing turns a pending identity verified except a confirmed code, a DNS record
carrying the identity's own token, or an operator's approval with a reason — the
store records each (and bumps the users' auth version) in one transaction.

Slow parts: :func:`send_code` hashes the code (argon2, ~70 ms) before it takes the
write lock; :func:`confirm_code` checks one hash; :func:`check_dns` waits for DNS (up to
``timeout``). Async callers run them on the store's thread (``AsyncStore.run``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from relay import verification as rules
from relay.dnscheck import DnsResult, choose_resolver
from relay.dnscheck import check_dns as lookup
from relay.store import Connection
from relay.store import verification as store
from relay.store.directory import IdentityInfo, get_identity
from relay.store.errors import InvalidInput
from relay.store.intake import NewMessage
from relay.store.settings import Keys, get_setting
from relay.store.verification import CodeCheck

SYSTEM_MAIL_PRIORITY = 2


@dataclass(frozen=True, slots=True)
class SentCode:
    """A code just created and queued for mailing. ``code`` is the plaintext: it goes
    into the mail and nowhere else (never print or log it)."""

    identity: IdentityInfo
    code: str = field(repr=False)
    queue_id: str = ""
    message_id: int = 0
    sender: str = ""
    expires_at: float = 0.0


def send_code(
    db: Connection,
    address: str,
    *,
    now: float | None = None,
    ttl: float = rules.DEFAULT_CODE_TTL,
    sender: str | None = None,
) -> SentCode:
    """Create (or replace) the code of a pending address and queue the mail that
    carries it: system mail, priority 2, from ``sender`` or the system sender.

    A new code resets the try count and voids the previous one. The store keeps the
    code's hash, the message and a ``code-sent`` event (never the code) in one
    transaction."""
    stamp = time.time() if now is None else now
    if ttl <= 0:
        raise InvalidInput("a code's lifetime must be positive (e.g. --ttl 24h)")
    identity = store.pending_address(db, address)
    mail_from = store.valid_sender(sender) if sender else store.system_sender(db)
    code = rules.generate_code()
    code_hash = rules.hash_code(code)  # argon2: outside the write lock
    expires_at = rules.expiry(stamp, ttl)
    data = rules.code_email(
        address=identity.value,
        code=code,
        sender=mail_from,
        expires_at=expires_at,
        now=stamp,
        server_name=get_setting(db, Keys.SERVER_NAME),
    )
    message = NewMessage(
        mail_from=mail_from,
        recipients=[identity.value],
        data=data,
        origin="system",
        header_priority=3,
        user_priority=SYSTEM_MAIL_PRIORITY,
        priority=SYSTEM_MAIL_PRIORITY,
        header_from=mail_from,
        subject=rules.CODE_SUBJECT,
    )
    detail = f"code for {identity.value} mailed from {mail_from}, valid until {rules.utc_text(expires_at)}"
    identity, queued = store.queue_code(
        db, address, code_hash=code_hash, expires_at=expires_at, message=message, detail=detail, now=stamp
    )
    return SentCode(identity, code, queued.queue_id, queued.message_id, mail_from, expires_at)


def confirm_code(db: Connection, address: str, code: str, *, now: float | None = None) -> CodeCheck:
    """Check a typed code for ``address``; a right one verifies it (method ``code``).
    Each try of a live code counts; after :data:`relay.verification.MAX_ATTEMPTS` a new
    code is needed. ``CodeCheck.message`` is one line for the operator."""
    return store.confirm_code(db, address, code, now=now)


@dataclass(frozen=True, slots=True)
class DnsCheck:
    """A domain's DNS check: the lookup's result, the identity before and after it,
    and how long the lookup took."""

    result: DnsResult
    before: IdentityInfo
    after: IdentityInfo
    seconds: float


def check_dns(
    db: Connection, domain: str, *, resolver: str | None = None, timeout: float = 5.0, tcp: bool = False
) -> DnsCheck:
    """Look up ``domain``'s TXT record (through ``resolver``, else the store setting,
    else $SMTPPLUS_DNS_RESOLVER, else the system's) and record the outcome: the
    identity's own token verifies a pending domain (method ``dns``); anything else
    leaves it as it was. Either way an event says what happened."""
    before = get_identity(db, domain)
    if before.kind != "domain":
        raise InvalidInput(f"{before.value} is an address: DNS verifies domains — use `smtpplus senders send-code`")
    server = choose_resolver(resolver, get_setting(db, Keys.DNS_RESOLVER))
    started = time.monotonic()
    result = lookup(before.value, before.dns_token, server, timeout, tcp=tcp)
    seconds = time.monotonic() - started
    after = store.record_dns_check(db, before.value, result)
    return DnsCheck(result, before, after, seconds)


def approve(db: Connection, identities: Iterable[str], reason: str) -> list[tuple[IdentityInfo, bool]]:
    """An operator's approval of one or many identities, with a reason (e.g. "existing
    account"). Every name is checked before anything changes; one already verified
    is left as it was. Returns (identity, changed) in the order given."""
    return store.approve(db, identities, reason)
