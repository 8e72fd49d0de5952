"""AUTH PLAIN (RFC 4616) and AUTH LOGIN for the session, with the failure limits and
the per-client-address throttle (``relay.auth``).

:class:`SaslCommands` is the part of the session class (``relay.smtp.RelaySMTP``)
that answers AUTH; the session supplies the connection and the event log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from typing import TYPE_CHECKING

from aiosmtpd.smtp import SMTP

from relay.auth import AuthOutcome, throttle_delay
from relay.display import clean, clean_bytes
from relay.reasons import EventKind, Reason
from relay.replies import Replies, reply
from relay.store import StoreUnavailable
from relay.store.directory import AuthRecord

if TYPE_CHECKING:
    from relay.smtp import RelayContext


class Cancelled:
    """The client answered a challenge with ``*``."""


CANCELLED = Cancelled()

log = logging.getLogger("smtpplus.relay")

_FAILURE_DETAILS = {
    Reason.AUTH_UNKNOWN_USER: "unknown user",
    Reason.AUTH_BAD_CREDENTIALS: "wrong password",
    Reason.AUTH_INACTIVE_USER: "user is inactive",
}


def printable(value: bytes) -> str:
    """A login or authorization identity as the client sent it, for events and log lines
    only (never a reply): escaped as every log field is (:func:`relay.display.clean`,
    ESC shows as ``\\x1b``, invalid UTF-8 as ``\\xNN``), at most 64 characters."""
    return clean_bytes(value, 64)


def decode_b64(text: str) -> bytes | None:
    """A SASL response (``=`` is the empty one), or None when it is not base64."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


