"""Delivery to the next hop: the scheduler loop, next-hop connections and retry rules.

:class:`DeliveryEngine` is run by :class:`relay.service.RelayService` (or directly,
by tests and benchmarks). It keeps one long-lived store connection and, in a loop,
asks :func:`relay.store.queue.dispatch_round` to record finished attempts and claim
as many messages as the shared bandwidth allows right now — strict priority, FIFO
within a priority, under lease. Each claimed message goes out on a next-hop
connection (aiosmtplib; reused for consecutive messages); its outcome is recorded
in the next round, in the same transaction as the next claims.

Runtime controls (paused, rate, parallel, next hop, STARTTLS mode, AUTH) are store
settings; the loop notices changes from any process through the store's change feed
(:mod:`relay.store.changes`) within a fraction of a second. Campaign expansion and retention run beside the loop
on the same store connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib

from relay.bounce import FailedRecipient, bounce_message, wants_report
from relay.config import server_name_warning
from relay.reasons import EventKind, Reason
from relay.scheduler import HopBackoff, StarvationShare, TokenBucket, decide_retry
from relay.store import AsyncStore, Connection, StoreError
from relay.store.backend import backend_for
from relay.store.events import NewEvent
from relay.store.intake import NewMessage, RecipientDsn
from relay.store.queue import (
    Claimed,
    DeliverySettings,
    Outcome,
    RecipientResult,
    RoundRequest,
    RoundResult,
    dispatch_round,
    parse_next_hop,
    prune,
    publish_status,
    reclaim_owner,
)
from relay.store.verification import system_sender_choice
from relay.transcode import downgrade_8bit, fold_long_lines, needs_smtputf8

log = logging.getLogger("smtpplus.delivery")
_OUTCOME_KIND = {"sent": EventKind.SENT, "deferred": EventKind.DEFERRED, "failed": EventKind.FAILED}

IDLE_POLL = 0.05  # seconds between two looks at the change feed while idle (SQLite: a cheap PRAGMA)
FULL_ROUND_EVERY = 1.0  # a full round (deferred mail, scheduled mail) at least this often
IDLE_CONNECTION_TTL = 10.0  # an unused next-hop connection is closed after this
PRUNE_EVERY = 3600.0


class DeliveryConfig(Protocol):
    """What the engine reads from :class:`relay.config.RelayConfig` (all optional)."""

    retry_base: float
    retry_max: float
    queue_lifetime: float
    message_lease: float
    connect_timeout: float
    command_timeout: float
    retention_days: float
    recipients_per_transaction: int


_DEFAULTS: dict[str, float] = {
    "retry_base": 60.0,
    "retry_max": 3600.0,
    "queue_lifetime": 5 * 86400.0,
    "message_lease": 300.0,
    "connect_timeout": 30.0,
    "command_timeout": 60.0,
    "retention_days": 30.0,
    "recipients_per_transaction": 50,
}
SENDER_REFRESH = 5.0  # seconds between reads of the system sender setting


def _setting(config: Any, name: str) -> float:
    value = getattr(config, name, None)
    return float(_DEFAULTS[name] if value is None else value)


def _server_name(config: Any) -> str:
    resolve = getattr(config, "resolved_server_name", None)
    if callable(resolve):
        with contextlib.suppress(Exception):
            return str(resolve())
    return str(getattr(config, "server_name", "") or socket.gethostname() or "localhost")


# ---------------------------------------------------------------------------
# One next-hop connection


@dataclass(frozen=True, slots=True)
class NextHop:
    host: str
    port: int
    tls: str  # required | opportunistic | off
    user: str | None = None
    password: str | None = None
    cafile: str | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def from_settings(cls, settings: DeliverySettings) -> NextHop | None:
        if not settings.next_hop:
            return None
        host, port = parse_next_hop(settings.next_hop)
        return cls(host, port, settings.next_hop_tls, settings.next_hop_user, settings.next_hop_password, settings.next_hop_cafile)


class HopFailure(Exception):
    """The next hop as a whole is unusable right now (connect, greeting, TLS, AUTH, timeout)."""

    def __init__(self, reason: Reason, reply: str) -> None:
        super().__init__(reply)
        self.reason = reason
        self.reply = reply


@dataclass(slots=True)
class AttemptResult:
    recipients: list[RecipientResult]
    reason: Reason
    reply: str
    hop_failure: bool = False
    relayed: list[str] = field(default_factory=list)  # delivered to a hop without DSN; NOTIFY=SUCCESS asked
    notes: list[tuple[Reason, str]] = field(default_factory=list)  # what delivery changed, for events


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

    def rcpt_options(self, m: Claimed, rcpt: str) -> list[str]:
        given = m.recipient_dsn.get(rcpt)
        if not self.dsn or given is None:
            return []
        options = [f"NOTIFY={given.notify}"] if given.notify else []
        return options + ([f"ORCPT={given.orcpt}"] if given.orcpt else [])


def prepare(m: Claimed, supports: Any, hop: str) -> Prepared:
    """What to send to a hop whose EHLO ``supports(keyword)`` says what it offers:
    SMTPUTF8 or a 5.6.7 refusal (RFC 6531 §3.2), 8-bit downgraded without 8BITMIME
    (RFC 6152 §3), long lines folded, SIZE/BODY/DSN parameters passed on."""
    notes: list[tuple[Reason, str]] = []
    internationalized = needs_smtputf8(m.mail_from, m.recipients, m.data)
    # Needed: a non-ASCII address (no other way to send it), or non-ASCII headers the
    # client declared SMTPUTF8 for. All-ASCII mail goes without it, as Postfix does;
    # 8-bit headers from a client that did not declare it go as they did before.
    envelope_ascii = m.mail_from.isascii() and all(r.isascii() for r in m.recipients)
    needed = not envelope_ascii or (m.smtputf8 and internationalized)
    utf8 = internationalized and bool(supports("smtputf8"))
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


def _reply_text(code: int, message: str) -> str:
    return f"{code} {' '.join(str(message).split())}".strip()


def _classify(code: int) -> tuple[str, Reason]:
    if 200 <= code < 300:
        return "sent", Reason.DELIVERED
    if 400 <= code < 500:
        return "deferred", Reason.DEFERRED_4XX
    return "failed", Reason.FAILED_5XX


class HopConnection:
    """One SMTP client connection to the next hop, reused across messages."""

    def __init__(
        self, hop: NextHop, *, connect_timeout: float, command_timeout: float, local_hostname: str,
        recipients_per_transaction: int = 50,
    ) -> None:
        self.hop = hop
        self.recipients_per_transaction = max(1, recipients_per_transaction)
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.local_hostname = local_hostname
        self.smtp: aiosmtplib.SMTP | None = None
        self.last_used = time.monotonic()
        self.delivered = 0
        self.tls = False

    @property
    def connected(self) -> bool:
        return self.smtp is not None and self.smtp.is_connected

    async def open(self) -> None:
        hop = self.hop
        smtp = aiosmtplib.SMTP(
            hostname=hop.host, port=hop.port, timeout=self.command_timeout, start_tls=False,
            use_tls=False, local_hostname=self.local_hostname,
        )
        try:
            await smtp.connect(timeout=self.connect_timeout)
        except aiosmtplib.SMTPConnectTimeoutError as exc:
            raise HopFailure(Reason.DEFERRED_TIMEOUT, f"connect to {hop.address} timed out: {exc}") from None
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise HopFailure(Reason.DEFERRED_4XX, f"{hop.address} greeting: {_reply_text(exc.code, exc.message)}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise HopFailure(Reason.DEFERRED_CONNECT, f"cannot connect to {hop.address}: {exc}") from None
        try:
            await self._hello(smtp)
            self.tls = False
            if hop.tls != "off" and (hop.tls == "required" or smtp.supports_extension("starttls")):
                if not smtp.supports_extension("starttls"):
                    raise HopFailure(Reason.DEFERRED_TLS, f"{hop.address} does not offer STARTTLS, and TLS is required")
                try:
                    await smtp.starttls(server_hostname=hop.host, tls_context=self._tls_context())
                except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
                    raise HopFailure(Reason.DEFERRED_TLS, f"STARTTLS with {hop.address} failed: {exc}") from None
                self.tls = True
            if hop.user:
                if not self.tls and hop.tls != "off":
                    raise HopFailure(
                        Reason.DEFERRED_TLS, f"will not send AUTH to {hop.address} in plain text (STARTTLS not offered)"
                    )
                try:
                    await smtp.login(hop.user, hop.password or "")
                except aiosmtplib.SMTPAuthenticationError as exc:
                    raise HopFailure(Reason.DEFERRED_AUTH, f"AUTH at {hop.address}: {_reply_text(exc.code, exc.message)}") from None
                except aiosmtplib.SMTPException as exc:
                    raise HopFailure(Reason.DEFERRED_AUTH, f"AUTH at {hop.address}: {exc}") from None
        except HopFailure:
            smtp.close()
            raise
        except aiosmtplib.SMTPTimeoutError as exc:
            smtp.close()
            raise HopFailure(Reason.DEFERRED_TIMEOUT, f"{hop.address} timed out: {exc}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            raise HopFailure(Reason.DEFERRED_CONNECT, f"{hop.address}: {exc}") from None
        self.smtp = smtp

    async def _hello(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            await smtp.helo()

    def _tls_context(self) -> ssl.SSLContext:
        if self.hop.tls == "required":
            # Required means verified: a certificate we cannot check is no better than plain text.
            return ssl.create_default_context(cafile=self.hop.cafile or None)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    async def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                await asyncio.wait_for(smtp.quit(), 1)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            smtp.close()

    async def deliver(self, message: Claimed) -> AttemptResult:
        """One attempt: MAIL, RCPT per recipient, DATA — an outcome per recipient.
        Raises :class:`HopFailure` when the hop itself is unusable."""
        reused = self.connected
        if not reused:
            await self.open()
        self.last_used = time.monotonic()
        try:
            return await self._transaction(message)
        except _Retryable:
            # A reused connection the server had dropped: one fresh try.
            await self.close()
            await self.open()
            return await self._transaction(message)
        finally:
            self.last_used = time.monotonic()

    async def _transaction(self, m: Claimed) -> AttemptResult:
        """Every recipient still to deliver, in as many transactions as needed: at most
        ``recipients_per_transaction`` each, and a new one at once for recipients the
        hop answered 452 after accepting others (RFC 5321 §4.5.3.1.10)."""
        smtp = self.smtp
        assert smtp is not None
        prepared = prepare(m, smtp.supports_extension, self.hop.address)
        if prepared.refusal is not None:
            return AttemptResult(
                [RecipientResult(r, "failed", prepared.refusal) for r in m.recipients],
                Reason.FAILED_NO_SMTPUTF8, prepared.refusal,
            )
        results: dict[str, RecipientResult] = {}
        pending = list(m.recipients)
        stop: tuple[Reason, str] | None = None
        transactions = 0
        data_failed = False
        while pending:
            batch, pending = pending[: self.recipients_per_transaction], pending[self.recipients_per_transaction :]
            transactions += 1
            try:
                txn = await self._one_transaction(m, batch, prepared)
            except (HopFailure, _Retryable) as exc:
                if transactions == 1:
                    raise
                # Earlier transactions went through: keep their outcomes, the rest waits.
                reply = exc.reply if isinstance(exc, HopFailure) else f"connection to {self.hop.address} lost"
                reason = exc.reason if isinstance(exc, HopFailure) else Reason.DEFERRED_CONNECT
                txn = _Transaction({r: RecipientResult(r, "deferred", reply) for r in batch}, stop=(reason, reply))
            results.update(txn.results)
            data_failed = data_failed or txn.data_failed
            if txn.stop is not None:
                stop = txn.stop
                state = "deferred" if stop[0] != Reason.FAILED_5XX else "failed"
                for rcpt in pending:
                    results[rcpt] = RecipientResult(rcpt, state, stop[1].removeprefix("MAIL: "))
                break
            pending = txn.too_many + pending
        result = _summarize(m, results, prefix="DATA: " if data_failed else "")
        if stop is not None and any(r.state == "deferred" for r in results.values()):
            result.reason, result.reply = stop
        elif stop is not None and stop[1].startswith("MAIL: ") and all(r.state == "failed" for r in results.values()):
            result.reply = stop[1]
        if transactions > 1:
            result.notes.append((Reason.RECIPIENTS_SPLIT, f"{len(m.recipients)} recipient(s) in {transactions} transaction(s)"))
        result.notes[:0] = prepared.notes
        if not prepared.dsn:
            result.relayed = [
                r.address for r in result.recipients
                if r.state == "sent" and wants_report((m.recipient_dsn.get(r.address) or _NO_DSN).notify, "relayed")
            ]
        return result

    async def _one_transaction(self, m: Claimed, batch: list[str], prepared: Prepared) -> _Transaction:
        smtp = self.smtp
        assert smtp is not None
        try:
            await smtp.mail(m.mail_from, options=prepared.mail_options, encoding=prepared.encoding)
        except aiosmtplib.SMTPServerDisconnected:
            smtp.close()
            raise _Retryable() from None
        except aiosmtplib.SMTPResponseException as exc:
            await self._rset()
            state, reason = _classify(exc.code)
            reply = _reply_text(exc.code, exc.message)
            return _Transaction({r: RecipientResult(r, state, reply) for r in batch}, stop=(reason, f"MAIL: {reply}"))
        except aiosmtplib.SMTPTimeoutError as exc:
            smtp.close()
            raise HopFailure(Reason.DEFERRED_TIMEOUT, f"MAIL timed out at {self.hop.address}: {exc}") from None
        results: dict[str, RecipientResult] = {}
        accepted: list[str] = []
        too_many: list[str] = []
        try:
            for i, rcpt in enumerate(batch):
                try:
                    await smtp.rcpt(rcpt, options=prepared.rcpt_options(m, rcpt), encoding=prepared.encoding)
                    accepted.append(rcpt)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    if exc.code == 452 and accepted:
                        too_many = batch[i:]  # this one and the rest: a new transaction, now
                        break
                    state, _ = _classify(exc.code)
                    results[rcpt] = RecipientResult(rcpt, state, _reply_text(exc.code, exc.message))
            if not accepted:
                await self._rset()
                return _Transaction(results)
            try:
                response = await smtp.data(prepared.data)
            except aiosmtplib.SMTPResponseException as exc:
                state, _ = _classify(exc.code)
                reply = _reply_text(exc.code, exc.message)
                for rcpt in accepted:
                    results[rcpt] = RecipientResult(rcpt, state, reply)
                return _Transaction(results, too_many, data_failed=True)
        except aiosmtplib.SMTPTimeoutError as exc:
            smtp.close()
            raise HopFailure(Reason.DEFERRED_TIMEOUT, f"timed out at {self.hop.address}: {exc}") from None
        except (aiosmtplib.SMTPServerDisconnected, OSError) as exc:
            smtp.close()
            # Mid-transaction: the message may or may not have gone; retry later (at least once).
            reply = f"connection to {self.hop.address} lost: {exc}"
            for rcpt in batch:
                results.setdefault(rcpt, RecipientResult(rcpt, "deferred", reply))
            return _Transaction(results, stop=(Reason.DEFERRED_CONNECT, reply))
        self.delivered += 1
        reply = _reply_text(response.code, response.message)
        for rcpt in accepted:
            results[rcpt] = RecipientResult(rcpt, "sent", reply)
        return _Transaction(results, too_many)

    async def _rset(self) -> None:
        if self.smtp is None:
            return
        try:
            await self.smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            self.smtp.close()


class _Retryable(Exception):
    pass


@dataclass(slots=True)
class _Transaction:
    results: dict[str, RecipientResult]
    too_many: list[str] = field(default_factory=list)  # refused with 452 after others were accepted
    stop: tuple[Reason, str] | None = None  # MAIL refused or connection lost: the rest share it
    data_failed: bool = False


_NO_DSN = RecipientDsn()


def _summarize(m: Claimed, results: dict[str, RecipientResult], prefix: str = "") -> AttemptResult:
    ordered = [results[r] for r in m.recipients if r in results]
    deferred = [r for r in ordered if r.state == "deferred"]
    failed = [r for r in ordered if r.state == "failed"]
    if deferred:
        return AttemptResult(ordered, Reason.DEFERRED_4XX, prefix + deferred[0].reply)
    if failed and len(failed) == len(ordered):
        return AttemptResult(ordered, Reason.FAILED_5XX, prefix + failed[0].reply)
    sent = next((r for r in ordered if r.state == "sent"), None)
    return AttemptResult(ordered, Reason.DELIVERED, prefix + (sent.reply if sent else ""))


# ---------------------------------------------------------------------------
# Own-address check


def _is_local_ip(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    # Binding succeeds only for this machine's own addresses (no packet is sent).
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError:
            return False
    return True


async def _resolve(host: str, port: int) -> set[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), 3)
    except (OSError, TimeoutError):
        return set()
    return {str(info[4][0]) for info in infos}


def _canonical(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.version == 6 and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


async def is_own_address(hop_host: str, hop_port: int, own: list[tuple[str, int]]) -> bool:
    """Whether ``hop_host:hop_port`` reaches one of the relay's own listeners.
    A wildcard listener (0.0.0.0, ::) answers on every local address."""
    same_port = [host for host, port in own if port == hop_port]
    if not same_port:
        return False
    hop_ips = {_canonical(ip) for ip in await _resolve(hop_host, hop_port)}
    if not hop_ips:
        return False
    for host in same_port:
        if host in ("", "0.0.0.0", "::", "*"):
            if any(_is_local_ip(ip) for ip in hop_ips):
                return True
            continue
        own_ips = {_canonical(ip) for ip in await _resolve(host, hop_port)}
        if hop_ips & own_ips:
            return True
    return False


# ---------------------------------------------------------------------------
# The engine


@dataclass(slots=True)
class EngineCounters:
    """Running totals for tests, benchmarks and logs."""

    dispatched: int = 0
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    bounced: int = 0
    hop_failures: int = 0
    rounds: int = 0
    reclaimed: int = 0
    connections_opened: int = 0


@dataclass(slots=True)
class _Flight:
    message: Claimed
    task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.time)


class DeliveryEngine:
    """Scheduler + next-hop delivery, run by :class:`relay.service.RelayService`.

    ``owner`` is the relay's lease owner id; ``reclaim_from`` names a dead relay whose
    in-flight messages are reclaimed at once on takeover; ``own_addresses`` are the
    relay's listening (host, port) pairs, refused as next hop. ``config`` is any
    object with the delivery fields of :class:`relay.config.RelayConfig` (missing
    ones take their defaults).
    """

    def __init__(
        self,
        store_path: Path,
        config: Any,
        *,
        owner: str,
        reclaim_from: str | None = None,
        own_addresses: list[tuple[str, int]] | None = None,
    ) -> None:
        self.store_path = Path(store_path)
        self.config = config
        self.owner = owner
        self.reclaim_from = reclaim_from
        self.own_addresses = list(own_addresses or [])
        self.retry_base = _setting(config, "retry_base")
        self.retry_max = _setting(config, "retry_max")
        self.queue_lifetime = _setting(config, "queue_lifetime")
        self.lease_seconds = _setting(config, "message_lease")
        self.connect_timeout = _setting(config, "connect_timeout")
        self.command_timeout = _setting(config, "command_timeout")
        self.retention = _setting(config, "retention_days") * 86400.0
        self.recipients_per_transaction = int(_setting(config, "recipients_per_transaction"))
        self.server_name = _server_name(config)
        self.system_sender: str | None = None  # From: of bounces (the system sender setting)
        self.counters = EngineCounters()
        self.settings = DeliverySettings()
        self.hop: NextHop | None = None
        self.hop_is_self = False
        self.status: tuple[str, str] = ("starting", "")
        self._store = AsyncStore(self.store_path)
        self._changes = backend_for(self.store_path).async_change_feed(self._store)
        self._rng = random.Random()
        self._bucket = TokenBucket(0.0, time.monotonic())
        self._hop_backoff = HopBackoff(min(self.retry_base, 5.0), min(self.retry_max, 60.0))
        self._starvation = StarvationShare()
        self._flights: dict[int, _Flight] = {}
        self._outcomes: list[Outcome] = []
        self._events: list[NewEvent] = []
        self._idle: list[HopConnection] = []
        self._wake = asyncio.Event()
        self._campaign_wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()  # idle connections being closed
        self._stopping = False
        self._started = False
        # Told each event once committed (sent/deferred/failed, attempts, the engine's
        # own) and each batch of outcomes: the relay's log and metrics.
        self.observers: list[Callable[[list[NewEvent]], None]] = []
        self.outcome_observers: list[Callable[[list[Outcome]], None]] = []

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, take over a dead relay's in-flight mail, start the loops."""
        if self._started:
            return
        self._started = True
        await self._store.open()
        warning = server_name_warning(self.server_name)
        if warning is not None:
            log.warning("smtpplus: %s", warning)
            self._event(EventKind.RELAY, Reason.SERVER_NAME_UNDOTTED, warning)
        await self._refresh_system_sender()
        if self.reclaim_from and self.reclaim_from != self.owner:
            self.counters.reclaimed += await self._store.run(reclaim_owner, self.reclaim_from)
        from relay.campaigns import CampaignRunner

        runner = CampaignRunner(self._store, server_name=self.server_name, notify=self.notify, stopping=lambda: self._stopping)
        self._campaigns = runner
        self._tasks = [
            asyncio.create_task(self._run(), name="delivery-scheduler"),
            asyncio.create_task(runner.run(self._campaign_wake), name="delivery-campaigns"),
            asyncio.create_task(self._maintain(), name="delivery-retention"),
            asyncio.create_task(self._follow_system_sender(), name="delivery-system-sender"),
        ]

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let deliveries under way finish (bounded), record their
        outcomes, give back anything unfinished, close connections and the store."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
        self._campaign_wake.set()
        limit = grace if grace is not None else min(10.0, self.command_timeout + 1)
        scheduler, others = self._tasks[0], self._tasks[1:]
        # The scheduler finishes its round (what it claimed is launched and awaited below).
        _done, still = await asyncio.wait([scheduler], timeout=5)
        for task in [*still, *others]:
            task.cancel()
        pending = [f.task for f in self._flights.values() if f.task is not None]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=limit)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=2)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            self._flights.clear()
            request = RoundRequest(self.owner, self.lease_seconds, 0, None, self._take_outcomes(), force=True)
            request.events = self._take_events()
            final = await self._store.run(_final_round, request)
            self._tell(request, final)
            await self._store.run(publish_status, "stopped", "")
        except StoreError as exc:
            log.warning("delivery: could not record the last outcomes: %s", exc)
        idle, self._idle = self._idle, []
        await asyncio.gather(*(conn.close() for conn in idle), *self._closing, return_exceptions=True)
        await self._store.close()

    def notify(self) -> None:
        """New mail is in the store (called by the relay after its commit): look now."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    # -- the scheduler loop -----------------------------------------------------

    async def _run(self) -> None:
        force = True
        backlog = True
        next_due: float | None = None
        last_full = 0.0
        last_renew = time.time()
        last_reclaim = 0.0
        while not self._stopping:
            now = time.time()
            mono = time.monotonic()
            budget = self._budget(mono)
            renew: list[int] = []
            if self._flights and now - last_renew >= self.lease_seconds / 3:
                renew = list(self._flights)
                last_renew = now
            reclaim = now - last_reclaim >= max(0.5, min(5.0, self.lease_seconds / 2))
            if reclaim:
                last_reclaim = now
            promote = next_due is not None and now >= next_due
            full = force or (backlog and budget > 0) or now - last_full >= FULL_ROUND_EVERY
            request = RoundRequest(
                owner=self.owner,
                lease_seconds=self.lease_seconds,
                budget=budget,
                hop=self.hop.address if self.hop is not None and not self.hop_is_self else None,
                outcomes=self._take_outcomes(),
                renew=renew,
                reclaim_expired=reclaim,
                promote_due=promote or full,
                oldest_lower=self._starvation.due(budget) if budget else False,
                force=full,
                # No ``now``: the store reads the clock under the write lock, where
                # it decides what is ready (a time read here could be stale by then).
            )
            events = request.events = self._take_events()
            if request.idle and not await self._changed():
                # Nothing to write and nobody committed: no round (one cheap look).
                self.counters.rounds += 1
                await self._sleep(self._idle_wait(next_due, budget))
                continue
            try:
                result = await self._store.run(dispatch_round, request)
            except StoreError as exc:
                log.warning("delivery: store round failed, retrying: %s", exc)
                self._outcomes[:0] = request.outcomes
                self._events[:0] = events
                await self._sleep(1.0)
                continue
            self.counters.rounds += 1
            self._tell(request, result)
            last_full = now if full else last_full
            force = False
            self.counters.reclaimed += result.reclaimed
            if result.settings is not None and (result.settings != self.settings or self.status[0] == "starting"):
                force = await self._apply_settings(result.settings)
            if result.next_due_checked:
                next_due = result.next_due
            self._launch(result.claimed)
            await self._reap_idle()
            # More may be ready than this round could take (no tokens, no free
            # connection, or a full claim): look again without waiting for a commit.
            backlog = len(result.claimed) == budget and not self._held_back()
            await self._publish_status()
            if backlog and budget > 0:
                await asyncio.sleep(0)
                continue
            await self._sleep(self._idle_wait(next_due, budget))

    async def _changed(self) -> bool:
        """Whether another process committed since the last look; on a store error,
        yes (the round that follows meets the error and retries as rounds do)."""
        try:
            return await self._changes.changed()
        except StoreError:
            return True

    def _held_back(self) -> bool:
        """Delivery waits for a control to change (a commit will say so)."""
        return self.hop is None or self.hop_is_self or self.settings.paused

    def _budget(self, mono: float) -> int:
        if self._stopping or self.hop is None or self.hop_is_self or self.settings.paused:
            return 0
        free = self.settings.parallel - len(self._flights)
        if free <= 0:
            return 0
        return max(0, min(free, self._bucket.available(mono), self._hop_backoff.allowed(time.time(), len(self._flights))))

    def _idle_wait(self, next_due: float | None, budget: int) -> float:
        now = time.time()
        wait = IDLE_POLL
        if next_due is not None:
            wait = min(wait, max(0.0, next_due - now))
        if self._hop_backoff.down:
            wait = min(wait, max(0.01, self._hop_backoff.retry_at - now))
        if budget == 0 and self.settings.rate and len(self._flights) < self.settings.parallel:
            wait = min(wait, max(0.001, self._bucket.wait_for_one(time.monotonic())))
        return wait

    async def _sleep(self, seconds: float) -> None:
        if self._wake.is_set():
            self._wake.clear()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    def _take_outcomes(self) -> list[Outcome]:
        outcomes, self._outcomes = self._outcomes, []
        return outcomes

    def _take_events(self) -> list[NewEvent]:
        events, self._events = self._events, []
        return events

    async def _apply_settings(self, settings: DeliverySettings) -> bool:
        """Follow new runtime controls; True when the next round should run at once."""
        before = self.settings
        self.settings = settings
        self._bucket.set_rate(settings.rate, time.monotonic())
        self._starvation.set_share(settings.starvation_share)
        if settings.hop_key != before.hop_key or self.status[0] == "starting":
            try:
                hop = NextHop.from_settings(settings)
            except StoreError as exc:
                log.warning("delivery: ignoring next hop setting: %s", exc)
                hop = None
            self.hop = hop
            self.hop_is_self = False
            self._hop_backoff.succeeded()
            for conn in self._idle:
                await conn.close()
            self._idle.clear()
            if hop is None:
                self._event(EventKind.RELAY, Reason.NO_NEXT_HOP, "no next hop set: delivery waits — set one with `smtpplus queue next-hop HOST:PORT`")
            elif await is_own_address(hop.host, hop.port, self.own_addresses):
                self.hop_is_self = True
                self._event(
                    EventKind.RELAY, Reason.NEXT_HOP_SELF,
                    f"next hop {hop.address} is this relay's own listening address: refused, delivery waits",
                )
        return True

    async def _publish_status(self) -> None:
        if self.settings.paused:
            status = ("paused", "delivery paused by an operator")
        elif self.hop is None:
            status = ("no next hop", "set one with `smtpplus queue next-hop HOST:PORT`")
        elif self.hop_is_self:
            status = ("next hop is this relay", f"{self.hop.address} is one of this relay's own listening addresses")
        elif self._hop_backoff.down:
            status = ("next hop down", f"{self._hop_backoff.reason}; next try in {max(0.0, self._hop_backoff.retry_at - time.time()):.0f} s")
        else:
            status = ("running", f"to {self.hop.address}")
        # Republished when the state or the hop changes ("running" to a new next hop is
        # news); not for the hop-down countdown, which would write every round.
        if status[0] != self.status[0] or (status[0] != "next hop down" and status[1] != self.status[1]):
            self.status = status
            events = self._take_events()
            try:
                await self._store.run(publish_status, status[0], status[1], events=events)
            except StoreError as exc:
                self._events[:0] = events
                log.warning("delivery: cannot publish status: %s", exc)
            else:
                self._observe(self.observers, events)

    def _tell(self, request: RoundRequest, result: RoundResult) -> None:
        """What the round just committed, as the store recorded it."""
        if not (self.observers or self.outcome_observers) or result.skipped:
            return
        events = list(request.events)
        events += [
            NewEvent(
                _OUTCOME_KIND[o.state], o.reason, username=o.message.username, list_id=o.message.list_id,
                message_id=o.message.id, queue_id=o.message.queue_id, detail=o.detail or o.reply,
            )
            for o in request.outcomes
        ]
        events += [
            NewEvent(
                EventKind.DELIVERY, Reason.DELIVERY_ATTEMPT, username=m.username, list_id=m.list_id,
                message_id=m.id, queue_id=m.queue_id,
                detail=f"attempt {m.attempts} to {request.hop}, priority {m.priority}, {len(m.recipients)} recipient(s)",
            )
            for m in result.claimed
        ]
        self._observe(self.observers, events)
        self._observe(self.outcome_observers, request.outcomes)

    @staticmethod
    def _observe(observers: list[Callable[[Any], None]], items: list[Any]) -> None:
        if not items:
            return
        for observer in observers:
            try:
                observer(items)
            except Exception:  # a log or a metric must never stop delivery
                log.exception("delivery: event observer failed")

    def _event(self, kind: EventKind, reason: Reason, detail: str) -> None:
        self._events.append(NewEvent(kind, reason, detail=detail, at=time.time()))

    # -- deliveries ---------------------------------------------------------------

    def _launch(self, claimed: list[Claimed]) -> None:
        if not claimed:
            return
        self._bucket.take(len(claimed), time.monotonic())
        self.counters.dispatched += len(claimed)
        hop = self.hop
        for message in claimed:
            if hop is None:  # cannot happen: claims need a hop; give it back at once
                self._outcomes.append(self._temporary(message, Reason.NO_NEXT_HOP, "no next hop", hop_wide=False))
                continue
            flight = _Flight(message)
            self._flights[message.id] = flight
            # The connection is taken now, not when the task first runs, so the idle
            # pool and the in-flight count always add up to the connections open.
            conn = self._connection(hop)
            flight.task = asyncio.create_task(self._deliver(message, hop, conn), name=f"deliver-{message.queue_id}")

    async def _reap_idle(self) -> None:
        if not self._idle:
            return
        cutoff = time.monotonic() - IDLE_CONNECTION_TTL
        keep = [c for c in self._idle if c.last_used >= cutoff and c.connected]
        for conn in self._idle:
            if conn not in keep:
                await conn.close()
        self._idle = keep

    def _connection(self, hop: NextHop) -> HopConnection:
        while self._idle:
            conn = self._idle.pop()
            if conn.hop == hop and conn.connected:
                return conn
            # Keep a reference until it ends: the loop holds tasks only weakly, so an
            # unreferenced close could be collected mid-way and never finish.
            closing = asyncio.create_task(conn.close(), name="close-idle-connection")
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        self.counters.connections_opened += 1
        return HopConnection(
            hop, connect_timeout=self.connect_timeout, command_timeout=self.command_timeout,
            local_hostname=self.server_name, recipients_per_transaction=self.recipients_per_transaction,
        )

    async def _deliver(self, message: Claimed, hop: NextHop, conn: HopConnection) -> None:
        try:
            try:
                result = await conn.deliver(message)
            except HopFailure as exc:
                result = AttemptResult(
                    [RecipientResult(r, "deferred", exc.reply) for r in message.recipients], exc.reason, exc.reply, hop_failure=True
                )
            except asyncio.CancelledError:
                await conn.close()
                raise
            except Exception as exc:  # a bug must not lose the message: retry later
                log.exception("delivery: unexpected error delivering %s", message.queue_id)
                await conn.close()
                result = AttemptResult(
                    [RecipientResult(r, "deferred", f"internal error: {type(exc).__name__}") for r in message.recipients],
                    Reason.DEFERRED_CONNECT, f"internal error: {type(exc).__name__}",
                )
            self._record(message, result, hop)
            keep = (
                conn.connected and not self._stopping and self.hop == hop
                and len(self._idle) + len(self._flights) <= self.settings.parallel
            )
            if keep:
                self._idle.append(conn)
            else:
                await conn.close()
        finally:
            self._flights.pop(message.id, None)
            self._wake.set()

    def _record(self, message: Claimed, result: AttemptResult, hop: NextHop) -> None:
        now = time.time()
        if result.hop_failure:
            self.counters.hop_failures += 1
            was_down = self._hop_backoff.down
            if was_down and now < self._hop_backoff.retry_at:
                retry_at = self._hop_backoff.retry_at  # a parallel attempt failing the same way
            else:
                retry_at = self._hop_backoff.failed(now, result.reply, self._rng)
            if not was_down:
                self._event(
                    EventKind.RELAY, Reason.NEXT_HOP_DOWN,
                    f"next hop {hop.address} unusable ({result.reply}); backing off, next try in {retry_at - now:.1f} s",
                )
        elif self._hop_backoff.succeeded():
            self._event(EventKind.RELAY, Reason.NEXT_HOP_UP, f"next hop {hop.address} answers again")
        for reason, detail in result.notes:
            self._message_event(message, reason, detail, now)
        self._outcomes.append(self._outcome(message, result, hop, now))

    def _message_event(self, m: Claimed, reason: Reason, detail: str, at: float) -> None:
        self._events.append(
            NewEvent(
                EventKind.DELIVERY, reason, username=m.username, list_id=m.list_id,
                message_id=m.id, queue_id=m.queue_id, at=at, detail=detail,
            )
        )

    def _temporary(self, message: Claimed, reason: Reason, reply: str, *, hop_wide: bool) -> Outcome:
        result = AttemptResult([RecipientResult(r, "deferred", reply) for r in message.recipients], reason, reply, hop_wide)
        return self._outcome(message, result, self.hop, time.time())

    def _outcome(self, m: Claimed, result: AttemptResult, hop: NextHop | None, now: float) -> Outcome:
        """Turn one attempt into the message's new state: sent, deferred (with its
        next attempt) or failed (with a bounce for the failed recipients)."""
        recipients = list(result.recipients)
        reason, reply = result.reason, result.reply
        deferred = [r for r in recipients if r.state == "deferred"]
        state = "sent"
        next_attempt_at = None
        if deferred:
            decision = decide_retry(
                attempts=m.attempts, created_at=m.created_at, now=now, base=self.retry_base,
                maximum=self.retry_max, lifetime=self.queue_lifetime, rng=self._rng,
            )
            if decision.final:
                lifetime_reply = f"queue lifetime exceeded after {m.attempts} attempt(s); last reply: {reply}"
                recipients = [
                    RecipientResult(r.address, "failed", f"{r.reply} (queue lifetime exceeded)") if r.state == "deferred" else r
                    for r in recipients
                ]
                reason, reply = Reason.FAILED_LIFETIME, lifetime_reply
            else:
                state, next_attempt_at = "deferred", decision.next_attempt_at
        failed = [r for r in recipients if r.state == "failed"]
        sent = [r for r in recipients if r.state == "sent"]
        if state != "deferred":
            if failed and not sent and not m.delivered_before:
                state = "failed"
                reason = reason if reason in (Reason.FAILED_LIFETIME, Reason.FAILED_NO_SMTPUTF8) else Reason.FAILED_5XX
            else:
                state, reason = "sent", Reason.DELIVERED
        bounce = self._report(m, failed, [r for r in sent if r.address in result.relayed], hop, now)
        if state == "sent":
            self.counters.delivered += 1
        elif state == "deferred":
            self.counters.deferred += 1
        else:
            self.counters.failed += 1
        target = hop.address if hop else "-"
        if state == "sent":
            detail = f"{reply} (to {target}, {len(sent)} recipient(s)"
            detail += f", {len(failed)} failed)" if failed else ")"
        elif state == "deferred":
            wait = (next_attempt_at or now) - now
            detail = f"{reply} (to {target}; next attempt in {wait:.0f} s, attempt {m.attempts})"
        else:
            detail = f"{reply} (to {target}, attempt {m.attempts})"
        return Outcome(m, state, reason, reply, recipients, next_attempt_at, bounce, detail)

    def _report(
        self, m: Claimed, failed: list[RecipientResult], relayed: list[RecipientResult], hop: NextHop | None, now: float
    ) -> NewMessage | None:
        """The DSN for this attempt (RFC 3461/3464), or None: failures the sender's
        NOTIFY asks for (all, without NOTIFY), "relayed" reports for NOTIFY=SUCCESS
        recipients handed to a hop without DSN; nothing at all for a null sender."""
        def dsn(address: str) -> RecipientDsn:
            return m.recipient_dsn.get(address) or _NO_DSN

        reported = [
            FailedRecipient(r.address, r.reply, orcpt=dsn(r.address).orcpt)
            for r in failed if wants_report(dsn(r.address).notify, "failed")
        ]
        reported += [
            FailedRecipient(r.address, r.reply, action="relayed", orcpt=dsn(r.address).orcpt)
            for r in relayed if wants_report(dsn(r.address).notify, "relayed")
        ]
        silent = [r.address for r in failed if not wants_report(dsn(r.address).notify, "failed")]
        if not m.mail_from:
            if failed:
                self._message_event(m, Reason.BOUNCE_SUPPRESSED, "no bounce: the message has a null reverse path (MAIL FROM:<>)", now)
            return None
        if silent:
            self._message_event(
                m, Reason.BOUNCE_SUPPRESSED,
                f"no bounce for {len(silent)} failed recipient(s): their NOTIFY does not ask for failures", now,
            )
        if not reported:
            return None
        if any(r.action == "relayed" for r in reported):
            relayed_count = sum(r.action == "relayed" for r in reported)
            self._message_event(
                m, Reason.DSN_RELAYED,
                f"{relayed_count} recipient(s) relayed to a next hop without DSN: \"relayed\" report to the sender", now,
            )
        self.counters.bounced += 1
        return bounce_message(
            original=m.data, original_sender=m.mail_from, failed=reported,
            queue_id=m.queue_id, arrival=m.created_at, reporting_mta=self.server_name,
            next_hop=hop.host if hop else None, now=now, ret=m.dsn_ret, envid=m.dsn_envid,
            sender=self.system_sender,
        )

    # -- system sender ----------------------------------------------------------------

    async def _refresh_system_sender(self) -> None:
        try:
            choice = await self._store.run(system_sender_choice)
        except Exception as exc:  # a bad setting or a busy store: keep the last one
            log.warning("delivery: cannot read the system sender: %s", exc)
            return
        self.system_sender = choice.address

    async def _follow_system_sender(self) -> None:
        while not self._stopping:
            await self._sleep_stopping(SENDER_REFRESH)
            if not self._stopping:
                await self._refresh_system_sender()

    # -- retention ------------------------------------------------------------------

    async def _maintain(self) -> None:
        await self._sleep_stopping(5.0)
        while not self._stopping:
            try:
                pruned = await self._store.run(prune, before=time.time() - self.retention)
                if pruned.messages or pruned.events:
                    log.info("retention: pruned %d message(s) and %d event(s)", pruned.messages, pruned.events)
            except StoreError as exc:
                log.warning("retention: prune failed: %s", exc)
            await self._sleep_stopping(PRUNE_EVERY)

    async def _sleep_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)


def _final_round(db: Connection, request: RoundRequest) -> RoundResult:
    """Record the last outcomes, then give back whatever this engine still holds."""
    from relay.store.queue import release_claims

    result = dispatch_round(db, request)
    release_claims(db, request.owner)
    return result
