"""DKIM end to end: a client submits over SMTP, the relay signs at delivery, an aiosmtpd
next hop receives, and dkimpy verifies what arrived against the key published in a
loopback DNS server — RSA-2048 and Ed25519; an 8-bit body to a hop without 8BITMIME
still verifies; a domain without a key goes unsigned."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiosmtplib
import dkim
import pytest

from relay.admin import dkim as keys
from relay.config import RelayConfig
from relay.passwords import hash_password
from relay.service import RelayService
from relay.store import directory
from relay.store import queue as q
from tests.delivery.conftest import eventually, states
from tests.dkim.conftest import dkimpy_dnsfunc
from tests.interop.nexthop import NextHop

PASSWORD = "dkim-e2e-password"
BODY_8BIT = (
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + "Grüße aus Köln — ½ € ✓\r\nzweite Zeile\r\n".encode()
)


def submission(sender: str, to: str, subject: str, *, eight_bit: bool = False) -> bytes:
    head = f"From: Sender <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n".encode()
    if eight_bit:
        return head + BODY_8BIT
    return head + b"\r\n" + b"Plain text, a line of it.\r\n" * 40


def verifies(data: bytes, server: Any) -> bool:
    try:
        return bool(dkim.DKIM(data).verify(dnsfunc=dkimpy_dnsfunc(server)))
    except dkim.ValidationError:
        return False


def event_reasons(db: Any, reason: str) -> list[tuple[str, str]]:
    rows = db.execute("SELECT queue_id, detail FROM events WHERE reason = ? ORDER BY id", (reason,)).fetchall()
    return [(r[0], r[1]) for r in rows]


@pytest.mark.slow
async def test_signed_at_delivery_and_verified_by_dkimpy_against_published_keys(
    db: Any, store_path: Path, tmp_path: Path, dkim_dns: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    domains = ["rsa.example", "ed.example", "plain.example"]
    directory.create_list(db, "dkim")
    directory.create_user(db, list_name="dkim", username="ann", password_hash=hash_password(PASSWORD),
                          domains=domains, active=True)
    directory.approve_identities(db, domains, "test setup")
    for domain, algorithm in (("rsa.example", "rsa-2048"), ("ed.example", "ed25519")):
        record = keys.add(db, domain, algorithm=algorithm)
        dkim_dns.set(record.name, "TXT", record.value)

    async with NextHop(eightbit=False) as hop:
        config = RelayConfig(
            host="127.0.0.1", ports="0", allow_plain_auth=True, data_dir=tmp_path / "data", server_name="relay.test",
            next_hop=hop.address, parallel=1, retry_base=0.2, retry_max=0.5,
        )
        service = RelayService(store_path, config)
        await service.start()
        try:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.served[0], start_tls=False, local_hostname="c.test")
            await client.connect()
            await client.login("ann", PASSWORD)
            sends = [
                ("ann@rsa.example", "rsa", False), ("ann@ed.example", "ed", False),
                ("ann@ed.example", "ed 8bit", True), ("ann@rsa.example", "rsa 8bit", True),
                ("ann@plain.example", "plain", False),
            ]
            for sender, subject, eight_bit in sends:
                options = ["BODY=8BITMIME"] if eight_bit else []
                await client.sendmail(sender, ["bob@far.example"], submission(sender, "bob@far.example", subject, eight_bit=eight_bit),
                                      mail_options=options)
            await client.quit()
            arrived = {t.parsed()["Subject"]: t for t in await hop.wait_for(len(sends))}
            await eventually(lambda: states(db) == {"sent": len(sends)})
        finally:
            await service.stop(grace=2)

    for subject in ("rsa", "ed", "ed 8bit", "rsa 8bit"):
        data = arrived[subject].data
        assert data.startswith(b"DKIM-Signature: v=1; a="), subject
        assert verifies(data, dkim_dns), subject
    assert b"a=rsa-sha256" in arrived["rsa"].data and b"d=rsa.example" in arrived["rsa"].data
    assert b"a=ed25519-sha256" in arrived["ed"].data and b"d=ed.example" in arrived["ed"].data
    # The 8-bit bodies went as 7-bit (the hop has no 8BITMIME) and read the same.
    for subject in ("ed 8bit", "rsa 8bit"):
        t = arrived[subject]
        assert t.data.isascii() and "BODY" not in t.mail_params
        assert t.parsed().get_content().replace("\r\n", "\n") == "Grüße aus Köln — ½ € ✓\nzweite Zeile\n"
    assert b"DKIM-Signature" not in arrived["plain"].data

    signed = event_reasons(db, "dkim-signed")
    assert len(signed) == 4 and all(" s=" in detail for _, detail in signed)
    assert event_reasons(db, "dkim-sign-failed") == []
    by_queue = {qid: detail for qid, detail in signed}
    plain = [m for m in q.list_messages(db, state="all", limit=10) if m.subject == "plain"]
    assert plain and plain[0].queue_id not in by_queue

    # No private key in an event or the relay's log.
    pems = [row[0] for row in db.execute("SELECT private_key FROM dkim_keys")]
    texts = caplog.text + "\n".join(r[0] for r in db.execute("SELECT detail FROM events"))
    for pem in pems:
        pieces = [line for line in pem.splitlines() if len(line) >= 40 and not line.startswith("-----")]
        assert pieces and not any(piece in texts for piece in pieces)


@pytest.mark.slow
async def test_a_campaign_with_one_click_unsubscribe_is_signed_over_its_list_unsubscribe_headers(
    db: Any, store_path: Path, dkim_dns: Any
) -> None:
    from relay.admin import campaigns, unsubscribe
    from tests.delivery.conftest import running_engine

    directory.create_list(db, "news")
    directory.create_user(db, list_name="news", username="ed", password_hash=hash_password(PASSWORD),
                          domains=["news.example"], active=True)
    directory.approve_identities(db, ["news.example"], "test setup")
    directory.import_members(db, "news", [(f"m{n}@far.example", "") for n in range(3)])
    unsubscribe.set_unsubscribe_settings(db, "news", url_template="https://news.example/u/{token}",
                                         mailto="unsubscribe@news.example")
    record = keys.add(db, "news.example", algorithm="ed25519")
    dkim_dns.set(record.name, "TXT", record.value)
    draft = campaigns.compose_campaign(subject="Monthly", mail_from="editor@news.example", body="Our news.\n")
    campaigns.create_draft(db, "news", draft)

    async with NextHop() as hop:
        q.set_next_hop(db, hop.address)
        async with running_engine(store_path):
            arrived = await hop.wait_for(3)
            await eventually(lambda: states(db) == {"sent": 3})

    for t in arrived:
        parsed = t.parsed()
        assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "https://news.example/u/" in parsed["List-Unsubscribe"]
        assert verifies(t.data, dkim_dns)
        fields = dkim.DKIM(t.data)
        fields.verify(dnsfunc=dkimpy_dnsfunc(dkim_dns))
        signed = [name.strip() for name in fields.signature_fields[b"h"].split(b":")]
        assert b"list-unsubscribe" in signed and b"list-unsubscribe-post" in signed
        # Another member's unsubscribe link pasted in breaks the signature.
        forged = t.data.replace(b"/u/", b"/u/X", 1)
        assert not verifies(forged, dkim_dns)