class SaslCommands(SMTP):
    """AUTH, its mechanisms and the credential check."""

    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    # Supplied by the session.
    ctx: RelayContext
    client_ip: str
    user: AuthRecord | None
    auth_failures: int
    _attempted_user: str | None
    _busy: bool

    def _event(self, kind: EventKind, reason: Reason, detail: str = "") -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _record_before_auth(self) -> None:
        raise NotImplementedError

    async def smtp_AUTH(self, arg: str) -> None:
        if await self.check_helo_needed("EHLO"):
            return
        assert self.session is not None
        # After HELO too (printers and cameras do this; Postfix accepts it).
        if self._tls_protocol is None and not self.ctx.config.allow_plain_auth:
            self._event(EventKind.AUTH, Reason.AUTH_NEEDS_TLS, "AUTH before STARTTLS")
            await self.push(Replies.ENCRYPTION_REQUIRED)
            return
        if self.session.authenticated:
            await self.push(Replies.ALREADY_AUTHENTICATED)
            return
        args = (arg or "").split()
        if not args or len(args) > 2:
            await self.push(Replies.AUTH_SYNTAX)
            return
        mechanism = args[0].upper()
        if mechanism == "PLAIN":
            credentials = await self.auth_PLAIN(args)
        elif mechanism == "LOGIN":
            credentials = await self.auth_LOGIN(args)
        else:
            await self.push(Replies.AUTH_UNKNOWN_MECHANISM)
            return
        if credentials is not None:
            await self._check_credentials(*credentials)

    async def auth_PLAIN(self, args: list[str]) -> tuple[bytes, bytes] | None:  # type: ignore[override]
        """RFC 4616: ``authzid NUL authcid NUL password``; authzid empty or = login."""
        response = args[1] if len(args) == 2 else await self._challenge("")
        if response is None:
            return None
        if isinstance(response, Cancelled):
            await self.push(Replies.AUTH_CANCELLED)
            return None
        blob = decode_b64(response)
        if blob is None:
            await self._auth_failed(Reason.AUTH_MALFORMED, Replies.AUTH_BAD_BASE64, "PLAIN: bad base64")
            return None
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await self._auth_failed(Reason.AUTH_MALFORMED, Replies.AUTH_BAD_PLAIN, "PLAIN: not 3 fields")
            return None
        authzid, login, password = parts
        if authzid and authzid != login:
            self._attempted_user = printable(login)
            await self._auth_failed(
                Reason.AUTH_AUTHZID_MISMATCH, Replies.BAD_CREDENTIALS, f"authorization identity '{printable(authzid)}' is not the login"
            )
            return None
        return login, password

    async def auth_LOGIN(self, args: list[str]) -> tuple[bytes, bytes] | None:  # type: ignore[override]
        """``334 VXNlcm5hbWU6`` (Username:) then ``334 UGFzc3dvcmQ6`` (Password:)."""
        first = args[1] if len(args) == 2 else await self._challenge(self.AuthLoginUsernameChallenge)
        if first is None:
            return None
        if isinstance(first, Cancelled):
            await self.push(Replies.AUTH_CANCELLED)
            return None
        login = decode_b64(first)
        if login is None:
            await self._auth_failed(Reason.AUTH_MALFORMED, Replies.AUTH_BAD_BASE64, "LOGIN: bad base64")
            return None
        second = await self._challenge(self.AuthLoginPasswordChallenge)
        if second is None:
            return None
        if isinstance(second, Cancelled):
            await self.push(Replies.AUTH_CANCELLED)
            return None
        password = decode_b64(second)
        if password is None:
            await self._auth_failed(Reason.AUTH_MALFORMED, Replies.AUTH_BAD_BASE64, "LOGIN: bad base64")
            return None
        return login, password

    async def _challenge(self, text: str) -> str | Cancelled | None:
        """Send ``334 <base64 text>``, return the client's line (None if unusable)."""
        await self.push(reply(Replies.CHALLENGE, challenge=base64.b64encode(text.encode("ascii")).decode("ascii")))
        try:
            line = await self._reader.readline()
        except ValueError:  # longer than the stream limit
            await self._auth_failed(Reason.AUTH_MALFORMED, Replies.AUTH_LINE_TOO_LONG, "AUTH response too long")
            return None
        if not line.endswith(b"\n"):  # EOF
            self._close()
            return None
        text_line = line.strip().decode("ascii", "replace")
        if text_line == "*":
            return CANCELLED
        return text_line

    async def _check_credentials(self, login: bytes, password: bytes) -> None:
        ctx = self.ctx
        username = login.decode("utf-8", "surrogateescape")
        self._attempted_user = printable(login)
        blocked = ctx.limiter.blocked(self.client_ip, username)
        if blocked is not None:
            which = "this client address" if blocked == "client" else f"user '{self._attempted_user}' from this client address"
            self._event(EventKind.AUTH, Reason.AUTH_TOO_MANY_FAILURES, f"failure limit reached for {which}")
            await self.push(Replies.TOO_MANY_FAILURES)
            self._close()
            return
        outcome = await self._checked(login, username, password)
        if outcome is None:
            # The store could not be read: the mechanism failed, not the client (RFC 4954
            # section 6). No failure is counted; the client may try AUTH again.
            await self.push(Replies.AUTH_TEMPORARY_FAILURE)
            return
        if not outcome.ok:
            await self._auth_failed(outcome.reason, Replies.BAD_CREDENTIALS, _FAILURE_DETAILS.get(outcome.reason, ""), username=username)
            return
        assert self.session is not None and outcome.record is not None
        self.session.authenticated = True
        self._record_before_auth()
        self.user = outcome.record
        self._event(EventKind.AUTH, Reason.AUTH_OK, "authenticated over TLS" if self._tls_protocol else "authenticated without TLS")
        await self.push(Replies.AUTH_OK)

    async def _checked(self, login: bytes, username: str, password: bytes) -> AuthOutcome | None:
        """The credential check's outcome, or None when the store is unavailable (down,
        busy, read-only: the store's own error, logged in one line without a traceback,
        as the writer logs a failed commit)."""
        ctx = self.ctx
        self._busy = True
        try:
            guess = hashlib.blake2b(login + b"\0" + password, digest_size=16).digest()
            with ctx.limiter.attempt(self.client_ip, username, guess):
                return await ctx.checker.check(username, password)
        except StoreUnavailable as exc:
            log.warning("%s: AUTH: the store is unavailable: %s", clean(self.client_ip), clean(exc, 300))
            self._event(EventKind.AUTH, Reason.STORE_UNAVAILABLE, "the store could not be read to check the credentials")
            return None
        finally:
            self._busy = False

    async def _auth_failed(self, reason: Reason, status: str, detail: str, *, username: str | None = None) -> None:
        ctx = self.ctx
        self.auth_failures += 1
        ctx.limiter.record(self.client_ip, username)
        self._event(EventKind.AUTH, reason, detail)
        # Throttle, don't lock: the guessing address waits longer after each failure.
        cfg = ctx.config
        delay = throttle_delay(ctx.limiter.failures(self.client_ip), cfg.auth_free_failures, cfg.auth_failure_delay, cfg.auth_failure_delay_max)
        if delay > 0:
            ctx.counters["auth_delays"] += 1
            ctx.counters["auth_delay_ms"] += round(delay * 1000)
            self._busy = True
            try:
                await asyncio.sleep(delay)
            finally:
                self._busy = False
        if self.auth_failures >= cfg.auth_failures_per_connection:
            self._event(EventKind.AUTH, Reason.AUTH_TOO_MANY_FAILURES, f"{self.auth_failures} failed attempts on one connection")
            await self.push(Replies.TOO_MANY_FAILURES)
            self._close()
            return
        await self.push(status)
