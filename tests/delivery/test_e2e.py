"""Through the real relay: SMTP in (STARTTLS-less plain AUTH on loopback), the
store, the delivery engine, the capture sink out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosmtplib

from harness.sink import CaptureSink
from relay.config import RelayConfig
from relay.passwords import hash_password
from relay.service import RelayService
from relay.store import directory
from relay.store import queue as q
from tests.delivery.conftest import eventually, states

PASSWORD = "e2e-test-password"


async def test_mail_sent_through_smtp_while_paused_arrives_in_effective_priority_order(
    db: Any, store_path: Path, tmp_path: Path, sink: CaptureSink
) -> None:
    directory.create_list(db, "e2e")
    password_hash = hash_password(PASSWORD)
    for name, priority in (("normal", 3), ("vip", 1)):
        directory.create_user(db, list_name="e2e", username=name, password_hash=password_hash, priority=priority,
                              domains=["e2e.example"], active=True)
    directory.approve_identities(db, ["e2e.example"], "test setup")
    config = RelayConfig(
        host="127.0.0.1", ports="0", allow_plain_auth=True, data_dir=tmp_path / "data", server_name="relay.test",
        next_hop=f"127.0.0.1:{sink.port}", parallel=1, paused=True, retry_base=0.2, retry_max=0.5,
    )
    # (user, X-Priority header or None) → effective priority = min(user priority, header priority)
    sends = [("normal", None), ("normal", "5"), ("vip", None), ("normal", "1"), ("normal", "2"),
             ("vip", "5"), ("normal", None), ("normal", "4"), ("normal", "1 (Highest)"), ("normal", "2")]
    effective = [min(3 if user == "normal" else 1, int(h[0]) if h else 3) for user, h in sends]
    service = RelayService(store_path, config)
    await service.start()
    try:
        port = service.served[0]
        clients = {}
        for user in ("normal", "vip"):
            clients[user] = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, local_hostname="client.test")
            await clients[user].connect()
            await clients[user].login(user, PASSWORD)
        for n, (user, header) in enumerate(sends):
            extra = f"X-Priority: {header}\r\n" if header else ""
            data = f"From: {user}@e2e.example\r\nTo: r{n}@sink.example\r\nSubject: e2e {n}\r\n{extra}\r\nbody\r\n"
            _errors, reply = await clients[user].sendmail(f"{user}@e2e.example", [f"r{n}@sink.example"], data.encode())
            assert "queued as" in reply
        for client in clients.values():
            await client.quit()
        assert sink.messages == []  # delivery is paused
        q.set_paused(db, False)
        records = await sink.wait_for(len(sends))
        await eventually(lambda: states(db) == {"sent": len(sends)})
    finally:
        await service.stop(grace=2)
    expected = [f"e2e {n}" for n, _p in sorted(enumerate(effective), key=lambda item: (item[1], item[0]))]
    assert [r.subject for r in records] == expected
    # The relay never rewrites priority headers: what the user set is what arrives.
    by_subject = {r.subject: r for r in records}
    assert by_subject["e2e 8"].x_priority == "1 (Highest)" and by_subject["e2e 2"].x_priority is None
