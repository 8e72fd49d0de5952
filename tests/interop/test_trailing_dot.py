"""An envelope address whose domain ends in one dot (``ann@example.net.``), as
Python's smtplib sends it to a real relay on 127.0.0.1 with a real store and an
aiosmtpd next hop: stored and relayed without the dot, as Postfix's trivial-rewrite
canonicalises it; ``example.net..`` and ``ann@.`` stay refused."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from pathlib import Path

from relay.store import open_store
from tests.delivery.conftest import eventually, states
from tests.interop.nexthop import NextHop
from tests.relay.support import (
    PASSWORD,
    message,
    relay_config,
    running_relay,
    seed_store,
    settle,
    stored_messages,
    stored_recipients,
)


def _send(port: int, tls_files: dict[str, Path]) -> tuple[list[tuple[int, bytes]], str]:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
    try:
        client.starttls(context=ssl.create_default_context(cafile=str(tls_files["ca"])))
        client.ehlo("client.test")
        client.login("alice", PASSWORD["alice"])
        code, text = client.mail("Ann.Lee@A.Example.")
        assert code == 250, text
        replies = [
            client.rcpt(rcpt)
            for rcpt in ("Bob@Example.NET.", "Bob@example.net", "cy@d.example", "cy@d.example.", "dee@d.example..", "eve@.")
        ]
        code, text = client.data(message("Ann.Lee@A.Example"))
        assert code == 250, text
        return replies, text.decode().rsplit(" ", 1)[1]
    finally:
        client.quit()


async def test_one_trailing_dot_is_stripped_from_stored_and_relayed_envelope_addresses(
    store_path: Path, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    seed_store(store_path)
    async with NextHop() as hop:
        config = relay_config(tmp_path, tls_files, next_hop=hop.address, paused=False, parallel=1, retry_base=0.2, retry_max=0.5)
        async with running_relay(store_path, config) as relay:
            replies, queue_id = await asyncio.to_thread(_send, relay.served[0], tls_files)
            await settle(relay)
            codes = [code for code, _text in replies]
            # The two spellings of one mailbox are one recipient; `..` and a bare `.` domain are refused.
            assert codes == [250, 250, 250, 250, 553, 553], replies
            [row] = stored_messages(store_path)
            assert row["mail_from"] == "Ann.Lee@A.Example"  # case kept, the dot gone
            assert stored_recipients(store_path, queue_id) == ["Bob@Example.NET", "cy@d.example"]
            [t] = await hop.wait_for(1)
            db = open_store(store_path)
            try:
                await eventually(lambda: states(db) == {"sent": 1})
            finally:
                db.close()
    assert t.mail_from == "Ann.Lee@A.Example"
    assert t.rcpt_tos == ["Bob@Example.NET", "cy@d.example"]
