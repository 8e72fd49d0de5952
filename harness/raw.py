"""Byte-exact SMTP over a raw asyncio stream, for bad input.

aiosmtplib cleans input up (it refuses control characters in commands, turns bare CR
and LF into CRLF and dot-stuffs the message) — right for a client, but it would hide
exactly what a bad-input test sends: SMTP-smuggling variants (``\\n.\\n``, ``\\r.\\r``,
…), bare CR/LF, control characters, overlong lines. :class:`RawSession` sends bytes as
given and parses replies with a tiny parser; :meth:`RawSession.starttls` upgrades the
same stream (``asyncio.StreamWriter.start_tls``) so raw sends also work after TLS and
AUTH. :func:`raw_send` runs a whole session and reports any extra replies the server
sent afterwards (a smuggled second message would show up as extra replies).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.client import DEFAULT_EHLO_NAME, MASK, Line, Reply, Stage, TlsInfo, fingerprint

MAX_REPLY_LINE = 8192
END_OF_DATA = b"\r\n.\r\n"


class RawClosed(ConnectionError):
    """The server closed the connection (or sent something that is not a reply)."""


def parse_reply_lines(lines: Sequence[bytes]) -> Reply:
    """``[b"250-a\\r\\n", b"250 b\\r\\n"]`` → Reply(250, "a\\nb")."""
    code = int(lines[-1][:3])
    texts = [line[4:].rstrip(b"\r\n").decode("utf-8", "replace") for line in lines]
    return Reply(code, "\n".join(texts))


def shown(data: bytes, limit: int = 200) -> str:
    """A transcript form of raw bytes: printable as is, the rest escaped."""
    text = data.decode("latin-1")
    out = text.encode("unicode_escape").decode("ascii")
    if len(out) > limit:
        return f"{out[:limit]}… ({len(data)} bytes)"
    return out


@dataclass(slots=True)
class RawResult:
    host: str
    port: int
    lines: list[Line] = field(default_factory=list)
    replies: dict[str, Reply] = field(default_factory=dict)
    recipient_replies: list[tuple[str, Reply]] = field(default_factory=list)
    extra_replies: list[Reply] = field(default_factory=list)
    tls: TlsInfo | None = None
    failed_stage: Stage | None = None
    error: str = ""
    total_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed_stage is None

    @property
    def decisive_reply(self) -> Reply | None:
        if self.failed_stage is Stage.RCPT and self.recipient_replies:
            return next((r for _, r in self.recipient_replies if not r.ok), None)
        if self.failed_stage is not None:
            return self.replies.get(str(self.failed_stage))
        for stage in reversed(list(Stage)):
            if str(stage) in self.replies:
                return self.replies[str(stage)]
        return None

    @property
    def accepted_recipients(self) -> list[str]:
        return [addr for addr, reply in self.recipient_replies if reply.ok]


class RawSession:
    """One connection; every byte sent and every reply line is in ``lines``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.started = time.perf_counter()
        self.lines: list[Line] = []
        self.tls: TlsInfo | None = None

    @classmethod
    async def open(cls, host: str, port: int, *, limit_seconds: float = 30.0) -> tuple[RawSession, Reply]:
        """Connect and read the banner (``limit_seconds`` bounds every wait after it too)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=MAX_REPLY_LINE * 4), limit_seconds
        )
        session = cls(reader, writer, limit_seconds)
        return session, await session.read_reply()

    def _at(self) -> float:
        return time.perf_counter() - self.started

    def note(self, text: str) -> None:
        self.lines.append(Line(self._at(), "**", text))

    async def read_reply(self, wait: float | None = None) -> Reply:
        """One (possibly multi-line) reply; RawClosed when the server hung up."""
        lines: list[bytes] = []
        while True:
            try:
                line = await asyncio.wait_for(self.reader.readline(), wait or self.timeout)
            except ValueError:
                raise RawClosed("reply line too long") from None
            except (ConnectionError, ssl.SSLError) as exc:
                raise RawClosed(f"connection lost: {exc}") from None
            if not line:
                raise RawClosed("server closed the connection")
            if len(line) < 3 or not line[:3].isdigit():
                raise RawClosed(f"not an SMTP reply: {shown(line)}")
            lines.append(line)
            self.lines.append(Line(self._at(), "<-", line.rstrip(b"\r\n").decode("utf-8", "replace")))
            if line[3:4] != b"-":
                return parse_reply_lines(lines)

    async def send(self, data: bytes, *, display: str | None = None) -> None:
        """Write ``data`` exactly as given (no line ending added)."""
        self.lines.append(Line(self._at(), "->", display if display is not None else shown(data)))
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: bytes | str, *, display: str | None = None) -> Reply:
        """A command line: ``str`` gets CRLF appended; ``bytes`` go out byte for byte."""
        data = (line + "\r\n").encode("utf-8") if isinstance(line, str) else line
        await self.send(data, display=display if display is not None else shown(data.removesuffix(b"\r\n")))
        return await self.read_reply()

    async def starttls(self, context: ssl.SSLContext, server_hostname: str | None, *, verified: bool = True) -> Reply:
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            return reply
        await self.writer.start_tls(context, server_hostname=server_hostname, ssl_handshake_timeout=self.timeout)
        sslobject = self.writer.get_extra_info("ssl_object")
        der = sslobject.getpeercert(binary_form=True) if sslobject is not None else None
        cipher = sslobject.cipher() if sslobject is not None else None
        self.tls = TlsInfo(
            version=(sslobject.version() if sslobject else None) or "?",
            cipher=cipher[0] if cipher else "?",
            peer_fingerprint=fingerprint(der) if der else "?",
            verified=verified,
        )
        self.note(f"TLS started: {self.tls.version}, cipher {self.tls.cipher}")
        return reply

    async def auth_plain(self, user: str, password: str, *, authzid: str = "") -> Reply:
        payload = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode("ascii")
        return await self.command(f"AUTH PLAIN {payload}", display=f"AUTH PLAIN {MASK}")

    async def extra_replies(self, wait: float) -> list[Reply]:
        """Replies that arrive within ``wait`` seconds with nothing asked."""
        extras: list[Reply] = []
        while True:
            try:
                extras.append(await self.read_reply(wait))
            except (TimeoutError, RawClosed):
                return extras

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)
        except (TimeoutError, OSError, ssl.SSLError):
            pass  # the server may already be gone; nothing left to tidy


@dataclass(slots=True)
class RawSend:
    """A whole session with byte-exact pieces. ``mail_from``/``recipients`` are the
    bytes between ``<`` and ``>``; ``payload`` is the message as sent, followed by
    ``terminator`` (default CRLF.CRLF)."""

    host: str
    port: int
    mail_from: bytes
    recipients: Sequence[bytes]
    payload: bytes
    terminator: bytes = END_OF_DATA
    tls_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    auth_user: str | None = None
    auth_password: str | None = None
    ehlo_name: bytes = DEFAULT_EHLO_NAME.encode()
    timeout: float = 30.0
    extra_wait: float = 0.0  # replies to anything smuggled arrive before QUIT's 221 anyway
    raw_commands: Sequence[bytes] = ()  # sent after AUTH, before MAIL, each with its reply


class _Failed(Exception):
    def __init__(self, stage: Stage, reply: Reply | None, error: str) -> None:
        super().__init__(error)
        self.stage = stage
        self.reply = reply


async def raw_send(spec: RawSend) -> RawResult:
    """Run the session; never raises for server behaviour."""
    result = RawResult(host=spec.host, port=spec.port)
    session: RawSession | None = None
    started = time.perf_counter()

    def expect(stage: Stage, reply: Reply, codes: tuple[int, ...]) -> None:
        result.replies[str(stage)] = reply
        if reply.code not in codes:
            raise _Failed(stage, reply, f"{stage} refused: {reply}")

    stage = Stage.CONNECT
    try:
        try:
            session, banner = await RawSession.open(spec.host, spec.port, limit_seconds=spec.timeout)
        except (OSError, TimeoutError) as exc:
            raise _Failed(Stage.CONNECT, None, f"cannot connect: {exc}") from None
        stage = Stage.BANNER
        expect(Stage.BANNER, banner, (220,))
        stage = Stage.EHLO
        expect(Stage.EHLO, await session.command(b"EHLO " + spec.ehlo_name + b"\r\n"), (250,))
        if spec.tls_context is not None:
            stage = Stage.TLS
            expect(Stage.TLS, await session.starttls(spec.tls_context, spec.server_hostname), (220,))
            result.tls = session.tls
            stage = Stage.EHLO
            expect(Stage.EHLO, await session.command(b"EHLO " + spec.ehlo_name + b"\r\n"), (250,))
        if spec.auth_user is not None:
            stage = Stage.AUTH
            expect(Stage.AUTH, await session.auth_plain(spec.auth_user, spec.auth_password or ""), (235,))
        for raw in spec.raw_commands:
            await session.command(raw)
        stage = Stage.MAIL
        expect(Stage.MAIL, await session.command(b"MAIL FROM:<" + spec.mail_from + b">\r\n"), (250,))
        stage = Stage.RCPT
        for recipient in spec.recipients:
            reply = await session.command(b"RCPT TO:<" + recipient + b">\r\n")
            result.recipient_replies.append((recipient.decode("utf-8", "replace"), reply))
            result.replies[str(Stage.RCPT)] = reply
        if not result.accepted_recipients:
            raise _Failed(Stage.RCPT, None, "no recipient accepted")
        stage = Stage.DATA
        expect(Stage.DATA, await session.command(b"DATA\r\n"), (354,))
        await session.send(spec.payload + spec.terminator, display=f"<message: {shown(spec.payload, 120)}> {shown(spec.terminator)}")
        expect(Stage.DATA, await session.read_reply(), (250,))
        if spec.extra_wait > 0:
            result.extra_replies = await session.extra_replies(spec.extra_wait)
    except _Failed as failed:
        result.failed_stage = failed.stage
        result.error = str(failed)
    except RawClosed as exc:
        result.failed_stage = stage
        result.error = str(exc)
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        result.failed_stage = stage
        result.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        if session is not None:
            try:
                await session.send(b"QUIT\r\n")
                replies = await session.extra_replies(min(spec.timeout, 2.0))
                # Anything but the QUIT reply is a reply nobody asked for.
                result.extra_replies += [r for r in replies if r.code != 221]
            except (OSError, ssl.SSLError):
                session.note("connection already closed")
            await session.close()
            result.lines = session.lines
        result.total_seconds = time.perf_counter() - started
    return result
