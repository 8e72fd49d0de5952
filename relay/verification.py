"""Sender verification rules that need no store: codes, their hashes and expiry, the
code e-mail, and the DNS TXT record format.

Codes are short, so their hashes are argon2id (each guess costs real CPU) and each code
allows only :data:`MAX_ATTEMPTS` tries; the plaintext code exists only in the mail that
carries it and in the hands of the caller that queued that mail.
"""

from __future__ import annotations

import datetime as dt
import enum
import secrets
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

CODE_DIGITS = 8
MAX_ATTEMPTS = 5
DEFAULT_CODE_TTL = 24 * 3600.0
# Codes live a day at most and are tried five times, so a lighter argon2id than the
# password hasher's keeps `confirm` quick while a stolen hash still costs ~10^8 guesses.
_hasher = PasswordHasher(type=Type.ID, time_cost=2, memory_cost=19 * 1024, parallelism=1)

TXT_PREFIX = "smtpplus-verification="


class CodeOutcome(enum.StrEnum):
    """What confirming a code did."""

    VERIFIED = "verified"
    ALREADY_VERIFIED = "already-verified"
    WRONG = "wrong"
    EXPIRED = "expired"
    USED = "used"
    TOO_MANY_TRIES = "too-many-tries"
    UNKNOWN = "unknown"  # no code was ever sent to this address
    MALFORMED = "malformed"  # not a code at all; costs no attempt

    @property
    def ok(self) -> bool:
        return self in (CodeOutcome.VERIFIED, CodeOutcome.ALREADY_VERIFIED)


# ---------------------------------------------------------------------------
# Codes


def generate_code() -> str:
    """A uniformly random code of :data:`CODE_DIGITS` decimal digits."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def normalize_code(text: str) -> str | None:
    """The digits of a typed code (spaces and dashes allowed), or None when it is not
    a code of the right length."""
    digits = "".join(ch for ch in text if ch not in " -\t")
    if len(digits) != CODE_DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    return digits


def format_code(code: str) -> str:
    """``12345678`` → ``1234 5678``: easier to read aloud and to type."""
    half = len(code) // 2
    return f"{code[:half]} {code[half:]}"


def hash_code(code: str) -> str:
    return _hasher.hash(code)


def code_matches(code_hash: str, code: str) -> bool:
    """argon2id verification (tens of ms of CPU): keep it out of write transactions
    and off the event loop."""
    try:
        return _hasher.verify(code_hash, code)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def code_state(*, expires_at: float, attempts: int, used_at: float | None, now: float) -> CodeOutcome | None:
    """Why a stored code can no longer be tried, or None when it can. Used beats
    expired beats locked: the most useful explanation comes first."""
    if used_at is not None:
        return CodeOutcome.USED
    if now >= expires_at:
        return CodeOutcome.EXPIRED
    if attempts >= MAX_ATTEMPTS:
        return CodeOutcome.TOO_MANY_TRIES
    return None


def expiry(now: float, ttl: float = DEFAULT_CODE_TTL) -> float:
    if ttl <= 0:
        raise ValueError("a code's lifetime must be positive")
    return now + ttl


def outcome_message(
    outcome: CodeOutcome,
    address: str,
    *,
    attempts_left: int = 0,
    at: float | None = None,
    method: str | None = None,
) -> str:
    """One line for the operator: what happened and what to do next."""
    again = f"send a new one with `smtpplus senders send-code {address}`"
    when = f" on {utc_text(at)}" if at is not None else ""
    match outcome:
        case CodeOutcome.VERIFIED:
            return f"{address} is verified (code){when}"
        case CodeOutcome.ALREADY_VERIFIED:
            return f"{address} is already verified ({method or 'unknown method'}{when}) — nothing to do"
        case CodeOutcome.WRONG:
            left = f"{attempts_left} tr{'y' if attempts_left == 1 else 'ies'} left" if attempts_left else "no tries left"
            tail = f"; {again}" if not attempts_left else " — check the code in the mail and try again"
            return f"wrong code for {address} ({left}){tail}"
        case CodeOutcome.EXPIRED:
            return f"the code for {address} expired{when}; {again}"
        case CodeOutcome.USED:
            return f"the code for {address} was already used{when}; the address is verified"
        case CodeOutcome.TOO_MANY_TRIES:
            return f"the code for {address} was tried {MAX_ATTEMPTS} times without success; {again}"
        case CodeOutcome.UNKNOWN:
            return f"no code was sent to {address}; send one with `smtpplus senders send-code {address}`"
        case CodeOutcome.MALFORMED:
            return f"a code is {CODE_DIGITS} digits (spaces allowed) — check the code in the mail sent to {address}"
    raise AssertionError(outcome)  # pragma: no cover


def utc_text(ts: float) -> str:
    """A store timestamp as readable UTC, for messages."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---------------------------------------------------------------------------
# The code e-mail


CODE_SUBJECT = "Your smtpplus sender verification code"


def code_email(
    *,
    address: str,
    code: str,
    sender: str,
    expires_at: float,
    now: float,
    server_name: str | None = None,
) -> bytes:
    """The message that carries a code to ``address``, as wire bytes (CRLF lines).

    It says what the code is for and who asked, and tells anyone who did not ask
    to ignore it; it never asks the reader to reply (replies go nowhere useful).
    """
    relay = server_name or "an smtpplus relay"
    body = (
        f"Hello,\n\n"
        f"Someone asked to let {address} send mail through {relay}.\n"
        f"To confirm that this address is yours, give this code to the relay's operator:\n\n"
        f"    {format_code(code)}\n\n"
        f"The code is valid until {utc_text(expires_at)} and can be tried {MAX_ATTEMPTS} times.\n"
        f"If you did not expect this message, ignore it: nothing will be sent in your name.\n"
    )
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = address
    message["Subject"] = CODE_SUBJECT
    message["Date"] = format_datetime(dt.datetime.fromtimestamp(now, dt.UTC))
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body)
    return message.as_bytes()


# ---------------------------------------------------------------------------
# DNS TXT records


def txt_record(token: str) -> str:
    """The TXT value a domain publishes to prove it is the operator's."""
    return f"{TXT_PREFIX}{token}"


def txt_instructions(domain: str, token: str) -> str:
    """The record to publish, in zone-file form."""
    return f'{domain}. IN TXT "{txt_record(token)}"'


def txt_token(value: str) -> str | None:
    """The token of a ``smtpplus-verification=…`` TXT value, or None for other TXT
    values. Surrounding whitespace is forgiven (zone editors add it)."""
    value = value.strip()
    if not value.lower().startswith(TXT_PREFIX):
        return None
    return value[len(TXT_PREFIX) :].strip()
