"""kill -9 under load: every queue id that got 250 is in the store after restart."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import aiosmtplib

from relay.reasons import Reason
from tests.conftest import Cli
from tests.relay.support import PASSWORD, Seeded, client_context, events, message, stored_messages
from tests.relay.test_cli import RelayProcess

CONNECTIONS = 8


def _config(tmp_path: Path, tls_files: dict[str, Path]) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        f'ports = "0*2"\nserver_name = "relay.test"\ntls_cert = "{tls_files["cert"]}"\ntls_key = "{tls_files["key"]}"\n'
        "stale_after = 1.0\nheartbeat_interval = 0.2\npaused = true\n"
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

    # The dead relay's heartbeat goes stale after 1 s; the next relay takes over at once.
    await asyncio.sleep(1.2)
    restarted = RelayProcess(cli, tmp_path, "--config", str(config), name="second")
    try:
        restarted.wait_ready()
        assert "took over" in restarted.output()
        stored = {row["queue_id"] for row in stored_messages(seeded.store_path)}
        missing = [queue_id for queue_id in acknowledged if queue_id not in stored]
        assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged messages lost"
        assert len(events(seeded.store_path, reason=str(Reason.RELAY_TAKEOVER))) == 1
    finally:
        assert restarted.stop() == 0
