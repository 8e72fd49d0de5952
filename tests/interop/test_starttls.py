"""STARTTLS as the relay runs it: through the event loop's own TLS layer (uvloop's,
as the daemon runs, and the standard loop's), judged by raw sockets and Python's
ssl module — a TLS 1.3 client that pipelines its first commands right behind the
handshake, clients that drop, stall or speak plaintext inside it, and a relay that
stops while a handshake is under way."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import relay.smtp
from relay.service import RelayService
from relay.store import open_store
from relay.store.intake import count_messages
from tests.relay.support import (
    PASSWORD,
    Seeded,
    client_context,
    relay_config,
    running_relay,
    stored_body,
    stored_messages,
)

LOOPS = ["asyncio", "uvloop"] if sys.platform.startswith("linux") else ["asyncio"]


def on_loop(name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on a fresh event loop of that kind (the relay in it too)."""
    if name == "uvloop":
        import uvloop

        factory: Any = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def _pipelined_after_handshake(port: int, tls_files: dict[str, Path], count: int) -> list[bytes]:
    """``count`` sessions that each send EHLO, AUTH, MAIL, RCPT, DATA and the message in
    one write the moment their TLS 1.3 handshake is done (the server may still be
    finishing its side): every reply of each session, in order."""
    context = client_context(tls_files)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    token = base64.b64encode(f"\0alice\0{PASSWORD['alice']}".encode()).decode()
    data = b"From: alice@a.example\r\nTo: bob@b.example\r\nSubject: pipelined\r\n\r\nhello\r\n.\r\n"
    burst = (
        b"EHLO client.test\r\n"
        + f"AUTH PLAIN {token}\r\n".encode()
        + b"MAIL FROM:<alice@a.example>\r\nRCPT TO:<bob@b.example>\r\nDATA\r\n"
        + data
        + b"QUIT\r\n"
    )
    transcripts = []
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
            stream = plain.makefile("rb")
            assert stream.readline().startswith(b"220")
            plain.sendall(b"EHLO client.test\r\n")
            while not (line := stream.readline()).startswith(b"250 "):
                assert line.startswith(b"250-"), line
            plain.sendall(b"STARTTLS\r\n")
            assert stream.readline().startswith(b"220 ")
            with context.wrap_socket(plain, server_hostname="127.0.0.1") as tls:
                assert tls.version() == "TLSv1.3"
                tls.sendall(burst)
                received = b""
                while chunk := tls.recv(65536):
                    received += chunk
                transcripts.append(received)
    return transcripts


@pytest.mark.parametrize("loop", LOOPS)
def test_commands_sent_right_behind_a_tls13_handshake_are_all_answered(
    loop: str, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    """A TLS 1.3 client's first commands can arrive with (or just after) its last
    handshake flight, before the server's side of the upgrade has returned: they
    belong to the encrypted session and must be read, not dropped with the
    plaintext that RFC 3207 4.2 says to discard."""
    config = relay_config(tmp_path, tls_files, ports="0")
    count = 12

    async def main() -> None:
        async with running_relay(seeded.store_path, config) as service:
            transcripts = await asyncio.to_thread(_pipelined_after_handshake, service.served[0], tls_files, count)
            for transcript in transcripts:
                codes = [line[:4] for line in transcript.split(b"\r\n") if line[:3].isdigit() and line[3:4] == b" "]
                assert codes == [b"250 ", b"235 ", b"250 ", b"250 ", b"354 ", b"250 ", b"221 "], transcript

    on_loop(loop, main)
    db = open_store(seeded.store_path)
    try:
        assert count_messages(db) == count
    finally:
        db.close()
    # The session knows it is encrypted, and how: its Received: line says so.
    queue_id = stored_messages(seeded.store_path)[0]["queue_id"]
    received = stored_body(seeded.store_path, queue_id).split(b"\r\n\r\n")[0].decode()
    assert "with ESMTPSA" in received and re.search(r"\(using TLSv1\.3 with cipher [A-Z0-9_-]+ \(\d+/\d+ bits\)\)", received), received


async def _to_starttls(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain connection that has had STARTTLS's 220 and has not begun its handshake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await reader.readline()).startswith(b"220 ")
    writer.write(b"EHLO client.test\r\n")
    while not (line := await reader.readline()).startswith(b"250 "):
        assert line.startswith(b"250-"), line
    writer.write(b"STARTTLS\r\n")
    assert (await reader.readline()).startswith(b"220 ")
    return reader, writer


async def _sessions_gone(service: RelayService) -> bool:
    assert service.context is not None
    for _ in range(500):
        if not service.context.tracker.sessions:
            return True
        await asyncio.sleep(0.02)
    return False


async def _still_serves(service: RelayService, tls_files: dict[str, Path]) -> None:
    reader, writer = await _to_starttls(service.served[0])
    await writer.start_tls(client_context(tls_files), server_hostname="127.0.0.1")
    writer.write(b"EHLO client.test\r\n")
    while not (line := await reader.readline()).startswith(b"250 "):
        assert line.startswith(b"250-"), line
    writer.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_drops_or_speaks_plaintext_inside_the_handshake_frees_its_slot(
    loop: str, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    config = relay_config(tmp_path, tls_files, ports="0")

    async def main() -> None:
        async with running_relay(seeded.store_path, config) as service:
            _, dropped = await _to_starttls(service.served[0])
            dropped.close()
            reader, writer = await _to_starttls(service.served[0])
            writer.write(b"EHLO client.test\r\n")  # not a ClientHello
            assert await asyncio.wait_for(reader.read(), 30) == b""  # closed, nothing in plaintext
            writer.close()
            assert await _sessions_gone(service)
            await _still_serves(service, tls_files)
            assert await _sessions_gone(service)

    with caplog.at_level(logging.INFO, logger="smtpplus.relay"):
        on_loop(loop, main)
    failures = [r.getMessage() for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert failures and all(m.startswith("127.0.0.1: TLS handshake failed") for m in failures), failures


@pytest.mark.parametrize("loop", LOOPS)
def test_a_handshake_that_never_comes_times_out(
    loop: str, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay.smtp, "STARTTLS_HANDSHAKE_TIMEOUT", 0.5)
    config = relay_config(tmp_path, tls_files, ports="0")

    async def main() -> None:
        async with running_relay(seeded.store_path, config) as service:
            reader, writer = await _to_starttls(service.served[0])
            # Closed by the handshake timeout (the session timeout is minutes).
            assert await asyncio.wait_for(reader.read(), 30) == b""
            writer.close()
            assert await _sessions_gone(service)

    on_loop(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_stopping_relay_drops_a_connection_inside_its_starttls_handshake(
    loop: str, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    """The stop's 421 cannot be said inside a TLS handshake (it would reach the
    client as a broken TLS record): the connection is dropped, at once, and the
    stop does not wait out its grace."""
    config = relay_config(tmp_path, tls_files, ports="0", shutdown_grace=20.0)

    async def main() -> None:
        service = RelayService(seeded.store_path, config)
        await service.start()
        try:
            reader, writer = await _to_starttls(service.served[0])
            stopped = asyncio.ensure_future(service.stop())
            assert await asyncio.wait_for(reader.read(), 10) == b""  # no plaintext 421
            await asyncio.wait_for(stopped, 15)  # not the 20 s grace
            assert service.context is not None and not service.context.tracker.sessions
            writer.close()
        finally:
            await service.stop()

    on_loop(loop, main)
