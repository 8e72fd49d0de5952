"""Delivery fixtures: a real capture sink on 127.0.0.1 (port 0), real store files,
and the delivery engine run directly against them with second-scale retry settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiosmtpd.smtp import SMTP

from harness.sink import CaptureSink
from relay.config import RelayConfig
from relay.delivery import DeliveryEngine
from relay.store import queue as q
from relay.store.intake import NewMessage, Queued, insert_messages

logging.getLogger("mail.log").setLevel(logging.WARNING)


def fast_config(**overrides: Any) -> RelayConfig:
    """Delivery timings in (fractions of) seconds, as tests need them."""
    values: dict[str, Any] = {
        "retry_base": 0.2,
        "retry_max": 0.5,
        "queue_lifetime": 30.0,
        "message_lease": 2.0,
        "connect_timeout": 2.0,
        "command_timeout": 5.0,
        "retention_days": 30.0,
        "server_name": "relay.test",
    }
    values.update(overrides)
    return RelayConfig(**values)


def message(
    n: int,
    *,
    priority: int = 3,
    mail_from: str = "sender@example.com",
    to: Iterable[str] | None = None,
    origin: str = "smtp",
    extra_headers: str = "",
) -> NewMessage:
    """A small message whose Subject is ``m<n> p<priority>``."""
    recipients = list(to) if to is not None else [f"rcpt{n}@example.net"]
    data = (
        f"From: {mail_from or 'MAILER-DAEMON@relay.test'}\r\nTo: {recipients[0]}\r\nSubject: m{n} p{priority}\r\n"
        f"Message-ID: <m{n}@example.com>\r\n{extra_headers}\r\nbody {n}\r\n"
    ).encode()
    return NewMessage(
        mail_from=mail_from, recipients=recipients, data=data, origin=origin,
        header_priority=priority, user_priority=priority, priority=priority, subject=f"m{n} p{priority}",
    )


def enqueue(db: sqlite3.Connection, messages: list[NewMessage]) -> list[Queued]:
    return insert_messages(db, messages)


@pytest.fixture
async def sink() -> AsyncIterator[CaptureSink]:
    capture = CaptureSink(port=0)
    await capture.start()
    yield capture
    await capture.stop()


@contextlib.asynccontextmanager
async def running_engine(store_path: Path, config: RelayConfig | None = None, **kw: Any) -> AsyncIterator[DeliveryEngine]:
    engine = DeliveryEngine(store_path, config or fast_config(), owner=kw.pop("owner", "engine-test"), **kw)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def eventually(check: Callable[[], Any], within: float = 15.0, every: float = 0.05) -> Any:
    """Poll ``check`` (a store read) until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s (last value {value!r})")
        await asyncio.sleep(every)


def states(db: sqlite3.Connection) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in q.list_messages(db, state="all", limit=100_000):
        counts[row.state] = counts.get(row.state, 0) + 1
    return counts


def point_at(db: sqlite3.Connection, capture: CaptureSink, *, parallel: int = 1, paused: bool = False) -> None:
    q.set_next_hop(db, f"127.0.0.1:{capture.port}")
    q.set_parallel(db, parallel)
    if paused:
        q.set_paused(db, True)


class ConnectionCounter(Protocol):
    open: int
    most_open: int


def counting_smtp(counter: ConnectionCounter) -> type[SMTP]:
    """An aiosmtpd ``SMTP`` class whose connections count themselves on ``counter``
    (``open`` now, ``most_open`` at once): what a destination sees of a relay's limits."""

    class Counting(SMTP):
        def connection_made(self, transport: Any) -> None:
            counter.open += 1
            counter.most_open = max(counter.most_open, counter.open)
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            counter.open -= 1
            super().connection_lost(error)

    return Counting
