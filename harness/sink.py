"""The capture sink: an SMTP server that accepts everything and records each
message with its arrival sequence and time (default ``127.0.0.1:8025``, outside
the relay's port range). The demo and the harness use it as the relay's next hop.

    sink = CaptureSink(port=0, chaos=Chaos(temp_first=1))
    port = await sink.start()          # the bound port
    ...
    records = await sink.wait_for(10)  # event-based, generous timeout
    await sink.stop()

Chaos replies make retry tests possible: a 4xx or 5xx per recipient with a
(seeded) probability, for recipients matching a pattern, or 4xx for the first N
attempts at each recipient. It runs on the running loop (aiosmtpd's protocol
class, no Controller thread).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import random
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

DEFAULT_HOST = "127.0.0.1"
# The harness tags every message it sends with this header (``<run> <send> <port> <n>``);
# the sink records it as a field, so a record file needs no message bodies.
HARNESS_HEADER = "X-Harness-Id"
DEFAULT_PORT = 8025
TEMP_REPLY = "451 4.3.0 Temporary failure (capture sink chaos)"
PERM_REPLY = "550 5.1.1 Mailbox unavailable (capture sink chaos)"


class ChaosError(ValueError):
    pass


# Chaos keys as the CLI spells them → the Chaos field each sets (scenario files may
# use either spelling).
CHAOS_KEYS = {
    "4xx": "temp_rate", "5xx": "perm_rate", "4xx-match": "temp_match", "5xx-match": "perm_match",
    "4xx-first": "temp_first", "4xx-reply": "temp_reply", "5xx-reply": "perm_reply", "seed": "seed",
}


@dataclass(slots=True)
class Chaos:
    """Failure replies at RCPT time. Each recipient is judged on its own:
    5xx rules first, then 4xx rules."""

    temp_rate: float = 0.0  # probability of a 4xx
    perm_rate: float = 0.0  # probability of a 5xx
    temp_match: str | None = None  # fnmatch pattern (case-insensitive) → 4xx
    perm_match: str | None = None  # fnmatch pattern → 5xx
    temp_first: int = 0  # 4xx for the first N attempts at each recipient
    seed: int = 0
    temp_reply: str = TEMP_REPLY
    perm_reply: str = PERM_REPLY

    @classmethod
    def parse(cls, specs: Iterable[str]) -> Chaos:
        """From CLI items: ``4xx=0.1``, ``5xx=0.05``, ``4xx-match=PATTERN``,
        ``5xx-match=PATTERN``, ``4xx-first=N``, ``4xx-reply=TEXT``, ``5xx-reply=TEXT``,
        ``seed=N``; an unknown key is a ChaosError naming the valid ones."""
        values: dict[str, str] = {}
        for spec in specs:
            key, sep, value = spec.partition("=")
            if not sep:
                raise ChaosError(f"chaos item {spec!r} is not KEY=VALUE — e.g. 4xx=0.1 or 5xx-match='*@bad.example'")
            values[key.strip().lower()] = value.strip()
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Chaos:
        """From a mapping with the CLI keys or the field names (scenario files)."""
        chaos = cls()
        fields = set(CHAOS_KEYS.values())
        for raw_key, value in values.items():
            name = str(raw_key).lower()
            key = CHAOS_KEYS.get(name, name.replace("-", "_"))
            if key not in fields:
                raise ChaosError(f"unknown chaos key {raw_key!r} — valid keys: {', '.join(CHAOS_KEYS)}")
            try:
                if key in ("temp_rate", "perm_rate"):
                    rate = float(value)
                    if not 0 <= rate <= 1:
                        raise ValueError
                    setattr(chaos, key, rate)
                elif key in ("temp_first", "seed"):
                    setattr(chaos, key, int(value))
                elif key in ("temp_match", "perm_match"):
                    setattr(chaos, key, str(value).lower())
                else:  # temp_reply, perm_reply
                    text = str(value)
                    if not text[:3].isdigit() or text[0] != ("4" if key == "temp_reply" else "5"):
                        raise ValueError
                    setattr(chaos, key, text)
            except ValueError:
                raise ChaosError(f"chaos {raw_key}={value!r} is not valid (rates 0–1, counts whole numbers, replies 4xx/5xx)") from None
        return chaos


@dataclass(slots=True)
class SinkRecord:
    """One message as the sink took it. The headers a check needs (priority,
    subject, Message-ID, ``X-Harness-Id``) are fields of their own, so a record
    file is useful without the bodies; ``data`` is ``b""`` unless the sink keeps
    data, and the JSON form then leaves it out."""

    seq: int  # arrival order, from 1
    at: float  # arrival time, unix seconds
    mail_from: str
    rcpt_tos: list[str]
    x_priority: str | None
    importance: str | None
    subject: str | None
    message_id: str | None
    size: int
    data: bytes
    peer: str = ""
    auth_user: str | None = None
    tls: bool = False  # arrived over STARTTLS
    headers: dict[str, str] = field(default_factory=dict)  # other priority headers seen
    harness_id: str | None = None  # the X-Harness-Id header of a harness message

    def to_json(self, *, with_data: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq, "at": self.at, "mail_from": self.mail_from, "rcpt_tos": self.rcpt_tos,
            "x_priority": self.x_priority, "importance": self.importance, "subject": self.subject,
            "message_id": self.message_id, "harness_id": self.harness_id, "size": self.size, "peer": self.peer,
            "auth_user": self.auth_user, "tls": self.tls, "headers": self.headers,
        }
        if with_data:
            out["data"] = self.data.decode("utf-8", "replace")
        return out


class _Handler:
    def __init__(self, sink: CaptureSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        reply = self.sink.chaos_reply(address)
        if reply is not None:
            self.sink.refused.append((address, reply))
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        record = await self.sink.record(envelope, session)
        return f"250 2.0.0 Ok: captured as {record.seq}"


def _accept_any_auth(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    login = getattr(auth_data, "login", None)
    return AuthResult(success=True, auth_data=login.decode("utf-8", "replace") if isinstance(login, bytes) else login)


class CaptureSink:
    """An accept-everything SMTP server on the running loop that records messages."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        record_path: str | Path | None = None,
        chaos: Chaos | None = None,
        *,
        tls_context: ssl.SSLContext | None = None,
        accept_auth: bool = False,
        keep_data: bool = True,
        on_message: Any = None,
    ) -> None:
        self.host = host
        self.port = port
        self.record_path = Path(record_path) if record_path is not None else None
        self.chaos = chaos or Chaos()
        self.tls_context = tls_context
        self.accept_auth = accept_auth
        self.keep_data = keep_data
        self.on_message = on_message  # callable(SinkRecord), e.g. to print a line
        self.messages: list[SinkRecord] = []
        self.refused: list[tuple[str, str]] = []  # (recipient, chaos reply)
        self.attempts: dict[str, int] = {}  # RCPT attempts per recipient
        self._rng = random.Random(self.chaos.seed)
        self._server: asyncio.base_events.Server | None = None
        self._protocols: set[SMTP] = set()
        self._cond: asyncio.Condition | None = None
        self._file: Any = None
        self._parser = BytesHeaderParser(policy=compat32)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> int:
        """Listen; returns the bound port (useful with ``port=0``)."""
        loop = asyncio.get_running_loop()
        self._cond = asyncio.Condition()
        if self.record_path is not None:
            self.record_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.record_path.open("a", encoding="utf-8")
        handler = _Handler(self)

        def factory() -> SMTP:
            protocol = SMTP(
                handler,
                data_size_limit=None,
                enable_SMTPUTF8=True,
                decode_data=False,
                hostname="capture-sink.localdomain",
                ident="smtpplus capture sink",
                tls_context=self.tls_context,
                require_starttls=False,
                auth_require_tls=False,
                authenticator=_accept_any_auth if self.accept_auth else None,
                loop=loop,
            )
            self._protocols.add(protocol)
            return protocol

        self._server = await loop.create_server(factory, host=self.host, port=self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
            for protocol in list(self._protocols):
                transport = getattr(protocol, "transport", None)
                if transport is not None:
                    transport.close()
            self._protocols.clear()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 5)
            except TimeoutError:
                pass
            self._server = None
        if self._file is not None:
            self._file.close()
            self._file = None

    async def __aenter__(self) -> CaptureSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- behaviour ---------------------------------------------------------------

    def chaos_reply(self, address: str) -> str | None:
        """The chaos reply for this RCPT, or None to accept it."""
        key = address.lower()
        self.attempts[key] = self.attempts.get(key, 0) + 1
        c = self.chaos
        if c.perm_match and fnmatch.fnmatchcase(key, c.perm_match):
            return c.perm_reply
        if c.perm_rate and self._rng.random() < c.perm_rate:
            return c.perm_reply
        if c.temp_first and self.attempts[key] <= c.temp_first:
            return c.temp_reply
        if c.temp_match and fnmatch.fnmatchcase(key, c.temp_match):
            return c.temp_reply
        if c.temp_rate and self._rng.random() < c.temp_rate:
            return c.temp_reply
        return None

    async def record(self, envelope: Envelope, session: Session) -> SinkRecord:
        content = envelope.content or b""
        data = content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")
        head = data.split(b"\r\n\r\n", 1)[0]
        headers = self._parser.parsebytes(head + b"\r\n\r\n")
        extra = {
            name: str(headers[name])
            for name in ("X-MSMail-Priority", "Priority")
            if headers[name] is not None
        }
        peer = session.peer
        record = SinkRecord(
            seq=len(self.messages) + 1,
            at=time.time(),
            mail_from="" if envelope.mail_from in (None, "", "<>") else envelope.mail_from,  # "" = the null sender
            rcpt_tos=list(envelope.rcpt_tos),
            x_priority=_header(headers, "X-Priority"),
            importance=_header(headers, "Importance"),
            subject=_header(headers, "Subject"),
            message_id=_header(headers, "Message-ID"),
            size=len(data),
            data=data if self.keep_data else b"",
            peer=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer or ""),
            auth_user=session.auth_data if isinstance(session.auth_data, str) else None,
            tls=session.ssl is not None,
            headers=extra,
            harness_id=_header(headers, HARNESS_HEADER),
        )
        self.messages.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record.to_json(with_data=self.keep_data)) + "\n")
            self._file.flush()
        if self.on_message is not None:
            self.on_message(record)
        if self._cond is not None:
            async with self._cond:
                self._cond.notify_all()
        return record

    async def wait_for(self, count: int, within: float = 30.0) -> list[SinkRecord]:
        """Wait until at least ``count`` messages arrived; TimeoutError says how many did."""
        if self._cond is None:
            raise RuntimeError("the sink is not started")
        try:
            async with asyncio.timeout(within):
                async with self._cond:
                    await self._cond.wait_for(lambda: len(self.messages) >= count)
        except TimeoutError:
            raise TimeoutError(f"capture sink got {len(self.messages)} of {count} message(s) within {within:g} s") from None
        return list(self.messages)

    async def wait_until(self, predicate: Any, within: float = 30.0) -> list[SinkRecord]:
        """Wait until ``predicate(messages)`` holds (re-checked on every arrival)."""
        if self._cond is None:
            raise RuntimeError("the sink is not started")
        try:
            async with asyncio.timeout(within):
                async with self._cond:
                    await self._cond.wait_for(lambda: bool(predicate(self.messages)))
        except TimeoutError:
            raise TimeoutError(f"capture sink condition not met within {within:g} s ({len(self.messages)} message(s))") from None
        return list(self.messages)


def _header(headers: Any, name: str) -> str | None:
    value = headers[name]
    return None if value is None else str(value).strip()


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records a sink wrote to ``record_path`` (one JSON object per line)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out
