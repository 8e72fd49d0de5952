"""Implicit-TLS ports (RFC 8314, "SSL/TLS" in mail clients) beside the STARTTLS ones,
judged by Python's smtplib.SMTP_SSL (an independent client) and by `smtpplus send
--tls-on-connect` as a real subprocess; what the ready file, the store and `status`
say about them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from relay.reasons import Reason
from relay.service import RelayService
from relay.store import open_store
from relay.store.events import find_events
from relay.store.intake import count_messages
from relay.store.lease import relay_status
from tests.relay.support import (
    PASSWORD,
    Seeded,
    client_context,
    message,
    relay_config,
    running_relay,
)


def _ssl_session(port: int, tls_files: dict[str, Path]) -> tuple[smtplib.SMTP_SSL, tuple[int, bytes]]:
    client = smtplib.SMTP_SSL(
        "127.0.0.1", port, local_hostname="client.test", timeout=10, context=client_context(tls_files)
    )
    return client, client.ehlo()


def _send_over_implicit_tls(port: int, tls_files: dict[str, Path]) -> dict[str, Any]:
    client, (code, text) = _ssl_session(port, tls_files)
    try:
        cipher = client.sock.cipher()  # type: ignore[union-attr]
        starttls = client.docmd("STARTTLS")
        client.login("alice", PASSWORD["alice"])
        refused = client.sendmail("x@a.example", ["r@d.example"], message())
        return {"ehlo": (code, text.decode()), "cipher": cipher, "starttls": starttls, "refused": refused}
    finally:
        client.quit()


async def test_implicit_tls_port_offers_auth_at_once_and_takes_mail(
    seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    config = relay_config(tmp_path, tls_files, ports="0", tls_ports="0")
    async with running_relay(seeded.store_path, config) as relay:
        assert len(relay.served) == 2 and len(relay.implicit_tls) == 1
        (implicit,) = relay.implicit_tls
        (starttls_port,) = [p for p in relay.served if p != implicit]
        seen = await asyncio.to_thread(_send_over_implicit_tls, implicit, tls_files)
        code, text = seen["ehlo"]
        assert code == 250 and "AUTH PLAIN LOGIN" in text and "STARTTLS" not in text
        assert seen["cipher"] is not None
        assert seen["starttls"][0] in (454, 503) and seen["refused"] == {}
        # The STARTTLS port is unchanged: STARTTLS offered, AUTH only after it.
        plain = await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", starttls_port, "client.test", 10)
        try:
            code, text = await asyncio.to_thread(plain.ehlo)
            assert "STARTTLS" in text.decode() and "AUTH" not in text.decode()
        finally:
            await asyncio.to_thread(plain.quit)
    db = open_store(seeded.store_path)
    try:
        assert count_messages(db) == 1
        status = relay_status(db)
        assert sorted(status.served) == sorted([implicit, starttls_port]) and status.implicit_tls == [implicit]
    finally:
        db.close()


async def test_a_clear_text_client_on_an_implicit_tls_port_gets_no_smtp(
    seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    config = relay_config(tmp_path, tls_files, ports="0", tls_ports="0")
    async with running_relay(seeded.store_path, config) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.implicit_tls[0])
        writer.write(b"EHLO client.test\r\n")  # not a TLS ClientHello: the handshake fails
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, no SMTP reply in clear
        writer.close()
        # The relay carries on serving implicit TLS.
        seen = await asyncio.to_thread(_send_over_implicit_tls, relay.implicit_tls[0], tls_files)
        assert seen["refused"] == {}


async def test_send_tls_on_connect(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path], cli: Any) -> None:
    config = relay_config(tmp_path, tls_files, ports="0", tls_ports="0")
    async with running_relay(seeded.store_path, config) as relay:
        (implicit,) = relay.implicit_tls
        base = ["send", "--port", str(implicit), "--cafile", str(tls_files["ca"]), "--auth-user", "alice",
                "--auth-password", PASSWORD["alice"], "--from", "x@a.example", "--to", "r@d.example"]
        proc = await asyncio.to_thread(cli, *base, "--tls-on-connect")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
        assert "(TLS on connect)" in out and "TLS started: TLSv1." in out
        assert "-> STARTTLS" not in out and "<- 235" in out and "=== done, queued as" in out
        assert out.index("TLS started") < out.index("<- 220")  # encrypted before the greeting
        as_json = json.loads((await asyncio.to_thread(cli, *base, "--tls-on-connect", "--json")).stdout)
        assert as_json["ok"] and as_json["tls"]["verified"] is True
        # --tls-on-connect on a STARTTLS port: the TLS stage fails (exit 3) with the hint.
        starttls_port = next(p for p in relay.served if p != implicit)
        wrong = await asyncio.to_thread(cli, *[str(starttls_port) if a == str(implicit) else a for a in base], "--tls-on-connect")
        assert wrong.returncode == 3 and "is it an implicit-TLS port?" in wrong.stdout
        clash = await asyncio.to_thread(cli, *base, "--tls-on-connect", "--no-tls")
        assert clash.returncode == 1 and "contradict" in clash.stderr and "Traceback" not in clash.stderr


def test_relay_ready_file_lists_implicit_tls_ports(cli: Any, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    ready = tmp_path / "ready.json"
    env = {**cli.env, "SMTPPLUS_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "relay", "--host", "127.0.0.1",
         "--ports", "0", "--tls-ports", "0", "--ready-file", str(ready)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.stderr.read() if proc.stderr and proc.poll() is not None else "no ready file"
        data = json.loads(ready.read_text())
        assert len(data["served"]) == 2 and len(data["implicit_tls"]) == 1
        assert data["implicit_tls"][0] in data["served"]
        status = cli.json("status")
        assert status["implicit_tls"] == data["implicit_tls"] and sorted(status["served"]) == sorted(data["served"])
        shown = cli("status", check=True).stdout
        # The daemon runs on uvloop: its implicit-TLS sessions know they are encrypted too.
        context = ssl.create_default_context(cadata=cli("tls", "export", check=True).stdout)
        context.check_hostname = False
        with smtplib.SMTP_SSL("127.0.0.1", data["implicit_tls"][0], local_hostname="client.test", timeout=10, context=context) as client:
            code, text = client.ehlo()
            assert code == 250 and b"AUTH PLAIN LOGIN" in text and b"STARTTLS" not in text
        assert re.search(rf"implicit TLS +{data['implicit_tls'][0]} \(SSL/TLS", shown)
        assert re.search(rf"encryption +STARTTLS \(required for AUTH\); SSL/TLS on {data['implicit_tls'][0]}", shown)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_ports_without_tls_ports_serve_one_port(cli: Any, tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    env = {**cli.env, "SMTPPLUS_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "relay", "--host", "127.0.0.1",
         "--ports", "0", "--ready-file", str(ready)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        data = json.loads(ready.read_text())
        assert len(data["served"]) == 1 and data["implicit_tls"] == []
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_a_port_in_both_specs_is_a_one_line_error(cli: Any) -> None:
    proc = cli("relay", "--host", "127.0.0.1", "--ports", "2525,4650", "--tls-ports", "4650")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "port 4650 is in both ports and tls_ports" in proc.stderr and proc.stderr.count("\n") == 1


async def _stalled(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` TCP connections that never start their TLS handshake."""
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]


