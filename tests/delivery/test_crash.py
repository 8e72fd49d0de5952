"""At-least-once through crashes: ``smtpplus relay`` subprocesses killed with
SIGKILL mid-delivery, under load, again and again — every message that got its
``250`` reaches the sink at least once; duplicates (a crash between the next hop's
``250`` and the state update) are counted, not forbidden."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sized
from pathlib import Path
from typing import Any

import aiosmtplib

from harness.sink import CaptureSink
from relay.passwords import hash_password
from relay.store import directory
from relay.store import queue as q
from tests.conftest import ROOT
from tests.delivery.conftest import eventually

PASSWORD = "crash-test-password"
QUEUED = re.compile(r"queued as (\S+)")


def _grew_by(before: int, more: int, items: Sized) -> bool:
    return len(items) >= before + more


def relay_env(cli: Any, tmp_path: Path) -> dict[str, str]:
    env = dict(cli.env)
    env.update({
        "SMTPPLUS_DATA_DIR": str(tmp_path / "relay-data"),
        "SMTPPLUS_STALE_AFTER": "0.6",
        "SMTPPLUS_HEARTBEAT_INTERVAL": "0.1",
        "SMTPPLUS_MESSAGE_LEASE": "2",
        "SMTPPLUS_RETRY_BASE": "0.2",
        "SMTPPLUS_RETRY_MAX": "0.5",
        "SMTPPLUS_SERVER_NAME": "relay.test",
    })
    return env


def spawn_relay(env: dict[str, str], ready: Path, sink_port: int) -> subprocess.Popen[bytes]:
    ready.unlink(missing_ok=True)
    # The relay's log goes to a file: a pipe nobody reads while it runs fills up (64 KB,
    # a few hundred messages' log lines) and then blocks the relay's loop on a write —
    # greetings time out and connections drop.
    with open(said_file(ready), "ab") as said:
        return subprocess.Popen(
            [sys.executable, "-c", "from console.cli import main; main()", "relay", "--host", "127.0.0.1", "--ports", "0",
             "--allow-plain-auth", "--next-hop", f"127.0.0.1:{sink_port}", "--ready-file", str(ready)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=said,
        )


def said_file(ready: Path) -> Path:
    return ready.with_name("relay-stderr.log")


def relay_said(ready: Path) -> str:
    """The end of what the relays of this test wrote to stderr."""
    return said_file(ready).read_text(errors="replace")[-3000:] if said_file(ready).exists() else ""


def ready_port(ready: Path) -> int | None:
    """The relay's port once its ready file is there (written atomically)."""
    if not ready.exists():
        return None
    return int(json.loads(ready.read_text())["served"][0])


async def start_relay(env: dict[str, str], ready: Path, sink_port: int) -> tuple[subprocess.Popen[bytes], int]:
    proc = spawn_relay(env, ready, sink_port)
    deadline = time.monotonic() + 20
    while (port := ready_port(ready)) is None:
        if proc.poll() is not None:
            raise AssertionError(f"relay exited ({proc.returncode}): {relay_said(ready)}")
        assert time.monotonic() < deadline, "relay did not become ready"
        await asyncio.sleep(0.05)
    return proc, port


async def send_load(port: int, first: int, accepted: dict[str, str], stop: asyncio.Event, connections: int = 4,
                    errors: list[str] | None = None) -> None:
    """Send until ``stop`` is set; record message-id → queue id of every 250.

    A refused or dropped connection (a relay just started can answer 4xx while it
    recovers; a killed one drops everything) is noted in ``errors`` and opened
    again, so a passing hiccup does not end the load for the whole cycle."""
    counter = iter(range(first, first + 100_000))
    errors = errors if errors is not None else []

    async def one_connection() -> None:
        while not stop.is_set():
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, local_hostname="load.test", timeout=5)
            try:
                await client.connect()
                await client.login("crash-user", PASSWORD)
                for n in counter:
                    if stop.is_set():
                        return
                    message_id = f"<crash{n}@load.test>"
                    data = (f"From: load@crash.example\r\nTo: r{n}@sink.example\r\nSubject: crash {n}\r\n"
                            f"Message-ID: {message_id}\r\n\r\nbody {n}\r\n").encode()
                    _errors, reply = await client.sendmail("load@crash.example", [f"r{n}@sink.example"], data)
                    match = QUEUED.search(reply)
                    assert match, reply
                    accepted[message_id] = match.group(1)
                return
            except (aiosmtplib.SMTPException, OSError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")  # what got 250 is recorded
                await asyncio.sleep(0.05)
            finally:
                client.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))


async def test_kill_9_mid_delivery_never_loses_an_accepted_message(cli: Any, db: Any, tmp_path: Path) -> None:
    directory.create_list(db, "crash")
    directory.create_user(db, list_name="crash", username="crash-user", password_hash=hash_password(PASSWORD),
                          domains=["crash.example"], active=True)
    directory.approve_identities(db, ["crash.example"], "test setup")
    env = relay_env(cli, tmp_path)
    ready = tmp_path / "ready.json"
    accepted: dict[str, str] = {}
    kills = 0
    async with CaptureSink(port=0, keep_data=False) as sink:
        for cycle in range(5):
            proc, port = await start_relay(env, ready, sink.port)
            stop = asyncio.Event()
            before_sink, before_accepted = len(sink.messages), len(accepted)
            errors: list[str] = []
            load = asyncio.create_task(send_load(port, cycle * 100_000, accepted, stop, errors=errors))
            try:
                # Kill once this relay is both accepting and delivering.
                await sink.wait_until(functools.partial(_grew_by, before_sink, 25), within=30)
                await eventually(functools.partial(_grew_by, before_accepted, 40, accepted), within=30, every=0.01)
            except BaseException as exc:  # a failed cycle leaves no relay running behind it
                proc.kill()
                stop.set()
                await load
                if isinstance(exc, AssertionError):
                    raise AssertionError(f"cycle {cycle}: load errors {errors[-5:]!r}; the relays said: {relay_said(ready)}") from exc
                raise
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
            stop.set()
            await load
            await asyncio.sleep(0.7)  # the heartbeat goes stale: the next relay takes over at once
        proc, _port = await start_relay(env, ready, sink.port)
        try:
            await sink.wait_until(lambda m: {r.message_id for r in m} >= set(accepted), within=30)
            await eventually(lambda: all(q.message_detail(db, qid).message.state == "sent" for qid in accepted.values()), within=15)
        finally:
            proc.send_signal(signal.SIGTERM)
            # Waiting without blocking the loop: the sink lives here and answers the relay's QUIT.
            await eventually(lambda: proc.poll() is not None, within=15)
        seen = Counter(r.message_id for r in sink.messages if r.message_id in accepted)
    duplicates = sum(n - 1 for n in seen.values())
    print(f"{kills} kills, {len(accepted)} accepted, all delivered, {duplicates} duplicate(s)")
    assert kills == 5 and len(accepted) >= 200
    assert set(seen) == set(accepted)  # at least once, every one
    assert proc.returncode == 0
