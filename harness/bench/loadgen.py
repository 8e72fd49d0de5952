"""The load generator every benchmark uses: N aiosmtplib connections, STARTTLS + AUTH.

``await run_load(LoadSpec(...)) -> LoadResult``. ``connections`` workers share one
budget (``messages``, and optionally ``seconds``); each either keeps one connection
(STARTTLS and AUTH once, then message after message) or, with ``new_connection``,
connects, starts TLS and authenticates for every message. Each message is
``size`` bytes with ``recipients`` recipients, or whatever ``message(n)`` makes for
message ``n`` (its recipients and bytes: a distinct Message-ID, say). ``connect_first``
opens every connection (STARTTLS + AUTH) before the clock starts, so only sending is
timed; ``schedule`` paces the load (message ``n`` goes no earlier than ``schedule[n]``
seconds after the start). ``on_reply(n, text)`` sees each accepted message's reply as
it arrives. Failures are counted by reply code or exception type, never raised; a
broken connection is replaced. Loopback or any address you give it — the benches only
ever give 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiosmtplib


@dataclass
class LoadSpec:
    ports: list[int]
    host: str = "127.0.0.1"
    connections: int = 32
    messages: int = 10_000  # the budget shared by every connection
    seconds: float | None = None  # stop starting new messages after this long
    size: int = 2048
    recipients: int = 1
    starttls: bool = True
    tls_on_connect: bool = False  # implicit TLS (RFC 8314) instead of STARTTLS
    tls_context: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    mail_from: str = "bench@bench.example"
    rcpt_domain: str = "sink.example"
    new_connection: bool = False  # connect + STARTTLS + AUTH for every message
    timeout: float = 30.0
    headers: dict[str, str] = field(default_factory=dict)
    message: Callable[[int], tuple[list[str], bytes]] | None = None  # message n's (recipients, data)
    connect_first: bool = False  # open every connection before the clock starts
    schedule: Sequence[float] | None = None  # message n waits until schedule[n] s after the start
    on_reply: Callable[[int, str], None] | None = None  # sees message n's "250 …" reply text


@dataclass
class LoadResult:
    sent: int = 0
    failed: int = 0
    seconds: float = 0.0
    started_at: float = 0.0  # unix seconds when the clock started (to compare with arrival times)
    last_reply: float = 0.0  # seconds from the start to the last accepted message's reply
    connects: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)  # seconds per message (send → 250)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def make_message(size: int, mail_from: str, recipient: str, headers: dict[str, str] | None = None) -> bytes:
    """A message of about ``size`` bytes: headers, then 76-character lines."""
    head = f"From: {mail_from}\r\nTo: {recipient}\r\nSubject: smtpplus load\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head += "\r\n"
    line = "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopqr\r\n"
    body_size = max(0, size - len(head))
    full, rest = divmod(body_size, len(line))
    body = line * full + ("x" * (rest - 2) + "\r\n" if rest >= 2 else "")
    return (head + body).encode("ascii")


class _Budget:
    """The messages every worker shares: ``take()`` gives the next message's number."""

    def __init__(self, messages: int, seconds: float | None) -> None:
        self.messages = messages
        self.taken = 0
        self.started = time.perf_counter()
        self.deadline = None if seconds is None else self.started + seconds

    def take(self) -> int | None:
        if self.taken >= self.messages or (self.deadline is not None and time.perf_counter() >= self.deadline):
            return None
        self.taken += 1
        return self.taken - 1


async def run_load(spec: LoadSpec) -> LoadResult:
    result = LoadResult()
    recipients = [f"r{i}@{spec.rcpt_domain}" for i in range(spec.recipients)]
    data = make_message(spec.size, spec.mail_from, recipients[0], spec.headers)

    def message(n: int) -> tuple[list[str], bytes]:
        return (recipients, data) if spec.message is None else spec.message(n)

    ports = [spec.ports[i % len(spec.ports)] for i in range(spec.connections)]
    clients: list[aiosmtplib.SMTP | None] = [None] * spec.connections
    if spec.connect_first:
        clients = list(await asyncio.gather(*(_connect_counted(spec, port, result) for port in ports)))
    budget = _Budget(spec.messages, spec.seconds)
    result.started_at = time.time()
    workers = [
        asyncio.create_task(_worker(spec, port, client, budget, message, result))
        for port, client in zip(ports, clients, strict=True)
    ]
    await asyncio.gather(*workers)
    result.seconds = time.perf_counter() - budget.started
    return result


async def _connect(spec: LoadSpec, port: int, result: LoadResult) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname=spec.host,
        port=port,
        start_tls=spec.starttls and not spec.tls_on_connect,
        use_tls=spec.tls_on_connect,
        tls_context=spec.tls_context,
        timeout=spec.timeout,
        local_hostname="loadgen.localhost",
    )
    await client.connect()
    if spec.username is not None:
        await client.login(spec.username, spec.password or "")
    result.connects += 1
    return client


async def _connect_counted(spec: LoadSpec, port: int, result: LoadResult) -> aiosmtplib.SMTP | None:
    """A connection opened ahead of the clock; a failure is counted and the worker retries later."""
    try:
        return await _connect(spec, port, result)
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
        result.errors[f"connect: {type(exc).__name__}"] += 1
        return None


async def _worker(
    spec: LoadSpec, port: int, client: aiosmtplib.SMTP | None, budget: _Budget,
    message: Callable[[int], tuple[list[str], bytes]], result: LoadResult,
) -> None:
    try:
        while (n := budget.take()) is not None:
            if spec.schedule is not None and n < len(spec.schedule):
                delay = budget.started + spec.schedule[n] - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            recipients, data = message(n)
            began = time.perf_counter()
            try:
                if client is None:
                    client = await _connect(spec, port, result)
                _, reply = await client.sendmail(spec.mail_from, recipients, data)
            except aiosmtplib.SMTPResponseException as exc:
                result.failed += 1
                result.errors[f"{exc.code} {exc.message[:60]}"] += 1
                if spec.new_connection or exc.code in (421, 451) or isinstance(exc, aiosmtplib.SMTPAuthenticationError):
                    await _drop(client)
                    client = None
                continue
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                result.failed += 1
                result.errors[type(exc).__name__] += 1
                await _drop(client)
                client = None
                continue
            replied = time.perf_counter()
            result.sent += 1
            result.latencies.append(replied - began)
            result.last_reply = replied - budget.started
            if spec.on_reply is not None:
                spec.on_reply(n, reply)
            if spec.new_connection:
                await _quit(client)
                client = None
    finally:
        if client is not None:
            await _quit(client)


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit()
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        client.close()


async def _drop(client: aiosmtplib.SMTP | None) -> None:
    if client is not None:
        client.close()