async def _closed_at_once(port: int) -> bool:
    """Whether the relay closes a new connection at once (well before the 30 s
    handshake timeout), having said nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()


async def test_connections_in_their_implicit_tls_handshake_count_against_the_caps(
    seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    """A client that opens connections to the implicit-TLS port and never starts TLS
    holds slots of the caps like any other: over the per-client cap the next one is
    closed at once, unencrypted, and the STARTTLS port answers 421; once those
    connections go, their slots are free again (smtplib.SMTP_SSL sends mail)."""
    config = relay_config(tmp_path, tls_files, ports="0", tls_ports="0", max_connections_per_client=2)
    async with running_relay(seeded.store_path, config) as relay:
        (implicit,) = relay.implicit_tls
        (starttls_port,) = [p for p in relay.served if p != implicit]
        stalled = await _stalled(implicit, 2)
        for _ in range(200):  # the relay has taken both connections
            if len(relay.context.tracker.sessions) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(relay.context.tracker.sessions) == 2
        assert await _closed_at_once(implicit)  # a third from this address: over the cap
        assert relay.context.tracker.refused == 1
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", starttls_port, "client.test", 10)
        assert refused.value.smtp_code == 421
        for _, writer in stalled:
            writer.close()
        for _ in range(200):
            if not relay.context.tracker.sessions:
                break
            await asyncio.sleep(0.02)
        assert not relay.context.tracker.sessions  # the stalled handshakes gave their slots back
        seen = await asyncio.to_thread(_send_over_implicit_tls, implicit, tls_files)
        assert seen["refused"] == {}
    db = open_store(seeded.store_path)
    try:
        details = sorted(e.detail for e in find_events(db, reason=str(Reason.CONNECTION_LIMIT)))
        assert details == ["connection cap reached", "connection cap reached (before the TLS handshake)"], details
    finally:
        db.close()


async def test_a_stopping_relay_closes_connections_still_in_their_handshake(
    seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    config = relay_config(tmp_path, tls_files, ports="0", tls_ports="0", shutdown_grace=20.0)
    service = RelayService(seeded.store_path, config)
    await service.start()
    try:
        stalled = await _stalled(service.implicit_tls[0], 1)
        for _ in range(200):
            if service.context is not None and service.context.tracker.sessions:
                break
            await asyncio.sleep(0.02)
        assert service.context is not None and service.context.tracker.sessions  # counted before its handshake
        began = time.monotonic()
        await service.stop()  # the grace is 20 s: a handshake that held its slot would use it all
        assert time.monotonic() - began < 15
        assert not service.context.tracker.sessions
        reader, writer = stalled[0]
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the relay
        writer.close()
    finally:
        await service.stop()


async def test_a_connection_accepted_as_the_relay_stops_is_closed_and_freed(
    seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop lands between a connection's accept and its handshake's first step
    (the handshake task is cancelled before it ran): the connection is still closed
    and its slot given back, the stop does not wait out its grace."""
    from relay.smtp import RelaySMTP

    config = relay_config(tmp_path, tls_files, ports="0", tls_ports="0", shutdown_grace=20.0)
    service = RelayService(seeded.store_path, config)
    await service.start()
    stopping: list[asyncio.Task[None]] = []
    admit = RelaySMTP.admit

    def admit_then_stop(self: RelaySMTP, peer: Any, local: Any) -> bool:
        stopping.append(asyncio.ensure_future(service.stop()))  # runs before the handshake's first step
        return admit(self, peer, local)

    monkeypatch.setattr(RelaySMTP, "admit", admit_then_stop)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.implicit_tls[0])
        for _ in range(200):
            if stopping:
                break
            await asyncio.sleep(0.02)
        began = time.monotonic()
        await stopping[0]
        assert time.monotonic() - began < 15  # not the 20 s grace
        assert service.context is not None and not service.context.tracker.sessions
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    finally:
        monkeypatch.undo()
        await service.stop()
