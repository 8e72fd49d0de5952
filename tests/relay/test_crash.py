"""kill -9 under load: every queue id that got 250 is in the store after restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path

import aiosmtplib

from relay.reasons import Reason
from relay.store.settings import Keys, get_setting, set_setting
from tests.conftest import Cli
from tests.relay.support import (
    PASSWORD,
    Seeded,
    client_context,
    events,
    message,
    rows,
    stored_messages,
)
from tests.relay.test_cli import RelayProcess

CONNECTIONS = 8


def _config(tmp_path: Path, tls_files: dict[str, Path]) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        f'ports = "0*2"\nserver_name = "relay.test"\ntls_cert = "{tls_files["cert"]}"\ntls_key = "{tls_files["key"]}"\n'
        "heartbeat_interval = 0.2\npaused = true\n"
    )
    return path


async def _sender(port: int, tls_files: dict[str, Path], acknowledged: list[str], enough: asyncio.Event, stop: asyncio.Event) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_context(tls_files), timeout=10)
    try:
        await client.connect()
        await client.login("alice", PASSWORD["alice"])
        n = 0
        while not stop.is_set():
            n += 1
            _, reply = await client.sendmail("x@a.example", ["r@d.example"], message(body=f"n={n}\r\n" + ("x" * 75 + "\r\n") * 20))
            acknowledged.append(reply.rsplit(" ", 1)[1])
            if len(acknowledged) >= 150:
                enough.set()
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        pass  # the relay was killed under this session


async def test_sigkill_under_load_loses_no_acknowledged_message(cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = _config(tmp_path, tls_files)
    relay = RelayProcess(cli, tmp_path, "--config", str(config), name="first")
    ready = relay.wait_ready()
    acknowledged: list[str] = []
    stop = asyncio.Event()
    enough = asyncio.Event()
    senders = [
        asyncio.create_task(_sender(ready["served"][i % 2], tls_files, acknowledged, enough, stop))
        for i in range(CONNECTIONS)
    ]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(enough.wait(), 15)
    relay.stop(signal.SIGKILL)  # mid-load: sessions are in every state
    killed_at = len(acknowledged)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*senders), 30)
    assert killed_at >= 50, "the load did not get going"

    # No waiting: the dead relay's heartbeat is still fresh (stale only after 10 s), but
    # its OS lock went with the process, so the restart serves at its first try.
    restarted = RelayProcess(cli, tmp_path, "--config", str(config), name="second")
    try:
        restarted.wait_ready()
        assert "took over" in restarted.output()
        [takeover] = events(seeded.store_path, reason=str(Reason.RELAY_TAKEOVER))
        assert "its lock was free" in takeover.detail
        stored = {row["queue_id"] for row in stored_messages(seeded.store_path)}
        missing = [queue_id for queue_id in acknowledged if queue_id not in stored]
        assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged messages lost"
        assert len(events(seeded.store_path, reason=str(Reason.RELAY_TAKEOVER))) == 1
    finally:
        assert restarted.stop() == 0


async def test_restart_right_after_kill_9_serves_at_first_try_and_a_second_relay_is_refused(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    config = _config(tmp_path, tls_files)
    # The first relay never beats during the test, so its heartbeat stays as we set it.
    still = tmp_path / "still.toml"
    still.write_text(config.read_text().replace("heartbeat_interval = 0.2", "heartbeat_interval = 3600"))
    first = RelayProcess(cli, tmp_path, "--config", str(still), name="first")
    first.wait_ready()
    try:
        # While it lives, a second relay is refused at once, naming it.
        second = RelayProcess(cli, tmp_path, "--config", str(config), name="second")
        assert second.proc.wait(30) != 0
        refusal = second.output().strip().splitlines()
        assert len(refusal) == 1 and f"pid {first.proc.pid}" in refusal[0] and "already running" in refusal[0], refusal
        # A stalled heartbeat (simulated: 10 minutes old) does not make it dead to status.
        lease = rows(seeded.store_path, get_setting, Keys.LEASE)
        rows(seeded.store_path, set_setting, Keys.LEASE, {**lease, "heartbeat_at": lease["heartbeat_at"] - 600})
        status = cli.json("status")
        assert status["alive"] and status["liveness"] == "lock" and status["pid"] == first.proc.pid
        assert "holds the store lock" in cli("status").stdout
    finally:
        first.stop(signal.SIGKILL)
    after = cli("status", "--json")
    assert after.returncode == 3 and not json.loads(after.stdout)["alive"]  # gone with its lock, at once
    restarted = RelayProcess(cli, tmp_path, "--config", str(config), name="restarted")
    try:
        ready = restarted.wait_ready()  # the first try: no "already running" for a dead pid
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ready["served"][0], start_tls=True,
                                 tls_context=client_context(tls_files), timeout=10)
        await client.connect()
        await client.login("alice", PASSWORD["alice"])
        _, reply = await client.sendmail("x@a.example", ["r@d.example"], message())
        await client.quit()
        assert reply.rsplit(" ", 1)[1] in {row["queue_id"] for row in stored_messages(seeded.store_path)}
    finally:
        assert restarted.stop() == 0
