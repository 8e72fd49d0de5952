"""Sender verification in the store: codes mailed to addresses, DNS results for
domains, operator approvals — and the views the CLI and console show.

Nothing here (or anywhere) turns a pending identity verified except a confirmed code,
a DNS record found by :func:`relay.dnscheck.check_dns`, or an operator's approval with
a reason; each goes through :func:`relay.store.directory.mark_verified` (which bumps the
users' ``auth_version`` so relays drop cached authorizations) and leaves an event.

Operators' operations (send a code, confirm, check DNS, approve) are in
:mod:`relay.admin.verification`, which composes the code mail and calls
:func:`queue_code` here. Every function here is quick except :func:`confirm_code` (one
argon2 check, ~30 ms); async callers run them through ``AsyncStore.run``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from relay import policy
from relay import verification as rules
from relay.dnscheck import DnsResult
from relay.reasons import EventKind, Reason
from relay.store.connection import Connection, Row, transaction
from relay.store.directory import (
    IdentityInfo,
    all_identities,
    approve_identities,
    get_identity,
    mark_verified,
)
from relay.store.errors import InvalidInput
from relay.store.events import NewEvent, record_event
from relay.store.intake import NewMessage, Queued, insert_messages
from relay.store.settings import Keys, get_setting
from relay.verification import CodeOutcome

# ---------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """The current code of an address (never its hash)."""

    sent_at: float
    expires_at: float
    attempts: int
    used_at: float | None

    @property
    def attempts_left(self) -> int:
        return max(0, rules.MAX_ATTEMPTS - self.attempts)

    def status(self, now: float | None = None) -> str:
        """``open``, ``used``, ``expired`` or ``too-many-tries``."""
        stamp = time.time() if now is None else now
        state = rules.code_state(expires_at=self.expires_at, attempts=self.attempts, used_at=self.used_at, now=stamp)
        return "open" if state is None else str(state)


@dataclass(frozen=True, slots=True)
class SenderView:
    """One identity as operators see it: state, how and when it was verified, who
    lists it, the TXT record to publish (domains) and its code (addresses)."""

    identity: IdentityInfo
    users: tuple[str, ...]
    code: CodeInfo | None

    @property
    def txt_record(self) -> str | None:
        return self.identity.txt_record if self.identity.kind == "domain" else None

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        i = self.identity
        return {
            "identity": i.value,
            "kind": i.kind,
            "state": i.state,
            "method": i.method,
            "reason": i.reason,
            "verified_at": i.verified_at,
            "users": list(self.users),
            "txt_record": self.txt_record,
            "code": None
            if self.code is None
            else {
                "sent_at": self.code.sent_at,
                "expires_at": self.code.expires_at,
                "attempts": self.code.attempts,
                "attempts_left": self.code.attempts_left,
                "status": self.code.status(now),
            },
            "created_at": i.created_at,
        }


@dataclass(frozen=True, slots=True)
class CodeCheck:
    """The outcome of :func:`confirm_code`; ``message`` is one line for the operator."""

    outcome: CodeOutcome
    identity: IdentityInfo
    attempts_left: int
    message: str

    @property
    def ok(self) -> bool:
        return self.outcome.ok


# ---------------------------------------------------------------------------
# Views


def sender_views(db: Connection, *, state: str | None = None) -> list[SenderView]:
    """Every identity (or those in ``state``: 'pending' | 'verified'), by name."""
    if state not in (None, "pending", "verified"):
        raise InvalidInput(f"unknown state {state!r} — use pending or verified")
    identities = all_identities(db, state=state)
    users: dict[int, list[str]] = {}
    for identity_id, username in db.execute(
        "SELECT ui.identity_id, u.username FROM user_identities ui JOIN users u ON u.id = ui.user_id "
        "ORDER BY u.username"
    ):
        users.setdefault(identity_id, []).append(username)
    codes = {
        row[0]: CodeInfo(*row[1:])
        for row in db.execute("SELECT identity_id, created_at, expires_at, attempts, used_at FROM verification_codes")
    }
    return [SenderView(i, tuple(users.get(i.id, ())), codes.get(i.id)) for i in identities]


def sender_view(db: Connection, value: str) -> SenderView:
    """One identity by address or domain (any case, IDN or punycode)."""
    identity = get_identity(db, value)
    users = tuple(
        r[0]
        for r in db.execute(
            "SELECT u.username FROM user_identities ui JOIN users u ON u.id = ui.user_id "
            "WHERE ui.identity_id = ? ORDER BY u.username",
            (identity.id,),
        )
    )
    return SenderView(identity, users, code_info(db, identity.id))


def code_info(db: Connection, identity_id: int) -> CodeInfo | None:
    row = db.execute(
        "SELECT created_at, expires_at, attempts, used_at FROM verification_codes WHERE identity_id = ?",
        (identity_id,),
    ).fetchone()
    return None if row is None else CodeInfo(*row)


# ---------------------------------------------------------------------------
# Codes


@dataclass(frozen=True, slots=True)
class SystemSender:
    """Which address code mails come from, and why: ``address`` is None when there is
    none, and then ``explanation`` says what to do (one line, for errors and settings)."""

    address: str | None
    source: str  # "setting", "server name", "host name", or "" (none)
    explanation: str


def system_sender_choice(db: Connection) -> SystemSender:
    """The ``Keys.SYSTEM_SENDER`` setting, else ``smtpplus@<server name>`` when the
    relay has published a server name with a dot, else ``smtpplus@<FQDN>`` when the
    server name is this host's single-label name (``vm``) and the host has a dotted
    FQDN. A single-label name never makes a valid address (``smtpplus@vm`` is not of
    the form name@example.com), so without either the operator must set one."""
    configured = get_setting(db, Keys.SYSTEM_SENDER)
    if configured:
        return SystemSender(valid_sender(str(configured)), "setting", "set with --system-sender")
    server_name = get_setting(db, Keys.SERVER_NAME)
    if not server_name:
        return SystemSender(
            None, "", "none: no relay has published a server name yet — start the relay once, or "
            "set one with `smtpplus senders settings --system-sender ADDRESS`"
        )
    name = str(server_name)
    published = get_setting(db, Keys.HOST_FQDN)
    address = default_sender_for(name, str(published) if published else None)
    if address is not None:
        source = "server name" if address == _sender_at(name) else "host name"
        return SystemSender(address, source, f"smtpplus@ + the relay's {source}")
    return SystemSender(
        None, "", f"none: the relay's server name {name!r} has no dot, so smtpplus@{name} is not a valid "
        "address — run `smtpplus senders settings --system-sender ADDRESS` (or give the relay a dotted server_name)"
    )


def default_sender_for(server_name: str, host_fqdn: str | None) -> str | None:
    """``smtpplus@<server name>`` if valid, else ``smtpplus@<host_fqdn>`` if valid, else None."""
    for domain in (server_name, host_fqdn):
        address = _sender_at(domain) if domain else None
        if address is not None:
            return address
    return None


def _sender_at(domain: str) -> str | None:
    try:
        return policy.normalize_address(f"smtpplus@{domain.strip().rstrip('.')}")
    except policy.PolicyError:
        return None


def host_fqdn_for(server_name: str) -> str | None:
    """This host's FQDN, only when ``server_name`` is this host's bare name (the relay's
    default): a lookup of any other name could leave the machine for DNS.

    ``socket.getfqdn`` may itself ask DNS and block for seconds, so this never runs on a
    store thread: the relay calls it once at start, in a worker thread, and publishes
    the answer (``Keys.HOST_FQDN``) for :func:`system_sender_choice` to read."""
    if "." in server_name or server_name.lower() != socket.gethostname().lower():
        return None
    fqdn = socket.getfqdn()
    return fqdn if fqdn.lower().startswith(server_name.lower() + ".") else None


def system_sender(db: Connection) -> str:
    """The address code mails come from (see :func:`system_sender_choice`); InvalidInput
    saying why and what to do when there is none."""
    choice = system_sender_choice(db)
    if choice.address is None:
        raise InvalidInput(f"no system sender for verification mail — {choice.explanation.removeprefix('none: ')}")
    return choice.address


def valid_sender(value: str) -> str:
    """``value`` as a canonical address, or InvalidInput naming it the system sender."""
    try:
        return policy.normalize_address(value)
    except policy.PolicyError as exc:
        raise InvalidInput(f"system sender: {exc}") from None


def queue_code(
    db: Connection,
    address: str,
    *,
    code_hash: str,
    expires_at: float,
    message: NewMessage,
    detail: str,
    now: float,
) -> tuple[IdentityInfo, Queued]:
    """Store a new code's hash for a pending address (replacing any earlier code: the
    try count starts over) and queue ``message``, the mail that carries it, with a
    ``code-sent`` event — one transaction. The message is composed by
    :func:`relay.admin.verification.send_code`; ``detail`` never contains the code."""
    with transaction(db):
        identity = pending_address(db, address)  # re-check under the write lock
        db.execute(
            "INSERT INTO verification_codes(identity_id, code_hash, created_at, expires_at, attempts, used_at) "
            "VALUES (?, ?, ?, ?, 0, NULL) ON CONFLICT(identity_id) DO UPDATE SET code_hash = excluded.code_hash, "
            "created_at = excluded.created_at, expires_at = excluded.expires_at, attempts = 0, used_at = NULL",
            (identity.id, code_hash, now, expires_at),
        )
        (queued,) = insert_messages(db, [message], now=now)
        record_event(
            db,
            NewEvent(
                EventKind.VERIFICATION,
                Reason.CODE_SENT,
                message_id=queued.message_id,
                queue_id=queued.queue_id,
                detail=detail,
                at=now,
            ),
        )
    return identity, queued


def confirm_code(db: Connection, address: str, code: str, *, now: float | None = None) -> CodeCheck:
    """Check a typed code for ``address``; a right one verifies the address (method
    ``code``). Each try of a live code counts, right or wrong, and is reserved before
    the hash is checked, so no more than :data:`relay.verification.MAX_ATTEMPTS` guesses
    are ever evaluated per code, even when tried concurrently.

    Raises NotFound for an unknown identity and InvalidInput for a domain.
    """
    stamp = time.time() if now is None else now
    for _ in range(3):  # a concurrent send-code or confirm can change the row under us
        identity = _address_identity(db, address)
        row = _code_row(db, identity.id)
        if identity.verified:
            if row is not None and row["used_at"] is not None:
                return _finish(db, CodeOutcome.USED, identity, 0, stamp, at=row["used_at"])
            return _finish(db, CodeOutcome.ALREADY_VERIFIED, identity, 0, stamp)
        if row is None:
            return _finish(db, CodeOutcome.UNKNOWN, identity, 0, stamp)
        digits = rules.normalize_code(code)
        if digits is None:
            return _finish(db, CodeOutcome.MALFORMED, identity, _left(row["attempts"]), stamp)
        blocked = rules.code_state(
            expires_at=row["expires_at"], attempts=row["attempts"], used_at=row["used_at"], now=stamp
        )
        if blocked is not None:
            at = row["expires_at"] if blocked is CodeOutcome.EXPIRED else row["used_at"]
            return _finish(db, blocked, identity, _left(row["attempts"]), stamp, at=at)
        if not _reserve_attempt(db, identity.id, row["code_hash"], stamp):
            continue
        attempts = row["attempts"] + 1
        if not rules.code_matches(row["code_hash"], digits):
            return _finish(db, CodeOutcome.WRONG, identity, _left(attempts), stamp)
        with transaction(db):
            used = db.execute(
                "UPDATE verification_codes SET used_at = ? WHERE identity_id = ? AND code_hash = ? AND used_at IS NULL",
                (stamp, identity.id, row["code_hash"]),
            ).rowcount
            if not used:
                continue
            mark_verified(db, identity.id, "code", None)
            return _finish(db, CodeOutcome.VERIFIED, get_identity(db, identity.value), _left(attempts), stamp)
    raise InvalidInput(f"the code for {address} changed while it was being checked — try again")


def _reserve_attempt(db: Connection, identity_id: int, code_hash: str, now: float) -> bool:
    with transaction(db):
        cur = db.execute(
            "UPDATE verification_codes SET attempts = attempts + 1 WHERE identity_id = ? AND code_hash = ? "
            "AND used_at IS NULL AND attempts < ? AND expires_at > ?",
            (identity_id, code_hash, rules.MAX_ATTEMPTS, now),
        )
    return cur.rowcount == 1


def _finish(
    db: Connection,
    outcome: CodeOutcome,
    identity: IdentityInfo,
    attempts_left: int,
    now: float,
    *,
    at: float | None = None,
) -> CodeCheck:
    if outcome in (CodeOutcome.VERIFIED, CodeOutcome.ALREADY_VERIFIED):
        at = identity.verified_at
    message = rules.outcome_message(
        outcome, identity.value, attempts_left=attempts_left, at=at, method=identity.method
    )
    if outcome is not CodeOutcome.ALREADY_VERIFIED:
        reason = Reason.IDENTITY_VERIFIED if outcome is CodeOutcome.VERIFIED else Reason.CODE_REJECTED
        with transaction(db):
            record_event(db, NewEvent(EventKind.VERIFICATION, reason, detail=f"{identity.value}: {message}", at=now))
    return CodeCheck(outcome, identity, attempts_left, message)


def _left(attempts: int) -> int:
    return max(0, rules.MAX_ATTEMPTS - attempts)


def _code_row(db: Connection, identity_id: int) -> Row | None:
    row: Row | None = db.execute(
        "SELECT code_hash, created_at, expires_at, attempts, used_at FROM verification_codes WHERE identity_id = ?",
        (identity_id,),
    ).fetchone()
    return row


def _address_identity(db: Connection, address: str) -> IdentityInfo:
    identity = get_identity(db, address)
    if identity.kind != "address":
        raise InvalidInput(
            f"{identity.value} is a domain: codes go to addresses — verify it with "
            f"`smtpplus senders check-dns {identity.value}` or approve it"
        )
    return identity


def pending_address(db: Connection, address: str) -> IdentityInfo:
    """The identity of ``address`` if it awaits a code; else InvalidInput saying why not."""
    identity = _address_identity(db, address)
    if identity.verified:
        raise InvalidInput(
            f"{identity.value} is already verified ({identity.method}, {rules.utc_text(identity.verified_at or 0)}) — no code needed"
        )
    return identity


# ---------------------------------------------------------------------------
# DNS and operator approval


def record_dns_check(db: Connection, domain: str, result: DnsResult, *, now: float | None = None) -> IdentityInfo:
    """Apply a DNS lookup's outcome: a found record verifies a pending domain (method
    ``dns``); anything else leaves it as it was. Either way an event says what
    happened. A verified domain never goes back to pending."""
    stamp = time.time() if now is None else now
    identity = get_identity(db, domain)
    if identity.kind != "domain":
        raise InvalidInput(f"{identity.value} is an address: DNS verifies domains — send it a code instead")
    if result.domain != identity.value:
        raise InvalidInput(f"the DNS result is for {result.domain}, not {identity.value}")
    with transaction(db):
        if result.verified and txt_matches(identity, result):
            changed = mark_verified(db, identity.id, "dns", f"TXT record found via {result.resolver}")
            if changed:
                record_event(
                    db,
                    NewEvent(
                        EventKind.VERIFICATION,
                        Reason.IDENTITY_VERIFIED,
                        detail=f"{identity.value} verified by DNS: {result.message}",
                        at=stamp,
                    ),
                )
        else:
            record_event(
                db,
                NewEvent(
                    EventKind.VERIFICATION,
                    Reason.DNS_CHECK_FAILED,
                    detail=f"{result.outcome}: {result.message}",
                    at=stamp,
                ),
            )
    return get_identity(db, identity.value)


def txt_matches(identity: IdentityInfo, result: DnsResult) -> bool:
    """The result found this identity's own token (not a stale or foreign one)."""
    return result.expected == identity.txt_record


def approve(db: Connection, values: Iterable[str], reason: str) -> list[tuple[IdentityInfo, bool]]:
    """An operator's approval of one or many identities with a reason (e.g. "existing
    account"). Every name is checked before anything changes; approving one already
    verified changes nothing. Returns (identity, changed) in the order given."""
    names = list(values)
    if not names:
        raise InvalidInput("name at least one identity to approve")
    with transaction(db):
        results = approve_identities(db, names, reason)
        for identity, changed in results:
            if changed:
                record_event(
                    db,
                    NewEvent(
                        EventKind.VERIFICATION,
                        Reason.IDENTITY_VERIFIED,
                        detail=f"{identity.value} approved by the operator: {identity.reason}",
                    ),
                )
    return results
