"""Pipelined load: several messages per round trip, as raw bytes over the TLS stream.

``await run_pipelined(spec, depth) -> LoadResult`` takes the same
:class:`harness.bench.loadgen.LoadSpec` as :func:`harness.bench.loadgen.run_load`
(ports, connections, budget, size, recipients, STARTTLS or TLS on connect, AUTH, the
``on_reply`` hook) and sends ``depth`` whole messages per write on each connection —
``MAIL``, ``RCPT``…, ``DATA``, the dot-stuffed message and ``.`` for each — then reads
every reply of the batch (250, 250…, 354, 250 per message) before the next write: one
round trip for ``depth`` messages.

That goes past RFC 2920, which has a client wait for ``354`` before the message; a
server that reads its commands from one buffered stream (aiosmtpd, hence the relay and
the raw sink alike) takes it whether or not it offers PIPELINING, which is why it works
against both today. A batch whose replies are not the expected ones (a refused MAIL
would turn the message into commands) counts its messages as failed and the connection
is replaced.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import time
from collections.abc import Callable

from harness.bench.loadgen import LoadResult, LoadSpec, make_message

MAX_LINE = 64 * 1024


class _Broken(Exception):
    """The connection's replies went off script; its messages failed."""


async def run_pipelined(spec: LoadSpec, depth: int) -> LoadResult:
    result = LoadResult()
    recipients = [f"r{i}@{spec.rcpt_domain}" for i in range(spec.recipients)]
    data = make_message(spec.size, spec.mail_from, recipients[0], spec.headers)

    def message(n: int) -> tuple[list[str], bytes]:
        return (recipients, data) if spec.message is None else spec.message(n)

    ports = [spec.ports[i % len(spec.ports)] for i in range(spec.connections)]
    budget = _Budget(spec.messages, spec.seconds)
    result.started_at = time.time()
    await asyncio.gather(*(_worker(spec, port, depth, budget, message, result) for port in ports))
    result.seconds = time.perf_counter() - budget.started
    return result


class _Budget:
    def __init__(self, messages: int, seconds: float | None) -> None:
        self.left = messages
        self.started = time.perf_counter()
        self.deadline = None if seconds is None else self.started + seconds

    def take(self, most: int) -> list[int]:
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return []
        count = min(most, self.left)
        first = self.left
        self.left -= count
        return list(range(first - count, first))


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    async def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: its code and its last line's text."""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), self.timeout)
            if not line:
                raise _Broken("server closed the connection")
            if len(line) < 4 or not line[:3].isdigit():
                raise _Broken(f"not a reply: {line[:40]!r}")
            if line[3:4] != b"-":
                return int(line[:3]), line[4:].decode("utf-8", "replace").strip()

    async def command(self, line: str, expect: int) -> str:
        self.writer.write(line.encode() + b"\r\n")
        code, text = await self.reply()
        if code != expect:
            raise _Broken(f"{line.split()[0]}: {code} {text[:60]}")
        return text

    def close(self) -> None:
        self.writer.close()


async def _open(spec: LoadSpec, port: int, result: LoadResult) -> _Connection:
    context = spec.tls_context or ssl.create_default_context()
    if spec.tls_on_connect:
        reader, writer = await asyncio.open_connection(spec.host, port, ssl=context, limit=MAX_LINE)
    else:
        reader, writer = await asyncio.open_connection(spec.host, port, limit=MAX_LINE)
    conn = _Connection(reader, writer, spec.timeout)
    code, text = await conn.reply()
    if code != 220:
        raise _Broken(f"greeting: {code} {text[:60]}")
    await conn.command("EHLO loadgen.localhost", 250)
    if spec.starttls and not spec.tls_on_connect:
        await conn.command("STARTTLS", 220)
        await writer.start_tls(context, server_hostname=spec.host)
        await conn.command("EHLO loadgen.localhost", 250)
    if spec.username is not None:
        token = base64.b64encode(f"\0{spec.username}\0{spec.password or ''}".encode()).decode()
        await conn.command(f"AUTH PLAIN {token}", 235)
    result.connects += 1
    return conn


def _batch(spec: LoadSpec, numbers: list[int], message: Callable[[int], tuple[list[str], bytes]]) -> tuple[bytes, list[int]]:
    """The bytes of a batch and how many recipients each of its messages has."""
    parts: list[bytes] = []
    counts: list[int] = []
    for n in numbers:
        recipients, data = message(n)
        parts.append(f"MAIL FROM:<{spec.mail_from}>\r\n".encode())
        parts.extend(f"RCPT TO:<{r}>\r\n".encode() for r in recipients)
        parts.append(b"DATA\r\n")
        parts.append(_dot_stuffed(data))
        counts.append(len(recipients))
    return b"".join(parts), counts


def _dot_stuffed(data: bytes) -> bytes:
    data = re.sub(rb"\r\n|\n|\r", b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", data) + b".\r\n"


async def _worker(
    spec: LoadSpec, port: int, depth: int, budget: _Budget,
    message: Callable[[int], tuple[list[str], bytes]], result: LoadResult,
) -> None:
    conn: _Connection | None = None
    try:
        while numbers := budget.take(depth):
            began = time.perf_counter()
            done = 0
            try:
                if conn is None:
                    conn = await _open(spec, port, result)
                payload, counts = _batch(spec, numbers, message)
                conn.writer.write(payload)
                await conn.writer.drain()
                for n, recipients in zip(numbers, counts, strict=True):
                    await _expect_message(conn, n, recipients, result, began, budget, spec)
                    done += 1
            except (_Broken, TimeoutError, OSError, ssl.SSLError) as exc:
                result.failed += len(numbers) - done
                result.errors[str(exc)[:60] if isinstance(exc, _Broken) else type(exc).__name__] += 1
                if conn is not None:
                    conn.close()
                conn = None
    finally:
        if conn is not None:
            try:
                await conn.command("QUIT", 221)
            except (_Broken, TimeoutError, OSError, ssl.SSLError):
                pass
            conn.close()


async def _expect_message(
    conn: _Connection, n: int, recipients: int, result: LoadResult, began: float, budget: _Budget, spec: LoadSpec
) -> None:
    for expected in (250, *([250] * recipients), 354):
        code, text = await conn.reply()
        if code != expected:
            raise _Broken(f"{code} {text[:56]}")
    code, text = await conn.reply()
    if code != 250:
        raise _Broken(f"{code} {text[:56]}")
    replied = time.perf_counter()
    result.sent += 1
    result.latencies.append(replied - began)
    result.last_reply = replied - budget.started
    if spec.on_reply is not None:
        spec.on_reply(n, f"{code} {text}")
