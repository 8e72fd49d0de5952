"""Helpers for the relay tests: a seeded store, an in-process relay, SMTP clients
(aiosmtplib for normal dialogues, raw asyncio streams for byte-exact input)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiosmtplib
from argon2 import PasswordHasher, Type

from relay.config import RelayConfig
from relay.service import RelayService
from relay.store import directory, open_store

PASSWORD = {"alice": "alice-secret-password-1", "bob": "bob-secret-password-2", "carol": "carol-secret-password-3"}

# Real argon2id hashes with light cost parameters: the relay verifies them exactly as
# it verifies production hashes (the cost lives in the hash), in ~5 ms instead of
# ~150 ms on a busy 2-core machine. Unknown users still cost a full DUMMY_HASH run.
_LIGHT_HASHER = PasswordHasher(type=Type.ID, time_cost=1, memory_cost=8192, parallelism=1)


def light_hash(password: str) -> str:
    return _LIGHT_HASHER.hash(password)


@dataclass
class Seeded:
    store_path: Path
    passwords: dict[str, str] = field(default_factory=lambda: dict(PASSWORD))


def seed_store(store_path: Path) -> Seeded:
    """One list; alice (active): a.example and example.com verified, pending.example
    pending, boss@b.example verified, new@b.example pending; bob (inactive) with
    a.example; carol (active) with c.example verified, priority 1."""
    db = open_store(store_path)
    try:
        directory.create_list(db, "news")
        directory.create_user(
            db,
            list_name="news",
            username="alice",
            password_hash=light_hash(PASSWORD["alice"]),
            domains=["a.example", "example.com", "pending.example"],
            senders=["boss@b.example", "new@b.example"],
            active=True,
        )
        directory.create_user(
            db,
            list_name="news",
            username="bob",
            password_hash=light_hash(PASSWORD["bob"]),
            domains=["a.example"],
            active=False,
        )
        directory.create_user(
            db,
            list_name="news",
            username="carol",
            password_hash=light_hash(PASSWORD["carol"]),
            domains=["c.example"],
            priority=1,
            active=True,
        )
        directory.approve_identities(db, ["a.example", "example.com", "boss@b.example", "c.example"], "test setup")
    finally:
        db.close()
    return Seeded(store_path)


def relay_config(tmp_path: Path, tls_files: dict[str, Path], **overrides: Any) -> RelayConfig:
    config = RelayConfig(
        host="127.0.0.1",
        ports="0*2",
        data_dir=tmp_path / "relay-data",
        tls_cert=tls_files["cert"],
        tls_key=tls_files["key"],
        server_name="relay.test",
        shutdown_grace=2.0,
        max_connections=64,
        max_connections_per_client=64,
        auth_failures_per_client=1000,
        auth_failures_per_user=1000,
        auth_failure_delay=0.01,  # the throttle's shape, not its seconds (production: 0.5 s … 5 s)
        auth_failure_delay_max=0.05,
        paused=True,
    )
    return replace(config, **overrides)


@contextlib.asynccontextmanager
async def running_relay(store_path: Path, config: RelayConfig) -> AsyncIterator[RelayService]:
    service = RelayService(store_path, config)
    await service.start()
    try:
        yield service
    finally:
        await service.stop(grace=2.0)


def client_context(tls_files: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_files["ca"]))


async def smtp_client(port: int, tls_files: dict[str, Path], *, starttls: bool = True, login: str | None = None) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        tls_context=client_context(tls_files),
        start_tls=starttls,
        local_hostname="client.test",
        timeout=10,
    )
    await client.connect()
    if login is not None:
        await client.login(login, PASSWORD[login])
    return client


def message(sender: str = "x@a.example", *, extra: str = "", body: str = "hello\r\n") -> bytes:
    return f"From: {sender}\r\nTo: r@d.example\r\nSubject: test\r\n{extra}\r\n{body}".encode()


class Raw:
    """A byte-exact SMTP client on asyncio streams (aiosmtplib would clean input up)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, *, source: str | None = None) -> Raw:
        """``source``: the client's own address (any 127.x works on loopback)."""
        local = (source, 0) if source is not None else None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
        raw = cls(reader, writer)
        greeting = await raw.reply()
        assert greeting[0] == 220, greeting
        return raw

    async def reply(self, seconds: float = 10) -> tuple[int, str]:
        """One (possibly multi-line) reply: (code, text of all lines joined by newlines)."""
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), seconds)
            if not line:
                raise ConnectionError("connection closed: " + " | ".join(lines))
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return int(text[:3]), "\n".join(lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: str | bytes) -> tuple[int, str]:
        await self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply()

    async def starttls(self, tls_files: dict[str, Path]) -> None:
        code, _ = await self.command("EHLO client.test")
        assert code == 250
        code, text = await self.command("STARTTLS")
        assert code == 220, text
        await self.writer.start_tls(client_context(tls_files), server_hostname="127.0.0.1")

    async def login(self, username: str, password: str | None = None) -> tuple[int, str]:
        token = base64.b64encode(f"\0{username}\0{password or PASSWORD[username]}".encode()).decode()
        code, _ = await self.command("EHLO client.test")
        assert code == 250
        return await self.command(f"AUTH PLAIN {token}")

    async def closed(self, seconds: float = 5) -> bool:
        """True once the server has closed the connection."""
        try:
            data = await asyncio.wait_for(self.reader.read(), seconds)
        except (TimeoutError, ConnectionError):
            return False
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def rows(store_path: Path, fn: Any, *args: Any, **kwargs: Any) -> Any:
    db = open_store(store_path)
    try:
        return fn(db, *args, **kwargs)
    finally:
        db.close()


