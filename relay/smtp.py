"""The relay's SMTP session: an aiosmtpd ``SMTP`` subclass that words every reply.

aiosmtpd 1.4.6 parses addresses with the email package (which silently drops source
routes), leaks exception text in its default error reply, answers STARTTLS inside TLS
by starting TLS again and words many replies without enhanced status codes, so this
class takes over every command and keeps aiosmtpd for the connection and the command
loop; the STARTTLS upgrade runs through the event loop's own TLS layer
(:meth:`RelaySMTP._start_tls`) and, as aiosmtpd's, discards commands pipelined
before the handshake.
What aiosmtpd still says itself is put in our words in :meth:`RelaySMTP.push`.

The session is split as aiosmtpd's own package is: this module (connection, limits,
MAIL/RCPT/DATA), ``relay.sasl`` (AUTH PLAIN and LOGIN), ``relay.rules`` (the pure
rules: paths, parameters, who may send as whom, From:/Sender:) and ``relay.replies``
(every reply, shared with the tests; ``docs/replies.md`` has a row for each).

End of data is only ``<CRLF>.<CRLF>``; bare CR or LF in the message is stored as
CRLF. A ``Received:`` header as Postfix writes it is prepended, and a ``Message-ID:``
and a ``Date:`` are added when missing (RFC 6409 8.3); addresses are kept as sent.
Message data is spooled as it arrives (``relay.spool``). Every AUTH outcome, refusal
and queued message becomes an event (``relay.reasons``), except that refusals before
AUTH are counted into one ``pre-auth-refusals`` event per connection, and each client
address has an event budget (60 at once, then one per 10 s) so no flood grows the
store without bound. Failed AUTH is throttled per client address
(``relay.auth.throttle_delay``). Client bytes reach logs and events only escaped
(``relay.display.clean``).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import mmap
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, AnyStr

import aiosmtpd.smtp as aiosmtpd_smtp
from aiosmtpd.smtp import TLSSetupException

from relay import priority
from relay.auth import EventBudget, FailureLimiter, PasswordChecker
from relay.config import RelayConfig
from relay.display import clean
from relay.message import (
    TlsInfo,
    decoded_subject,
    header_section_at,
    normalize_line_endings,
    owned_headers,
    received_header,
    shown,
    store_text,
)
from relay.reasons import EventKind, Reason
from relay.replies import Replies, enhanced, has_enhanced_code, multiline, reply
from relay.rules import (
    MailParameters,
    Refusal,
    address_check,
    authorization,
    check_headers,
    envelope_address,
    hop_refusal,
    mail_auth,
    needs_smtputf8,
    parse_mail_parameters,
    parse_rcpt_parameters,
    recipient_refusal,
    sender_refusal,
    split_path,
)
from relay.sasl import SaslCommands
from relay.spool import InFlight, Spool, return_big_blocks_to_the_system
from relay.store import StoreUnavailable
from relay.store.directory import AuthRecord
from relay.store.events import NewEvent
from relay.store.intake import NewMessage, RecipientDsn, new_queue_id
from relay.watchdog import LoopWatchdog
from relay.writer import REPLY_NO_SPACE, StoreWriter, WriteFailed, classify

# Re-exported: older callers import these from here.
__all__ = ["ConnectionTracker", "RelayContext", "RelaySMTP", "authorization", "check_headers", "make_factory", "split_path"]

log = logging.getLogger("smtpplus.relay")


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_sanitized_log = aiosmtpd_smtp.sanitized_log


def _sanitized_log_when_shown(func: Callable[..., None], msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd hides AUTH secrets in each command line before it logs the line at debug
    and info — to its ``mail.log``, which the relay keeps at WARNING (relay.logs), so the
    work was thrown away twice a command (0.83 → 0.27 µs a call, measured: about 4 µs
    per accepted message). Asked first: done only when the line would be shown."""
    logger = getattr(func, "__self__", None)
    if isinstance(logger, logging.Logger) and not logger.isEnabledFor(_LEVELS.get(func.__name__, logging.CRITICAL)):
        return
    _sanitized_log(func, msg, *args, **kwargs)


# aiosmtpd's session loop calls the module's function by name.
aiosmtpd_smtp.sanitized_log = _sanitized_log_when_shown

SPOOL_STEP = 1024 * 1024  # in-flight budget taken in steps of this many bytes
CLOSE_GRACE = 5.0  # seconds a closing client gets to take its last reply before the abort
QUIT_WINDOW = 2.0  # while stopping: seconds a client that just finished a transaction gets to QUIT

COMMAND_LIMIT = 512  # RFC 5321 4.5.3.1.4, CRLF included
# + SIZE=, BODY=8BITMIME, SMTPUTF8, AUTH=, RET=HDRS, ENVID= (RFC 1870, 6152, 6531,
# 4954 5, 3461 4.4); RCPT: + NOTIFY=, ORCPT= (RFC 3461 4.1, 4.2)
MAIL_LIMIT = COMMAND_LIMIT + 26 + 15 + 9 + 506 + 9 + 107
RCPT_LIMIT = COMMAND_LIMIT + 31 + 507
UNKNOWN_COMMAND_LIMIT = 5  # the fifth unknown command closes the connection (as aiosmtpd; with 421, RFC 5321 3.8)
STARTTLS_HANDSHAKE_TIMEOUT = 30.0  # seconds a client gets to finish the handshake after STARTTLS (as on 465)
RDNS_WAIT = 2.0  # seconds DATA waits for the client's reverse DNS name (then "unknown")
LINE_LIMIT = 2048  # the stream's line limit: over the longest command (Postfix: 2048)
# Work on more than this many bytes goes to a worker thread: the event loop serves
# every other client meanwhile (each step is linear, but 25 MB is still 25 MB).
INLINE_HEADER_BYTES = 16 * 1024
INLINE_DATA_BYTES = 1024 * 1024

_REPLY_UNSAFE = re.compile(r"[^\x20-\x7e]")
# The fixed positive replies (250 2.1.0 Ok, 354 …): nothing in push() would change or
# count them, so they skip its checks (three of the four replies of every message).
_PLAIN_REPLIES = frozenset(
    value
    for name, value in vars(Replies).items()
    if name.isupper() and isinstance(value, str) and "{" not in value and value[:1] in ("2", "3")
    and "\r\n" not in value and not _REPLY_UNSAFE.search(value)
    and (has_enhanced_code(value) or value.startswith(("334 ", "354 ")))
)

