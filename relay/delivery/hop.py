"""Talking SMTP to one destination host: a reusable client connection that carries
one message per attempt (MAIL, RCPT per recipient, DATA), and the own-address check
that keeps the relay from delivering to itself."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiosmtplib

from relay.delivery.outcome import (
    AttemptResult,
    TransactionResult,
    all_failed,
    classify,
    conclude,
    reply_text,
    stop_state,
)
from relay.delivery.prepare import Prepared, prepare, size_limit
from relay.dkim import DkimSigner, sign_for_delivery
from relay.reasons import Reason
from relay.store.queue import Claimed, DeliverySettings, RecipientResult, parse_next_hop


@dataclass(frozen=True, slots=True)
class NextHop:
    host: str
    port: int
    tls: str  # required | opportunistic | off
    user: str | None = None
    password: str | None = None
    cafile: str | None = None
    tls_name: str | None = None  # the name its certificate should carry (an MX host's), when host is an address

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def from_settings(cls, settings: DeliverySettings) -> NextHop | None:
        if not settings.next_hop:
            return None
        host, port = parse_next_hop(settings.next_hop)
        return cls(host, port, settings.next_hop_tls, settings.next_hop_user, settings.next_hop_password, settings.next_hop_cafile)


# What a next hop answered, as the metrics count it (``smtpplus_next_hop_replies_total``):
# the command (closed set) and the reply's class — 2xx…5xx, or ``connection`` when no reply
# came (refused, reset, timed out, TLS handshake failed). Never the reply's text.
REPLY_COMMANDS = ("connect", "ehlo", "starttls", "auth", "mail", "rcpt", "data")
REPLY_CLASSES = ("2xx", "3xx", "4xx", "5xx", "connection")
ReplyObserver = Callable[[str, str], None]


def reply_class(code: int | None) -> str:
    """``2xx``…``5xx`` for a reply code, ``connection`` for none (or a code no server may send)."""
    if code is not None and 200 <= code < 600:
        return f"{code // 100}xx"
    return "connection"


class HopFailure(Exception):
    """The next hop as a whole is unusable right now (connect, greeting, TLS, AUTH, timeout)."""

    def __init__(self, reason: Reason, reply: str) -> None:
        super().__init__(reply)
        self.reason = reason
        self.reply = reply


class HopConnection:
    """One SMTP client connection to the next hop, reused across messages."""

    def __init__(
        self, hop: NextHop, *, connect_timeout: float, command_timeout: float, local_hostname: str,
        recipients_per_transaction: int = 50, signer: DkimSigner | None = None,
        on_reply: ReplyObserver | None = None,
    ) -> None:
        self.hop = hop
        self.on_reply = on_reply  # told (command, reply class) for every reply or its absence
        self.signer = signer
        self.recipients_per_transaction = max(1, recipients_per_transaction)
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.local_hostname = local_hostname
        self.smtp: aiosmtplib.SMTP | None = None
        self.last_used = time.monotonic()
        self.delivered = 0
        self.tls = False

    def _heard(self, command: str, code: int | None) -> None:
        if self.on_reply is not None:
            self.on_reply(command, reply_class(code))

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
            greeting = await smtp.connect(timeout=self.connect_timeout)
        except aiosmtplib.SMTPConnectTimeoutError as exc:
            self._heard("connect", None)
            raise HopFailure(Reason.DEFERRED_TIMEOUT, f"connect to {hop.address} timed out: {exc}") from None
        except aiosmtplib.SMTPConnectResponseError as exc:
            self._heard("connect", exc.code)
            raise HopFailure(Reason.DEFERRED_4XX, f"{hop.address} greeting: {reply_text(exc.code, exc.message)}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._heard("connect", None)
            raise HopFailure(Reason.DEFERRED_CONNECT, f"cannot connect to {hop.address}: {exc}") from None
        self._heard("connect", greeting.code)
        command = "ehlo"  # the command under way, for a reply that never comes
        try:
            await self._hello(smtp)
            self.tls = False
            if hop.tls != "off" and (hop.tls == "required" or smtp.supports_extension("starttls")):
                if not smtp.supports_extension("starttls"):
                    raise HopFailure(Reason.DEFERRED_TLS, f"{hop.address} does not offer STARTTLS, and TLS is required")
                command = "starttls"
                try:
                    self._heard(command, (await smtp.starttls(
                        server_hostname=hop.tls_name or hop.host, tls_context=self._tls_context()
                    )).code)
                except aiosmtplib.SMTPResponseException as exc:
                    self._heard(command, exc.code)
                    raise HopFailure(Reason.DEFERRED_TLS, f"STARTTLS with {hop.address} failed: {exc}") from None
                except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
                    self._heard(command, None)
                    raise HopFailure(Reason.DEFERRED_TLS, f"STARTTLS with {hop.address} failed: {exc}") from None
                self.tls = True
                command = "ehlo"
                # The EHLO inside TLS (aiosmtplib would send it before the next command
                # anyway), sent here so its reply is counted like the first one.
                await self._hello(smtp)
            if hop.user:
                if not self.tls and hop.tls != "off":
                    raise HopFailure(
                        Reason.DEFERRED_TLS, f"will not send AUTH to {hop.address} in plain text (STARTTLS not offered)"
                    )
                command = "auth"
                try:
                    self._heard(command, (await smtp.login(hop.user, hop.password or "")).code)
                except aiosmtplib.SMTPAuthenticationError as exc:
                    self._heard(command, exc.code)
                    raise HopFailure(Reason.DEFERRED_AUTH, f"AUTH at {hop.address}: {reply_text(exc.code, exc.message)}") from None
                except aiosmtplib.SMTPException as exc:
                    self._heard(command, getattr(exc, "code", None))
                    raise HopFailure(Reason.DEFERRED_AUTH, f"AUTH at {hop.address}: {exc}") from None
        except HopFailure:
            smtp.close()
            raise
        except aiosmtplib.SMTPTimeoutError as exc:
            self._heard(command, None)
            smtp.close()
            raise HopFailure(Reason.DEFERRED_TIMEOUT, f"{hop.address} timed out: {exc}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._heard(command, getattr(exc, "code", None))
            smtp.close()
            raise HopFailure(Reason.DEFERRED_CONNECT, f"{hop.address}: {exc}") from None
        self.smtp = smtp

    async def _hello(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            self._heard("ehlo", (await smtp.ehlo()).code)
        except aiosmtplib.SMTPHeloError as exc:
            self._heard("ehlo", exc.code)
            self._heard("ehlo", (await smtp.helo()).code)

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
        m, signing = await sign_for_delivery(self.signer, m)  # DKIM: the bytes prepare() sends as they are
        prepared = prepare(m, smtp.supports_extension, self.hop.address, size_limit(smtp.esmtp_extensions.get("size")))
        prepared.notes[:0] = signing
        if prepared.refusal is not None:
            return all_failed(m, prepared.refusal_reason, prepared.refusal)
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
                txn = TransactionResult(
                    {r: RecipientResult(r, "deferred", reply, remote=False) for r in batch}, stop=(reason, reply),
                )
            results.update(txn.results)
            data_failed = data_failed or txn.data_failed
            if txn.stop is not None:
                stop = txn.stop
                state = stop_state(stop)
                for rcpt in pending:
                    results[rcpt] = RecipientResult(
                        rcpt, state, stop[1].removeprefix("MAIL: "), judged=False, remote=txn.stop_remote,
                    )
                break
            pending = txn.too_many + pending
        return conclude(
            m, results, stop=stop, data_failed=data_failed, transactions=transactions,
            notes=prepared.notes, dsn=prepared.dsn,
        )

    async def _one_transaction(self, m: Claimed, batch: list[str], prepared: Prepared) -> TransactionResult:
        smtp = self.smtp
        assert smtp is not None
        try:
            self._heard("mail", (await smtp.mail(m.mail_from, options=prepared.mail_options, encoding=prepared.encoding)).code)
        except aiosmtplib.SMTPServerDisconnected:
            self._heard("mail", None)
            smtp.close()
            raise _Retryable() from None
        except aiosmtplib.SMTPResponseException as exc:
            self._heard("mail", exc.code)
            await self._rset()
            state, reason = classify(exc.code)
            reply = reply_text(exc.code, exc.message)
            # A refused MAIL FROM is about the sender: no recipient was judged.
            refused = {r: RecipientResult(r, state, reply, judged=False) for r in batch}
            return TransactionResult(refused, stop=(reason, f"MAIL: {reply}"), stop_remote=True)
        except aiosmtplib.SMTPTimeoutError as exc:
            self._heard("mail", None)
            smtp.close()
            raise HopFailure(Reason.DEFERRED_TIMEOUT, f"MAIL timed out at {self.hop.address}: {exc}") from None
        results: dict[str, RecipientResult] = {}
        accepted: list[str] = []
        too_many: list[str] = []
        command = "rcpt"  # the command under way, for a reply that never comes
        try:
            for i, rcpt in enumerate(batch):
                try:
                    self._heard(command, (await smtp.rcpt(
                        rcpt, options=prepared.rcpt_options(m, rcpt), encoding=prepared.encoding
                    )).code)
                    accepted.append(rcpt)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    self._heard(command, exc.code)
                    if exc.code == 452 and accepted:
                        too_many = batch[i:]  # this one and the rest: a new transaction, now
                        break
                    state, _ = classify(exc.code)
                    results[rcpt] = RecipientResult(rcpt, state, reply_text(exc.code, exc.message))
            if not accepted:
                await self._rset()
                return TransactionResult(results)
            command = "data"
            try:
                response = await smtp.data(prepared.data)
            except aiosmtplib.SMTPResponseException as exc:
                self._heard(command, exc.code)
                state, _ = classify(exc.code)
                reply = reply_text(exc.code, exc.message)
                for rcpt in accepted:
                    results[rcpt] = RecipientResult(rcpt, state, reply)
                return TransactionResult(results, too_many, data_failed=True)
        except aiosmtplib.SMTPTimeoutError as exc:
            self._heard(command, None)
            smtp.close()
            raise HopFailure(Reason.DEFERRED_TIMEOUT, f"timed out at {self.hop.address}: {exc}") from None
        except (aiosmtplib.SMTPServerDisconnected, OSError) as exc:
            self._heard(command, None)
            smtp.close()
            # Mid-transaction: the message may or may not have gone; retry later (at least once).
            reply = f"connection to {self.hop.address} lost: {exc}"
            for rcpt in batch:
                results.setdefault(rcpt, RecipientResult(rcpt, "deferred", reply, remote=False))
            return TransactionResult(results, stop=(Reason.DEFERRED_CONNECT, reply))
        self._heard(command, response.code)
        self.delivered += 1
        reply = reply_text(response.code, response.message)
        for rcpt in accepted:
            results[rcpt] = RecipientResult(rcpt, "sent", reply)
        return TransactionResult(results, too_many)

    async def _rset(self) -> None:
        if self.smtp is None:
            return
        try:
            await self.smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            self.smtp.close()


class _Retryable(Exception):
    pass


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


def canonical_address(ip: str) -> str:
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
    hop_ips = {canonical_address(ip) for ip in await _resolve(hop_host, hop_port)}
    if not hop_ips:
        return False
    for host in same_port:
        if host in ("", "0.0.0.0", "::", "*"):
            if any(_is_local_ip(ip) for ip in hop_ips):
                return True
            continue
        own_ips = {canonical_address(ip) for ip in await _resolve(host, hop_port)}
        if hop_ips & own_ips:
            return True
    return False

