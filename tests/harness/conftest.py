"""Harness test fixtures: a real SMTP server (the capture sink, with STARTTLS and
AUTH) for the client, and helpers for TLS contexts from the session's test CA."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from harness.sink import CaptureSink


def server_context(tls_files: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    return context


@pytest.fixture
async def tls_sink(tls_files: dict[str, Path]) -> AsyncIterator[CaptureSink]:
    """An accept-everything SMTP server offering STARTTLS and AUTH on 127.0.0.1:0."""
    sink = CaptureSink("127.0.0.1", 0, tls_context=server_context(tls_files), accept_auth=True)
    await sink.start()
    yield sink
    await sink.stop()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it) but not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
async def relay(store_path: Path, tmp_path: Path, tls_files: dict[str, Path]) -> AsyncIterator[object]:
    """An in-process relay on 127.0.0.1 (three ephemeral ports), with the test CA's certificate."""
    from relay.config import RelayConfig
    from relay.service import RelayService

    config = RelayConfig(
        host="127.0.0.1",
        ports="0*3",
        data_dir=tmp_path / "relay-data",
        tls_cert=tls_files["cert"],
        tls_key=tls_files["key"],
        shutdown_grace=1.0,
    )
    service = RelayService(store_path, config)
    await service.start()
    yield service
    await service.stop()