# Error limits (Postfix's smtpd_soft/hard_error_limit). A 452 4.5.3 recipient
# overshoot is a normal client's cue to send the rest later (RFC 5321 4.5.3.1.10), and
# a 421 closes anyway: neither counts.
HARD_ERROR_CEILING = 20
ERROR_DELAY_BUDGET = 3.0  # seconds: all soft-limit delays of one connection together
ERROR_DELAY_STEP = 1.0  # at most this per reply (Postfix's smtpd_error_sleep_time)
_NOT_COUNTED = ("421", Replies.TOO_MANY_RECIPIENTS[:9])
# Refusals before AUTH cost the client nothing to repeat: they are counted into one
# event per connection (with a few samples of what was sent), never stored one by one.
_COUNTED_BEFORE_AUTH = frozenset({Reason.MAIL_BEFORE_AUTH, Reason.AUTH_NEEDS_TLS, Reason.TLS_INSIDE_TLS, Reason.AUTH_MALFORMED})
EVENT_DETAIL_LIMIT = 300  # characters of an event's detail
SAMPLE_COUNT = 3  # samples of refused commands in the per-connection summary
SAMPLE_CHARS = 60


# ---------------------------------------------------------------------------
# Shared state of all sessions


class _StartedTls:
    """Where aiosmtpd keeps its STARTTLS layer (``SMTP._tls_protocol``): the relay's own
    upgrade (:meth:`RelaySMTP._start_tls`) leaves this there, with the TLS details
    aiosmtpd copies into ``session.ssl``."""

    def __init__(self, transport: asyncio.BaseTransport | None) -> None:
        names = ("peercert", "cipher", "compression", "ssl_object")
        self._extra = {} if transport is None else {name: transport.get_extra_info(name) for name in names}

    def __repr__(self) -> str:
        return "<STARTTLS>"


_HANDSHAKING = _StartedTls(None)


class ConnectionTracker:
    """Live sessions, with the global and per-client caps."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.sessions: set[RelaySMTP] = set()
        self.per_client: collections.Counter[str] = collections.Counter()
        self.refused = 0
        self._empty = asyncio.Event()
        self._empty.set()

    def admit(self, session: RelaySMTP, client: str) -> bool:
        if len(self.sessions) >= self.max_total or self.per_client[client] >= self.max_per_client:
            self.refused += 1
            return False
        self.sessions.add(session)
        self.per_client[client] += 1
        self._empty.clear()
        return True

    def release(self, session: RelaySMTP, client: str) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.per_client[client] -= 1
            if self.per_client[client] <= 0:
                del self.per_client[client]
            if not self.sessions:
                self._empty.set()

    async def wait_empty(self) -> None:
        """Returns once no session is left."""
        await self._empty.wait()


class ClientNames:
    """Clients' forward-confirmed DNS names for Received:, shared by every session: one
    lookup per address per ``ttl`` seconds, so a client that sends each message on a
    new connection costs one lookup, not one per message."""

    def __init__(self, ttl: float = 300.0, size: int = 4096) -> None:
        self.ttl = ttl
        self.size = size
        self.lookups = 0
        self._known: dict[str, tuple[float, asyncio.Future[str | None]]] = {}

    def lookup(self, loop: asyncio.AbstractEventLoop, ip: str) -> asyncio.Future[str | None]:
        now = loop.time()
        known = self._known.get(ip)
        if known is not None and now - known[0] < self.ttl and not known[1].cancelled():
            return known[1]
        if len(self._known) >= self.size:
            self._known.clear()  # a bound, not a policy: the next lookups refill it
        self.lookups += 1
        task = loop.create_task(confirmed_name(loop, ip))
        self._known[ip] = (now, task)
        return task


@dataclass
class RelayContext:
    """What every session of one relay shares."""

    config: RelayConfig
    server_name: str
    tls_context: ssl.SSLContext | None
    checker: PasswordChecker
    limiter: FailureLimiter
    writer: StoreWriter
    tracker: ConnectionTracker
    stopping: bool = False
    events: EventBudget = field(default_factory=EventBudget)
    watchdog: LoopWatchdog = field(default_factory=LoopWatchdog)
    names: ClientNames = field(default_factory=ClientNames)
    inflight: InFlight = field(init=False)

    def __post_init__(self) -> None:
        self.inflight = InFlight(self.config.inflight_bytes_limit)
        return_big_blocks_to_the_system()
    counters: collections.Counter[str] = field(default_factory=collections.Counter)


class _NoHooks:
    """aiosmtpd looks for ``handle_*`` hooks on a handler; every decision is ours."""

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        # aiosmtpd's own "221 Bye" lacks the enhanced status code we advertise.
        return Replies.BYE


_NO_HOOKS = _NoHooks()


@dataclass(slots=True)
class _DataRead:
    """What reading one message's data found."""

    refusal: str | None = None  # "size", "nul", "budget" or "spool" (the data was dropped)
    error: OSError | None = None
    bare_line_ends: bool = False  # a bare CR or LF: the line ends are fixed after the read


class _DataIntake:
    """Message data into a spool, a line (:meth:`line`) or a block of whole lines
    (:meth:`block`) at a time, with the same outcome either way: a block is taken at
    once unless something in it needs the line-by-line rules (a refusal to decide,
    which says which limit a message broke first), then it is taken a line at a time."""

    __slots__ = ("spool", "limit", "inflight", "read", "size", "at_line_start", "line_length")

    def __init__(self, spool: Spool, limit: int, inflight: InFlight) -> None:
        self.spool = spool
        self.limit = limit
        self.inflight = inflight
        self.read = _DataRead()
        self.size = 0  # octets read, dots included
        self.at_line_start = True
        self.line_length = 0  # of the line in progress (a line over the stream limit)

    def line(self, piece: bytes, complete: bool) -> None:
        """One line (``complete``: it ends with CRLF) or the part of one that arrived."""
        read = self.read
        at_line_start, self.at_line_start = self.at_line_start, complete
        self.size += len(piece)
        if read.refusal is not None:
            return
        if self.limit and self.size > self.limit:
            self._refuse("size")
            return
        if at_line_start and piece[:1] == b".":
            piece = piece[1:]
        if b"\0" in piece:
            self._refuse("nul")
            return
        if not self._reserve(len(piece)):
            return
        body = len(piece) - 2 if complete else len(piece)
        if piece.find(b"\r", 0, body) >= 0 or piece.find(b"\n", 0, body) >= 0:
            read.bare_line_ends = True  # fixed (and measured again) after the read
        self.line_length = 0 if complete else self.line_length + len(piece)
        self._write(piece)

    def block(self, lines: bytes) -> None:
        """Whole lines (``lines`` ends with CRLF and starts a line), none of them the
        end of the data."""
        read = self.read
        if read.refusal is not None:
            self.size += len(lines)
            return
        if self.line_length or (self.limit and self.size + len(lines) > self.limit) or b"\0" in lines:
            for line in lines[:-2].split(b"\r\n"):
                self.line(line + b"\r\n", True)
            return
        self.size += len(lines)
        if lines[:1] == b".":
            lines = lines[1:]
        if b"\r\n." in lines:
            lines = lines.replace(b"\r\n.", b"\r\n")  # each line loses one leading dot
        if not self._reserve(len(lines)):
            return
        crlf = lines.count(b"\r\n")
        if lines.count(b"\r") != crlf or lines.count(b"\n") != crlf:
            read.bare_line_ends = True
        self._write(lines)

    def _reserve(self, more: int) -> bool:
        spool = self.spool
        while spool.size + more > spool.reserved:
            if not self.inflight.reserve(SPOOL_STEP):
                self._refuse("budget")
                return False
            spool.reserved += SPOOL_STEP
        return True

    def _write(self, piece: bytes) -> None:
        try:
            self.spool.write(piece)
        except OSError as exc:
            self.read.error = exc
            self._refuse("spool")

    def _refuse(self, why: str) -> None:
        self.read.refusal = why
        self.spool.discard()