def stored_messages(store_path: Path) -> list[dict[str, Any]]:
    """Every message row (tests may read the store directly; the product may not)."""
    db = open_store(store_path)
    try:
        return [dict(row) for row in db.execute("SELECT * FROM messages ORDER BY id")]
    finally:
        db.close()


def stored_body(store_path: Path, queue_id: str) -> bytes:
    db = open_store(store_path)
    try:
        row = db.execute(
            "SELECT b.data FROM message_bodies b JOIN messages m ON m.id = b.message_id WHERE m.queue_id = ?",
            (queue_id,),
        ).fetchone()
        return bytes(row[0])
    finally:
        db.close()


def stored_recipients(store_path: Path, queue_id: str) -> list[str]:
    db = open_store(store_path)
    try:
        return [
            r[0]
            for r in db.execute(
                "SELECT r.address FROM recipients r JOIN messages m ON m.id = r.message_id WHERE m.queue_id = ? "
                "ORDER BY r.address",
                (queue_id,),
            )
        ]
    finally:
        db.close()


def events(store_path: Path, **filters: Any) -> list[Any]:
    from relay.store.events import find_events

    return list(reversed(rows(store_path, find_events, limit=10_000, **filters)))


async def settle(service: RelayService) -> None:
    """Wait until the writer has committed what the sessions handed it (events included)."""
    assert service.writer is not None
    await asyncio.sleep(0.01)  # let replies already sent reach their session's bookkeeping
    await service.writer.flush()


def split_trace(body: bytes, added: tuple[str, ...] = ("Message-ID", "Date")) -> tuple[bytes, list[bytes], bytes]:
    """A stored body as (the relay's folded Received: header, the header lines the
    relay added after it — ``added``, in that order —, the message as the client sent it)."""
    end = 0
    while True:
        end = body.index(b"\r\n", end) + 2
        if body[end : end + 1] != b"\t":
            break
    received, rest = body[:end], body[end:]
    lines = []
    for name in added:
        assert rest.startswith(name.encode() + b": "), rest[:80]
        line_end = rest.index(b"\r\n") + 2
        lines.append(rest[:line_end])
        rest = rest[line_end:]
    return received, lines, rest
