"""A real aiosmtpd next hop on 127.0.0.1 (port 0) whose EHLO offers exactly what a
test asks for — SIZE, 8BITMIME, SMTPUTF8, DSN — and that can answer ``452 4.5.3``
after N recipients in a transaction. It records every transaction with the raw
MAIL/RCPT parameters as they came over the wire."""

from __future__ import annotations

import asyncio
import email
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

DSN_MAIL = ("RET", "ENVID")
DSN_RCPT = ("NOTIFY", "ORCPT")


def _split(arg: str, keys: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``arg`` without the ``KEY=value`` parameters in ``keys`` (aiosmtpd knows no DSN)."""
    kept, taken = [], {}
    for token in arg.split():
        key, _, value = token.partition("=")
        if key.upper() in keys:
            taken[key.upper()] = value
        else:
            kept.append(token)
    return " ".join(kept), taken


def params_of(arg: str) -> dict[str, str]:
    """``FROM:<a> SIZE=10 BODY=8BITMIME`` → {"SIZE": "10", "BODY": "8BITMIME"}."""
    out = {}
    for token in arg.split()[1:] if ">" in arg.split()[0] else arg.split():
        key, _, value = token.partition("=")
        out[key.upper()] = value
    return out


@dataclass
class Transaction:
    mail_from: str
    mail_params: dict[str, str]
    rcpts: list[tuple[str, dict[str, str]]]
    data: bytes

    @property
    def rcpt_tos(self) -> list[str]:
        return [address for address, _params in self.rcpts]

    def parsed(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=default_policy)  # type: ignore[return-value]


@dataclass
class NextHop:
    size: bool = True
    size_limit: int = 50 * 1024 * 1024  # advertised as SIZE <size_limit> (with size)
    eightbit: bool = True
    smtputf8: bool = True
    dsn: bool = True
    rcpt_limit: int | None = None  # 452 4.5.3 past this many recipients in one transaction
    refuse_prefix: str = "bad"  # recipients starting with this get 550 5.1.1
    transactions: list[Transaction] = field(default_factory=list)
    rcpt_commands: int = 0
    port: int = 0
    _server: asyncio.AbstractServer | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> NextHop:
        loop = asyncio.get_running_loop()
        handler = _Handler(self)

        def factory() -> SMTP:
            return _HopSMTP(
                self, handler, data_size_limit=self.size_limit if self.size else None,
                enable_SMTPUTF8=self.smtputf8, decode_data=False, hostname="hop.test",
            )

        self._server = await loop.create_server(factory, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait_for(self, count: int, within: float = 30.0) -> list[Transaction]:
        async def enough() -> None:
            while len(self.transactions) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(enough(), within)
        return list(self.transactions)

    def to(self, address: str) -> list[Transaction]:
        return [t for t in self.transactions if address in t.rcpt_tos]


class _HopSMTP(SMTP):
    def __init__(self, hop: NextHop, handler: Any, **kw: Any) -> None:
        super().__init__(handler, **kw)
        self.hop = hop
        self.raw_mail = ""
        self.raw_rcpts: list[tuple[str, dict[str, str]]] = []

    async def smtp_MAIL(self, arg: str) -> None:
        self.raw_mail = arg or ""
        self.raw_rcpts = []
        if self.hop.dsn and arg:
            arg, _taken = _split(arg, DSN_MAIL)
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str) -> None:
        self.hop.rcpt_commands += 1
        self.pending_rcpt = arg or ""
        if self.hop.dsn and arg:
            arg, _taken = _split(arg, DSN_RCPT)
        await super().smtp_RCPT(arg)


class _Handler:
    def __init__(self, hop: NextHop) -> None:
        self.hop = hop

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        out = [r for r in responses if not (r.startswith("250-8BITMIME") and not self.hop.eightbit)]
        if self.hop.dsn:
            out.insert(len(out) - 1, "250-DSN")
        return out

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        assert isinstance(server, _HopSMTP)
        if self.hop.rcpt_limit is not None and len(envelope.rcpt_tos) >= self.hop.rcpt_limit:
            return "452 4.5.3 Too many recipients"
        if address.startswith(self.hop.refuse_prefix):
            return f"550 5.1.1 <{address}>: no such user"
        envelope.rcpt_tos.append(address)
        server.raw_rcpts.append((address, params_of(server.pending_rcpt)))
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, _HopSMTP)
        data = envelope.original_content or b""
        self.hop.transactions.append(
            Transaction(str(envelope.mail_from).removeprefix("<>"), params_of(server.raw_mail), list(server.raw_rcpts), data)
        )
        self.hop._arrived.set()
        return "250 2.0.0 OK queued"