# ---------------------------------------------------------------------------
# The session


class RelaySMTP(SaslCommands):
    """One client connection (aiosmtpd creates one protocol per connection)."""

    line_length_limit = LINE_LIMIT  # aiosmtpd's stream limit (a class attribute there)

    def __init__(self, ctx: RelayContext, loop: asyncio.AbstractEventLoop | None = None) -> None:
        cfg = ctx.config
        # What MAIL and RCPT declared (reset with the envelope).
        self.declared = MailParameters()
        self.recipient_dsn: dict[str, RecipientDsn] = {}
        self._recipient_keys: set[str] = set()
        self._rdns: asyncio.Future[str | None] | None = None  # the client's name (ctx.names)
        self._tls_seen: tuple[object, TlsInfo] | None = None  # (transport, what its TLS is): asked once
        self._idle_deadline = 0.0  # loop time the idle timeout is due (see _reset_timeout)
        self._timer_due: float | None = None  # loop time the armed timer fires (None: not armed)
        super().__init__(
            _NO_HOOKS,
            data_size_limit=cfg.max_message_size,
            # Arguments are read as UTF-8 (RFC 6531); a non-ASCII address still needs
            # the SMTPUTF8 parameter (rules.needs_smtputf8).
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=ctx.server_name,
            ident="ESMTP smtpplus",
            tls_context=ctx.tls_context,
            timeout=cfg.session_timeout,
            auth_required=True,
            auth_require_tls=True,
            loop=loop,
        )
        # aiosmtpd keeps these limits in a class-level dict that every EHLO grows;
        # ours are fixed and per instance.
        self.command_size_limits = collections.defaultdict(
            lambda: COMMAND_LIMIT, {"MAIL": MAIL_LIMIT, "RCPT": RCPT_LIMIT}
        )
        # Unknown commands come to _unknown_command, not to aiosmtpd's loop, which would
        # log the client's command name raw (escape sequences and all).
        self._smtp_methods = _Commands(self._smtp_methods, self._unknown_command)
        self._unknown_commands = 0
        self._exempt_replies: tuple[str, str] | None = None
        self.ctx = ctx
        self.client_ip = "?"
        self.local_port: int | None = None
        self.user: AuthRecord | None = None
        self.ehlo_name = ""
        self.auth_failures = 0
        self._attempted_user: str | None = None
        self._admitted = False
        self._released = False
        self._counted = False  # admitted or refused by the caps (admit)
        self.handshake: asyncio.Task[None] | None = None  # an implicit-TLS connection's, while it runs
        self._busy = False
        self._recipients_refused = False
        self._abort_handle: asyncio.TimerHandle | None = None
        self._progress_handle: asyncio.TimerHandle | None = None
        self._goodbye_handle: asyncio.TimerHandle | None = None
        self._progress_at = 0.0
        self.errors = 0  # refused commands since the last queued message
        self.error_delay = 0.0  # seconds of soft-limit delay this connection got
        self._limit_reached = False
        self._before_auth: collections.Counter[Reason] = collections.Counter()
        self._samples: list[str] = []

    def __dir__(self) -> list[str]:
        # aiosmtpd's __init__ scans dir(self) twice per connection (inspect.getmembers
        # evaluates every attribute) just to find the smtp_*/auth_* methods; with a
        # new connection per message that scan is a tenth of the relay's time. Those
        # names are all it needs.
        return _command_names(type(self))

    # -- connection ---------------------------------------------------------

    def admit(self, peer: Any, local: Any) -> bool:
        """Count the connection against the caps, once, from its addresses (``peer``,
        ``local``: the socket's names, or None) — on an implicit-TLS port before the
        handshake (``relay.listen.ImplicitTlsServer``), so clients that never finish
        one hold slots of the caps like any other."""
        if not self._counted:
            self._counted = True
            self.client_ip = str(peer[0]) if peer else "?"
            self.local_port = int(local[1]) if local else None
            self._admitted = self.ctx.tracker.admit(self, self.client_ip)
        return self._admitted

    def abandon(self, reason: Reason | None = None, detail: str = "") -> None:
        """The connection ends before the session started (an implicit-TLS client
        refused at the caps, its handshake failed or timed out): record what it was
        refused and free its slot."""
        if reason is not None:
            self._event(EventKind.REFUSED, reason, detail)
        self.handshake = None
        self._record_before_auth()
        if self._admitted and not self._released:
            self._released = True
            self.ctx.tracker.release(self, self.client_ip)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        if first:
            self.admit(transport.get_extra_info("peername"), transport.get_extra_info("sockname"))
            self.handshake = None
            self._progress_at = self.loop.time()
            limit = self.ctx.config.session_without_mail
            if limit > 0:
                self._progress_handle = self.loop.call_later(limit, self._check_progress)
        super().connection_made(transport)
        if not first:
            # RFC 3207 4.2: after the handshake, forget what the client said before it.
            self.user = None
            self.ehlo_name = ""

    def connection_lost(self, error: Exception | None) -> None:
        for handle in (self._abort_handle, self._progress_handle, self._goodbye_handle):
            if handle is not None:
                handle.cancel()
        self._record_before_auth()
        super().connection_lost(error)
        if self._admitted and not self._released:
            self._released = True
            self.ctx.tracker.release(self, self.client_ip)

    async def _handle_client(self) -> None:
        if not self._admitted:
            self._event(EventKind.REFUSED, Reason.CONNECTION_LIMIT, "connection cap reached")
            await self.push(Replies.TOO_MANY_CONNECTIONS)
            self._close()
            return
        await super()._handle_client()

    def _close(self) -> None:
        """Close; abort when the client has not taken what is left to send by the
        grace. A client that never reads would otherwise keep a closing transport
        (and its connection slot) forever: close() waits for the buffer to drain."""
        if self.transport is None:
            return
        self.transport.close()
        if self._abort_handle is None:
            grace = min(CLOSE_GRACE, self.ctx.config.session_timeout)
            self._abort_handle = self.loop.call_later(grace, self._abort)

    def _abort(self) -> None:
        for transport in (self.transport, self._original_transport):
            if transport is not None:
                transport.abort()  # type: ignore[attr-defined]

    def _hang_up(self, reply: str) -> None:
        """Say ``reply`` (without waiting for the client to read it) and close."""
        transport = self.transport
        if transport is None:
            return
        if self._in_handshake():
            transport.abort()  # type: ignore[attr-defined]
            return
        if not transport.is_closing():
            transport.write(reply.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
        self._close()

    def _in_handshake(self) -> bool:
        """Between STARTTLS's 220 and the end of the handshake the transport is still
        the plain one: a reply written there would land inside the client's TLS
        handshake, so the only thing to do then is to drop the connection (the
        handshake fails, and the session ends as any failed STARTTLS does)."""
        return self._tls_protocol is _HANDSHAKING

    def _set_post_data_state(self) -> None:
        # aiosmtpd calls this for RSET, HELO/EHLO and after DATA: a new envelope.
        super()._set_post_data_state()
        self.declared = MailParameters()
        self.recipient_dsn = {}
        self._recipient_keys = set()

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd cancels and re-creates a timer for every command (four a message).
        # One timer does the same: it moves the deadline only, and the armed timer,
        # when it fires before the deadline, re-arms itself for the rest.
        now = self.loop.time()
        delay = duration or self._timeout_duration
        self._idle_deadline = now + delay
        if self._timer_due is not None and self._timer_due <= self._idle_deadline:
            return
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        self._timer_due = now + delay
        self._timeout_handle = self.loop.call_later(delay, self._idle_timer)

    def _idle_timer(self) -> None:
        now = self.loop.time()
        if now < self._idle_deadline:
            self._timer_due = self._idle_deadline
            self._timeout_handle = self.loop.call_later(self._idle_deadline - now, self._idle_timer)
            return
        self._timer_due = None
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        # aiosmtpd's version only calls close(): see _close.
        self._event(EventKind.REFUSED, Reason.SESSION_TIMEOUT, f"no complete command for {self.ctx.config.session_timeout:g} s")
        self._hang_up(Replies.TIMEOUT)

    def _check_progress(self) -> None:
        """Commands reset the idle timeout, so NOOP (or a refused MAIL) every few
        minutes would hold a connection slot forever: a session that queues nothing
        for ``session_without_mail`` seconds is closed."""
        limit = self.ctx.config.session_without_mail
        left = self._progress_at + limit - self.loop.time()
        if left > 0 or self._busy:
            self._progress_handle = self.loop.call_later(max(left, 1.0), self._check_progress)
            return
        self._progress_handle = None
        self._event(EventKind.REFUSED, Reason.SESSION_TIMEOUT, f"no message queued for {limit:g} s")
        self._hang_up(Replies.NO_MAIL)

    async def push(self, status: AnyStr) -> None:
        if self._limit_reached:
            raise asyncio.CancelledError()  # the session is over: nothing more is said or done
        if status in _PLAIN_REPLIES:
            await super().push(status)
            return
        if isinstance(status, str) and not has_enhanced_code(status) and "\r\n" not in status and not self._exempt(status):
            status = enhanced(status)  # before counting: aiosmtpd's "500 bad syntax" is a 501
        head = status[:3] if isinstance(status, str) else status[:3].decode("ascii", "replace")
        if head[:1] in ("4", "5") and not (status[:9] if isinstance(status, str) else "").startswith(_NOT_COUNTED):
            await self._count_error()
        # Replies may quote client text (aiosmtpd echoes unknown commands): never let
        # a bare CR, an escape sequence or a non-ASCII byte through.
        if isinstance(status, str) and _REPLY_UNSAFE.search(status.replace("\r\n", "")):
            await super().push("\r\n".join(_REPLY_UNSAFE.sub("?", line) for line in status.split("\r\n")))
            return
        await super().push(status)

    def _exempt(self, status: str) -> bool:
        """Replies that carry no enhanced code (RFC 2034 3): the greeting, the HELO
        reply, and the intermediate 334 (base64, RFC 4954) and 354 replies."""
        if status.startswith(("334 ", "354 ")):
            return True
        if self._exempt_replies is None:
            self._exempt_replies = (
                reply(Replies.GREETING, server=self.hostname, ident=self.__ident__),
                reply(Replies.HELO, server=self.hostname),
            )
        return status in self._exempt_replies

    async def _count_error(self) -> None:
        """One more refused command: past the soft limit the reply waits, at the hard
        limit the connection ends with ``421 4.7.0`` instead of the reply."""
        cfg = self.ctx.config
        hard = max(1, min(cfg.hard_error_limit, HARD_ERROR_CEILING))
        soft = max(0, min(cfg.soft_error_limit, hard - 1))
        self.errors += 1
        if self.errors >= hard:
            self._limit_reached = True
            self.ctx.counters["error_limit_closed"] += 1
            self._event(EventKind.REFUSED, Reason.TOO_MANY_ERRORS, f"{self.errors} refused commands")
            self._hang_up(Replies.TOO_MANY_ERRORS)
            raise asyncio.CancelledError()
        if self.errors > soft:
            step = min(ERROR_DELAY_STEP, ERROR_DELAY_BUDGET / max(hard - soft - 1, 1))
            delay = min(step, ERROR_DELAY_BUDGET - self.error_delay)
            if delay > 0:
                self.error_delay += delay
                self.ctx.counters["error_delays"] += 1
                self.ctx.counters["error_delay_ms"] += round(delay * 1000)
                await asyncio.sleep(delay)

    @property
    def idle(self) -> bool:
        """No command in progress and no transaction open."""
        return not self._busy and (self.envelope is None or self.envelope.mail_from is None)

    def say_goodbye(self) -> None:
        """The relay is stopping: tell the client and close (a connection still in its
        implicit-TLS handshake is closed: there is no session to tell yet)."""
        if self.transport is None and self.handshake is not None:
            self.handshake.cancel()
            return
        if self.transport is not None and self._in_handshake():
            self.transport.abort()  # type: ignore[attr-defined]
            return
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(Replies.SHUTTING_DOWN.encode("ascii") + b"\r\n")
            self.transport.close()

    async def _after_transaction(self) -> None:
        """While the relay stops, a session whose transaction just ended may still
        QUIT (``221``) — an unsolicited ``421`` now would be read as QUIT's reply. A
        new MAIL gets ``421`` (see :meth:`smtp_MAIL`); silence gets it after a short
        window, so the stop is not held up for the whole grace."""
        if self.ctx.stopping and self._goodbye_handle is None:
            window = min(QUIT_WINDOW, self.ctx.config.shutdown_grace / 2)
            self._goodbye_handle = self.loop.call_later(window, self.say_goodbye)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            log.info("%s: TLS handshake failed: %s", clean(self.client_ip), clean(error.__cause__ or error, 300))
        else:
            # exc_info, not text: relay.logs escapes the traceback (it may quote client
            # bytes), and the service's corruption filter reads the exception.
            log.error("%s: session error", clean(self.client_ip), exc_info=error)
            self._event(EventKind.REFUSED, Reason.INTERNAL_ERROR, type(error).__name__)
        return Replies.INTERNAL

    def _event(self, kind: EventKind, reason: Reason, detail: str = "") -> None:
        """Record a decision. Before AUTH, cheap refusals are only counted (see
        :meth:`_record_before_auth`); every event but a successful AUTH is subject to
        the client address's event budget."""
        user = self.user
        if user is None and (reason in _COUNTED_BEFORE_AUTH or (reason is Reason.TOO_MANY_ERRORS and self._before_auth)):
            self._before_auth[reason] += 1
            if len(self._samples) < SAMPLE_COUNT and reason is not Reason.TOO_MANY_ERRORS:
                self._samples.append(clean(detail, SAMPLE_CHARS))
            return
        if reason is not Reason.AUTH_OK:
            if not self.ctx.events.allow(self.client_ip):
                self.ctx.counters["events_suppressed"] += 1
                return
            dropped = self.ctx.events.take_dropped(self.client_ip)
            if dropped:
                detail = f"{detail} [{dropped} earlier event(s) from this address not stored: over its event rate]"
        name = user.username if user is not None else self._attempted_user
        self.ctx.writer.record(
            NewEvent(
                kind=kind,
                reason=reason,
                username=clean(name, 64) if name is not None else None,
                list_id=user.list_id if user is not None else None,
                client=self.client_ip,
                port=self.local_port,
                detail=clean(detail, EVENT_DETAIL_LIMIT),
            )
        )

    def _record_before_auth(self) -> None:
        """The one event for what this connection had refused before AUTH."""
        counts, self._before_auth = self._before_auth, collections.Counter()
        samples, self._samples = self._samples, []
        if not counts:
            return
        refused = sum(n for reason, n in counts.items() if reason is not Reason.TOO_MANY_ERRORS)
        parts = ", ".join(f"{reason} x{n}" for reason, n in counts.most_common() if reason is not Reason.TOO_MANY_ERRORS)
        detail = f"{refused} refused before AUTH ({parts}); {self.errors} error replies"
        if Reason.TOO_MANY_ERRORS in counts:
            detail += "; closed at the error limit"
        if samples:
            detail += "; e.g. " + " | ".join(samples)
        self._event(EventKind.REFUSED, Reason.PRE_AUTH_REFUSALS, detail)

    async def _refuse(self, refusal: Refusal) -> None:
        await self.push(self._refusal_reply(refusal))

    def _refusal_reply(self, refusal: Refusal) -> str:
        if refusal.reason is not None:
            self._event(EventKind.REFUSED, refusal.reason, refusal.detail)
        return refusal.reply

    # -- greeting and TLS -----------------------------------------------------

    async def check_helo_needed(self, helo: str = "HELO") -> bool:
        assert self.session is not None
        if not self.session.host_name:
            await self.push(reply(Replies.SEND_HELO_FIRST, helo=helo))
            return True
        return False

    async def smtp_HELO(self, hostname: str) -> None:
        if not hostname:
            await self.push(Replies.HELO_SYNTAX)
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = False
        self.session.host_name = hostname
        self.ehlo_name = hostname
        await self.push(reply(Replies.HELO, server=self.hostname))

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push(Replies.EHLO_SYNTAX)
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        self.ehlo_name = hostname
        lines = [self.hostname, "PIPELINING", f"SIZE {self.data_size_limit}", "8BITMIME", "SMTPUTF8", "DSN", "ENHANCEDSTATUSCODES"]
        if self.tls_context is not None and self._tls_protocol is None:
            lines.append("STARTTLS")
        if self._tls_protocol is not None or self.ctx.config.allow_plain_auth:
            lines.append("AUTH PLAIN LOGIN")
        lines.append("HELP")
        await self.push(multiline(Replies.EHLO, lines))

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:
            self._event(EventKind.REFUSED, Reason.TLS_INSIDE_TLS, "STARTTLS inside TLS")
            await self.push(Replies.TLS_ACTIVE)
            return
        if arg:
            await self.push(Replies.STARTTLS_SYNTAX)
            return
        if self.tls_context is None:
            await self.push(Replies.TLS_NOT_AVAILABLE)
            return
        await self.push(Replies.READY_FOR_TLS)
        await self._start_tls(self.tls_context)

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        """The upgrade through the event loop's own TLS layer (uvloop's, in C, where the
        relay runs on uvloop) instead of aiosmtpd's, which wraps the connection in
        asyncio's pure-Python one: the same handshake and rules, about a tenth less of
        the relay's CPU a message on a reused connection (380 against 417 µs measured).

        RFC 3207 4.2: what the client pipelined after STARTTLS is dropped; the session
        starts over once the handshake is done (``connection_made``)."""
        plain = self.transport
        assert plain is not None
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        self._original_transport = plain
        self._tls_protocol = _HANDSHAKING  # type: ignore[assignment]
        try:
            tls = await self.loop.start_tls(
                plain, self, context, server_side=True, ssl_handshake_timeout=STARTTLS_HANDSHAKE_TIMEOUT  # type: ignore[arg-type]
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException() from error
        if tls is None or tls.is_closing():
            # Closed during the handshake (the client left, the relay stopped, the
            # session timed out): asyncio returns None, uvloop a closed transport.
            raise TLSSetupException("the connection closed during the handshake")
        # A TLS 1.3 client may send its EHLO with its last handshake flight: the loop
        # hands it over before this coroutine resumes, and connection_made empties the
        # reader (aiosmtpd drops plaintext there), so keep it.
        early = bytes(self._reader._buffer)  # type: ignore[attr-defined]
        self._tls_protocol = _StartedTls(tls)  # type: ignore[assignment]
        self.connection_made(tls)
        if early:
            self._reader.feed_data(early)

    # -- the transaction -----------------------------------------------------

    async def _current_user(self) -> AuthRecord | None:
        """The authenticated user, re-read at most every second (shared cache), so a
        deactivation, deletion or password reset also ends sessions already open."""
        assert self.session is not None
        if not self.session.authenticated or self.user is None:
            return None
        record = await self.ctx.checker.current_record(self.user.username)
        if record is None or not record.active or record.password_hash != self.user.password_hash:
            self.session.authenticated = False
            self._event(EventKind.REFUSED, Reason.MAIL_BEFORE_AUTH, "user deactivated, deleted or reset during the session")
            self.user = None
            return None
        self.user = record
        return record

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        assert self.session is not None and self.envelope is not None
        if not self.session.authenticated:
            await self._refuse(Refusal(Replies.AUTH_REQUIRED, Reason.MAIL_BEFORE_AUTH, f"MAIL {shown(arg or '', 300)}"))
            return
        if self.envelope.mail_from is not None:
            await self.push(Replies.NESTED_MAIL)
            return
        if self.ctx.stopping:  # sessions may finish what they started, not start anew
            await self.push(Replies.SHUTTING_DOWN)
            self._close()
            return
        parsed = split_path(arg, "FROM:")
        if parsed is None:
            await self.push(Replies.MAIL_SYNTAX)
            return
        path, params = parsed
        declared = parse_mail_parameters(params, self.data_size_limit or 0)
        if isinstance(declared, Refusal):
            await self._refuse(declared)
            return
        if not declared.smtputf8:
            refusal = needs_smtputf8(path)
            if refusal is not None:
                await self._refuse(refusal)
                return
        self._busy = True
        try:
            user = await self._current_user()
        except StoreUnavailable as exc:  # the user could not be re-read: try again later
            await self._refuse(Refusal(Replies.STORE_TEMPORARY, Reason.STORE_UNAVAILABLE, f"MAIL: reading the user: {clean(exc, 200)}"))
            return
        finally:
            self._busy = False
        if user is None:
            await self.push(Replies.AUTH_REQUIRED)
            return
        refusal = sender_refusal(path, user, declared.smtputf8)
        if refusal is not None:
            await self._refuse(refusal)
            return
        # As sent (RFC 5321 2.4: a local part may be case-sensitive) but for one
        # trailing dot on the domain; the rules compared it case-insensitively, its
        # domain through IDNA.
        self.envelope.mail_from = envelope_address(path)
        if self._rdns is None:
            self._rdns = self.ctx.names.lookup(self.loop, self.client_ip)
        self.envelope.mail_options = params
        declared.auth = mail_auth(declared.auth, user)
        self.declared = declared
        self._recipients_refused = False
        await self.push(Replies.SENDER_OK)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("RCPT"):
            return
        assert self.envelope is not None
        if self.envelope.mail_from is None:
            await self.push(Replies.NEED_MAIL)
            return
        parsed = split_path(arg, "TO:")
        if parsed is None:
            await self.push(Replies.RCPT_SYNTAX)
            return
        path, params = parsed
        utf8 = self.declared.smtputf8
        dsn = parse_rcpt_parameters(params, utf8)
        if isinstance(dsn, Refusal):
            await self._refuse(dsn)
            return
        if not utf8:
            refusal = needs_smtputf8(path)
            if refusal is not None:
                await self._refuse(refusal)
                return
        if len(self.envelope.rcpt_tos) >= self.ctx.config.max_recipients:
            if not self._recipients_refused:
                self._recipients_refused = True
                self._event(EventKind.REFUSED, Reason.TOO_MANY_RECIPIENTS, f"more than {self.ctx.config.max_recipients} recipients")
            await self.push(Replies.TOO_MANY_RECIPIENTS)
            return
        if path.strip().lower() == "postmaster":  # RFC 5321 4.5.1: no domain, any case
            await self._postmaster(path, dsn)
            return
        refusal = recipient_refusal(path, utf8)
        if refusal is not None:
            await self._refuse(refusal)
            return
        self._add_recipient(envelope_address(path), utf8, dsn)
        await self.push(Replies.RECIPIENT_OK)

    def _add_recipient(self, address: str, utf8: bool, dsn: RecipientDsn) -> None:
        """Kept as sent (less a trailing dot: :func:`envelope_address`); one recipient
        twice (its domain spelled another way) once."""
        assert self.envelope is not None
        check = address_check(address, utf8)
        domain = check.address.rpartition("@")[2] if check.address else address.rpartition("@")[2]
        key = f"{address.rpartition('@')[0]}@{domain}"
        if key in self._recipient_keys:
            return
        self._recipient_keys.add(key)
        self.envelope.rcpt_tos.append(address)
        if dsn.notify is not None or dsn.orcpt is not None:
            self.recipient_dsn[address] = dsn

    async def _postmaster(self, path: str, dsn: RecipientDsn) -> None:
        """``RCPT TO:<Postmaster>`` goes to the operator's ``postmaster_address``
        (checked when the configuration is loaded)."""
        target = self.ctx.config.postmaster_address.strip()
        if not target:
            await self._refuse(
                Refusal(reply(Replies.POSTMASTER_UNSET, addr=shown(path)), Reason.RECIPIENT_INVALID, f"<{shown(path)}>: postmaster_address is not set")
            )
            return
        self._add_recipient(target, True, dsn)
        await self.push(Replies.RECIPIENT_OK)

    async def smtp_RSET(self, arg: str) -> None:
        if arg:
            await self.push(Replies.RSET_SYNTAX)
            return
        self._set_rset_state()
        await self.push(Replies.RSET_OK)
        await self._after_transaction()

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(Replies.NEED_RCPT)
            return
        if arg:
            await self.push(Replies.DATA_SYNTAX)
            return
        queue_id = new_queue_id()
        received = await self._received(queue_id)
        await self.push(Replies.START_DATA)
        self._busy = True
        spool = Spool(received)
        try:
            try:
                read = await self._read_data(spool)
                status = await self._verdict(read, spool, queue_id)
            finally:
                # The transaction is over whatever happened (an internal error
                # included): nothing of this envelope may carry over to a later DATA.
                self._set_post_data_state()
                self.ctx.inflight.release(spool.reserved)
                spool.reserved = 0
                spool.close()
            await self.push(status)
        finally:
            self._busy = False
        await self._after_transaction()

    async def _received(self, queue_id: str) -> bytes:
        """This hop's Received: header (RFC 5321 4.4; protocol names of RFC 3848 and
        6531: ESMTPSA, UTF8SMTPSA, …)."""
        assert self.session is not None
        # AUTH is an SMTP extension: a client that used it after HELO spoke ESMTP too.
        extended = self.session.extended_smtp or self.session.authenticated
        base = "UTF8SMTP" if self.declared.smtputf8 else ("ESMTP" if extended else "SMTP")
        tls = self._tls_info()
        protocol = base + ("S" if tls is not None else "") + ("A" if self.session.authenticated else "")
        rdns = None
        names = self._rdns
        if names is not None and names.done():  # the usual case: no timer, no task
            rdns = None if names.cancelled() else names.result()
        elif names is not None:
            try:
                rdns = await asyncio.wait_for(asyncio.shield(names), RDNS_WAIT)
            except TimeoutError:
                rdns = None
        user = self.user.username if self.user is not None and self.ctx.config.received_names_user else None
        return received_header(self.ehlo_name, self.client_ip, self.ctx.server_name, protocol, queue_id, rdns=rdns, tls=tls, user=user)

    def _tls_info(self) -> TlsInfo | None:
        if self._tls_protocol is None or self.transport is None:
            return None
        seen = self._tls_seen
        if seen is not None and seen[0] is self.transport:  # a TLS session never changes its cipher
            return seen[1]
        ssl_object = self.transport.get_extra_info("ssl_object")
        cipher = self.transport.get_extra_info("cipher")
        if ssl_object is None or not cipher:
            return None
        info = TlsInfo(str(ssl_object.version()), str(cipher[0]), int(cipher[2] or 0))
        self._tls_seen = (self.transport, info)
        return info

    async def _read_data(self, spool: Spool) -> _DataRead:
        """Read up to ``<CRLF>.<CRLF>`` into ``spool`` (unstuffed), within the size
        limit and the relay's in-flight byte budget, noting NUL bytes and bare CR/LF. Past a refusal the rest is read and dropped.

        Only a line that is exactly ``.`` followed by CRLF, at a line start, ends the
        data: ``\\n.\\n``, ``\\r.\\r`` and the rest of the smuggling variants are text.

        Whatever complete lines have already arrived are taken as one block (see
        :class:`_DataIntake`); a line at a time only while waiting for more."""
        reader = self._reader
        intake = _DataIntake(spool, self.data_size_limit or 0, self.ctx.inflight)
        # What has arrived and is not read yet: asyncio's StreamReader keeps it in
        # ``_buffer`` (aiosmtpd relies on that too). Without it, a line at a time.
        arrived: bytearray | None = getattr(reader, "_buffer", None)
        while True:
            if arrived and intake.at_line_start:
                if arrived.startswith(b".\r\n"):
                    await reader.readexactly(3)
                    return intake.read
                end = arrived.find(b"\r\n.\r\n")
                if end >= 0:
                    data = await reader.readexactly(end + 5)
                    intake.block(data[: end + 2])
                    return intake.read
                last = arrived.rfind(b"\r\n")
                if last >= 0:
                    intake.block(await reader.readexactly(last + 2))
                    continue
            try:
                piece = await reader.readuntil(b"\r\n")
                complete = True
            except asyncio.LimitOverrunError as exc:
                # A line longer than the stream limit: take what is there, keep going.
                piece = await reader.read(exc.consumed)
                complete = False
            except asyncio.IncompleteReadError:
                self._close()
                raise asyncio.CancelledError() from None
            if not piece:
                self._close()
                raise asyncio.CancelledError()
            if intake.at_line_start and complete and piece == b".\r\n":
                return intake.read
            intake.line(piece, complete)

    async def _verdict(self, read: _DataRead, spool: Spool, queue_id: str) -> str:
        if read.refusal == "size":
            return self._refusal_reply(Refusal(Replies.TOO_LARGE, Reason.MESSAGE_TOO_LARGE, f"data over {self.data_size_limit} bytes"))
        if read.refusal == "nul":
            return self._refusal_reply(Refusal(Replies.NUL, Reason.MESSAGE_NUL, "NUL byte in message data"))
        if read.refusal == "budget":
            self.ctx.counters["inflight_refused"] += 1
            return self._refusal_reply(
                Refusal(REPLY_NO_SPACE, Reason.SERVER_BUSY, f"messages in flight over {self.ctx.config.inflight_bytes_limit} bytes")
            )
        if read.refusal == "spool":
            failed = classify(read.error or OSError())
            log.error("%s: spooling message data failed: %s", clean(self.client_ip), clean(read.error, 300))
            return self._refusal_reply(Refusal(failed.reply, failed.reason, "spooling the message data failed"))
        return await self._accept(spool, read, queue_id)

    async def _accept(self, spool: Spool, read: _DataRead, queue_id: str) -> str:
        """Header policy, priority, then the durable enqueue (the spool starts with
        the Received: header)."""
        assert self.envelope is not None and self.envelope.mail_from is not None
        try:
            user = await self._current_user()
        except StoreUnavailable as exc:
            return self._refusal_reply(Refusal(Replies.STORE_TEMPORARY, Reason.STORE_UNAVAILABLE, f"DATA: reading the user: {clean(exc, 200)}"))
        if user is None:
            return Replies.AUTH_REQUIRED
        data: bytes | mmap.mmap = spool.finish()
        if read.bare_line_ends:  # rare (broken clients): fix the line ends on a copy
            start = spool.prefix_length
            if len(data) > INLINE_DATA_BYTES:
                body = await asyncio.to_thread(normalize_line_endings, data[start:])
            else:
                body = normalize_line_endings(data[start:])
            data = data[:start] + body
        # Lines over 998 octets are taken (RFC 5321 4.5.3.1.6 is the sender's limit;
        # Postfix takes them too): delivery folds them for the next hop (lines-folded).
        limit = self.ctx.config.header_size_limit
        section = header_section_at(data, spool.prefix_length, limit)
        if section is None:
            return self._refusal_reply(Refusal(Replies.HEADER_TOO_LARGE, Reason.HEADER_TOO_LARGE, f"header section over {limit} bytes"))
        lookalikes = self.ctx.config.refuse_lookalike_display_names
        if len(section) > INLINE_HEADER_BYTES:
            refusal, fields, from_value = await asyncio.to_thread(check_headers, section, user, lookalikes, self.declared.smtputf8)
        else:
            refusal, fields, from_value = check_headers(section, user, lookalikes, self.declared.smtputf8)
        refusal = hop_refusal(fields, self.ctx.config.hopcount_limit) or refusal
        if refusal is not None:
            return self._refusal_reply(refusal)
        added = owned_headers(fields, queue_id, self.ctx.server_name, time.time())
        if added:
            start = spool.prefix_length
            if len(data) > INLINE_DATA_BYTES:
                data = await asyncio.to_thread(_insert, data, start, added)
            else:
                data = _insert(data, start, added)
        header_prio = priority.header_priority(fields)
        effective = priority.effective_priority(user.priority, header_prio)
        subject = next((value for name, value in fields if name == "subject"), "")
        message = NewMessage(
            mail_from=self.envelope.mail_from,
            recipients=list(self.envelope.rcpt_tos),
            # A spooled message is an mmap: the store binds it as a blob (buffer
            # protocol) without a Python copy.
            data=data,
            header_priority=header_prio,
            user_priority=user.priority,
            priority=effective,
            header_from=store_text(" ".join(from_value.split())[:300]),
            subject=store_text(decoded_subject(subject)),
            list_id=user.list_id,
            list_name=user.list_name,
            user_id=user.user_id,
            username=user.username,
            client=self.client_ip,
            port=self.local_port,
            queue_id=queue_id,
            mail_auth=self.declared.auth,
            body_type=self.declared.body,
            smtputf8=self.declared.smtputf8,
            size_declared=self.declared.size,
            dsn_ret=self.declared.ret,
            dsn_envid=self.declared.envid,
            recipient_dsn=dict(self.recipient_dsn) or None,
        )
        try:
            queued = await self.ctx.writer.enqueue(message)
        except WriteFailed as failed:
            return self._refusal_reply(Refusal(failed.reply, failed.reason, "the store did not take the message"))
        self.ctx.counters["queued"] += 1
        self.errors = 0  # Postfix: the limits are on errors made without delivering mail
        self._progress_at = self.loop.time()
        return reply(Replies.QUEUED, queue_id=queued.queue_id)

    async def _unknown_command(self, name: str, arg: str | None) -> None:
        """As aiosmtpd answers an unknown command (the fifth closes the connection),
        with the name escaped in the log."""
        self._unknown_commands += 1
        log.warning("%s: unrecognised command %s", clean(self.client_ip), clean(name, 64))  # as aiosmtpd
        if self._unknown_commands >= UNKNOWN_COMMAND_LIMIT:
            await self.push(Replies.TOO_MANY_UNKNOWN)
            self._close()
            return
        await self.push(reply(Replies.UNKNOWN_COMMAND, name=name))

    async def smtp_NOOP(self, arg: str) -> None:
        await self.push(Replies.NOOP_OK)

    async def smtp_HELP(self, arg: str) -> None:
        """The commands this relay answers (before AUTH too: EHLO tells as much)."""
        if not arg:
            await self.push(reply(Replies.HELP, commands=" ".join(sorted(self._smtp_methods))))
            return
        syntax = HELP_SYNTAX.get(arg.strip().upper())
        if syntax is None:
            await self.push(reply(Replies.HELP_UNKNOWN, name=shown(arg, 32)))
            return
        await self.push(reply(Replies.HELP_SYNTAX, syntax=syntax))

    async def smtp_QUIT(self, arg: str) -> None:
        if arg:
            await self.push(Replies.QUIT_SYNTAX)
            return
        await super().smtp_QUIT(arg)

    async def smtp_VRFY(self, arg: str) -> None:
        if await self.check_auth_needed("VRFY"):
            return
        # RFC 5321 §4.1.1.6: VRFY takes an argument; without one it is a syntax error
        # (as Postfix answers), not a promise to deliver to nobody.
        await self.push(Replies.VRFY if arg and arg.strip() else Replies.VRFY_SYNTAX)

    async def smtp_EXPN(self, arg: str) -> None:
        await self.push(Replies.EXPN)


class _Commands(dict[str, Any]):
    """aiosmtpd's command table: an unknown name finds the session's handler for it."""

    def __init__(self, methods: dict[str, Any], unknown: Callable[[str, str | None], Awaitable[None]]) -> None:
        super().__init__(methods)
        self._unknown = unknown

    def get(self, name: str, default: Any = None) -> Any:
        found = super().get(name)
        return found if found is not None else functools.partial(self._unknown, name)


HELP_SYNTAX = {
    "AUTH": "AUTH PLAIN|LOGIN [initial-response]",
    "DATA": "DATA",
    "EHLO": "EHLO hostname",
    "EXPN": "EXPN (not implemented)",
    "HELO": "HELO hostname",
    "HELP": "HELP [command]",
    "MAIL": "MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8] [AUTH=address] [RET=FULL|HDRS] [ENVID=xtext]",
    "NOOP": "NOOP",
    "QUIT": "QUIT",
    "RCPT": "RCPT TO:<address> [NOTIFY=NEVER|SUCCESS,FAILURE,DELAY] [ORCPT=rfc822;xtext]",
    "RSET": "RSET",
    "STARTTLS": "STARTTLS",
    "VRFY": "VRFY address",
}
_COMMAND_NAMES: dict[type, list[str]] = {}


def _command_names(cls: type) -> list[str]:
    names = _COMMAND_NAMES.get(cls)
    if names is None:
        names = sorted({n for klass in cls.__mro__ for n in vars(klass) if n.startswith(("smtp_", "auth_"))})
        _COMMAND_NAMES[cls] = names
    return names


def _insert(data: bytes | mmap.mmap, at: int, added: bytes) -> bytes:
    return data[:at] + added + data[at:]


async def confirmed_name(loop: asyncio.AbstractEventLoop, ip: str) -> str | None:
    """The client's forward-confirmed reverse DNS name (as Postfix shows it in
    Received:), or None: no name, or one that does not lead back to the address."""
    try:
        name, _ = await loop.getnameinfo((ip, 0), socket.NI_NAMEREQD)
        infos = await loop.getaddrinfo(name, None)
    except (OSError, UnicodeError, ValueError):
        return None
    return name if any(info[4][0] == ip for info in infos) else None


def make_factory(ctx: RelayContext) -> Any:
    """The one protocol factory every listening port shares (and the loop's watchdog,
    started here because the factory is made on the relay's loop)."""
    ctx.watchdog.start(asyncio.get_running_loop())

    def factory() -> RelaySMTP:
        return RelaySMTP(ctx, asyncio.get_running_loop())

    return factory
