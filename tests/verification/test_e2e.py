"""Verification end to end: a running relay, a capture sink as its next hop, the CLI in
other processes, and (for domains) a DNS server on loopback.

The code travels as system mail through the relay's own queue to the sink; a pending
identity is refused by the live relay and accepted once verified — without a restart.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness.client import SendRequest, TlsMode, build_message, run_dialogue
from harness.sink import CaptureSink
from relay.reasons import Reason
from relay.store import directory
from relay.store import verification as store
from relay.store.events import find_events
from relay.store.settings import Keys, set_setting
from relay.verification import CODE_DIGITS, CODE_SUBJECT, MAX_ATTEMPTS, CodeOutcome, txt_record

PASSWORD = "correct horse battery staple"  # the `people` fixture's users
SYSTEM_SENDER = "verify@relay.example.net"


@pytest.fixture
async def sink() -> AsyncIterator[CaptureSink]:
    capture = CaptureSink("127.0.0.1", 0)
    await capture.start()
    yield capture
    await capture.stop()


@pytest.fixture
async def relay(store_path: Path, tmp_path: Path, tls_files: dict[str, Path], sink: CaptureSink) -> AsyncIterator[Any]:
    """A running relay on one ephemeral loopback port, delivering to the sink."""
    from relay.config import RelayConfig
    from relay.service import RelayService

    config = RelayConfig(
        host="127.0.0.1",
        ports="0",
        data_dir=tmp_path / "relay-data",
        tls_cert=tls_files["cert"],
        tls_key=tls_files["key"],
        shutdown_grace=1.0,
        next_hop=sink.address,
    )
    service = RelayService(store_path, config)
    await service.start()
    yield service
    await service.stop()


async def _send_as(relay: Any, tls_files: dict[str, Path], username: str, address: str) -> Any:
    return await run_dialogue(
        SendRequest(
            port=relay.served[0],
            tls=TlsMode.REQUIRED,
            cafile=str(tls_files["ca"]),
            auth_user=username,
            auth_password=PASSWORD,
            mail_from=address,
            recipients=["someone@elsewhere.example"],
            message=build_message(header_from=address, to=["someone@elsewhere.example"], subject=f"from {address}"),
            timeout=15,
        )
    )


def _assert_awaits_verification(result: Any, identity: str) -> None:
    assert not result.ok and str(result.failed_stage) == "mail", result.to_json()
    reply = result.decisive_reply
    assert reply.code == 550 and reply.enhanced == "5.7.1"
    assert "awaits verification" in reply.text and identity in reply.text


def _code_in(data: bytes) -> str:
    match = re.search(rb"^    (\d{4}) (\d{4})\r$", data, re.MULTILINE)
    assert match, data
    return (match.group(1) + match.group(2)).decode()


async def _events(db: sqlite3.Connection, reason: Reason, polls: int = 200) -> list[Any]:
    """The events with ``reason``, once there are any (the relay writes them in batches;
    polled every 50 ms for up to ~10 s)."""
    for _ in range(polls):
        if found := find_events(db, reason=str(reason)):
            return found
        await asyncio.sleep(0.05)
    return []


async def _cli(cli: Any, *args: str) -> Any:
    # Another process; the thread keeps this loop (relay, sink) running meanwhile.
    return await asyncio.to_thread(cli, *args)


async def test_code_mailed_through_the_relay_verifies_the_address_live(
    relay: Any, sink: CaptureSink, cli: Any, db: sqlite3.Connection, people: dict[str, Any], tls_files: dict[str, Path]
) -> None:
    address = "alice@example.com"
    directory.set_active(db, "alice", True)
    set_setting(db, Keys.SYSTEM_SENDER, SYSTEM_SENDER)
    _assert_awaits_verification(await _send_as(relay, tls_files, "alice", address), address)
    [refusal] = await _events(db, Reason.SENDER_UNVERIFIED)
    assert address in refusal.detail and refusal.username == "alice"  # which identity, which user

    # 1. The code arrives at the sink as system mail; five wrong tries lock it.
    sent = await _cli(cli, "senders", "send-code", address)
    assert sent.returncode == 0, sent.stderr
    [first] = await sink.wait_for(1, within=20)
    assert (first.mail_from, first.rcpt_tos, first.subject) == (SYSTEM_SENDER, [address], CODE_SUBJECT)
    code = _code_in(first.data)
    assert len(code) == CODE_DIGITS and code not in sent.stdout
    wrong = f"{(int(code) + 1) % 10**CODE_DIGITS:0{CODE_DIGITS}d}"
    for _ in range(MAX_ATTEMPTS):
        assert store.confirm_code(db, address, wrong).outcome is CodeOutcome.WRONG
    assert store.confirm_code(db, address, code).outcome is CodeOutcome.TOO_MANY_TRIES

    # 2. A new code, tried after it expired (an injected clock, not a sleep).
    assert (await _cli(cli, "senders", "send-code", address, "--ttl", "10m")).returncode == 0
    second = (await sink.wait_for(2, within=20))[1]
    late = time.time() + 601
    assert store.confirm_code(db, address, _code_in(second.data), now=late).outcome is CodeOutcome.EXPIRED
    assert directory.get_identity(db, address).state == "pending"

    # 3. A third code, confirmed with the CLI; the running relay now accepts the address.
    assert (await _cli(cli, "senders", "send-code", address)).returncode == 0
    third = (await sink.wait_for(3, within=20))[2]
    confirmed = await _cli(cli, "senders", "confirm", address, _code_in(third.data))
    assert confirmed.returncode == 0 and "is verified (code)" in confirmed.stdout, confirmed.stderr

    accepted = await _send_as(relay, tls_files, "alice", address)
    assert accepted.ok and accepted.queue_id, accepted.to_json()
    delivered = (await sink.wait_for(4, within=20))[3]
    assert delivered.mail_from == address and delivered.subject == f"from {address}"
    shown = cli.json("senders", "show", address)
    assert (shown["state"], shown["method"]) == ("verified", "code") and shown["verified_at"]


async def test_pending_domain_refused_then_accepted_after_dns_and_approval_without_restart(
    relay: Any,
    sink: CaptureSink,
    cli: Any,
    db: sqlite3.Connection,
    people: dict[str, Any],
    tls_files: dict[str, Path],
    table_dns: Any,
    password_hash: str,
) -> None:
    directory.set_active(db, "bob", True)
    directory.create_user(
        db, list_name="news", password_hash=password_hash, username="carol", domains=["example.net"], active=True
    )
    _assert_awaits_verification(await _send_as(relay, tls_files, "bob", "bob@example.org"), "example.org")
    _assert_awaits_verification(await _send_as(relay, tls_files, "carol", "carol@example.net"), "example.net")

    # DNS first finds the wrong token (still refused), then the right one.
    record = cli.json("senders", "show", "example.org")["txt_record"]
    table_dns.set("example.org", "txt", txt_record("old-token"))
    failed = await _cli(cli, "senders", "check-dns", "example.org", "--resolver", table_dns.address)
    assert failed.returncode == 1 and "wrong token" in failed.stderr
    _assert_awaits_verification(await _send_as(relay, tls_files, "bob", "bob@example.org"), "example.org")

    table_dns.set("example.org", "txt", record)
    verified = await _cli(cli, "senders", "check-dns", "example.org", "--resolver", table_dns.address)
    assert verified.returncode == 0, verified.stderr
    approved = await _cli(cli, "senders", "approve", "example.net", "--reason", "existing account")
    assert approved.returncode == 0, approved.stderr

    for username, address in (("bob", "bob@example.org"), ("carol", "carol@example.net")):
        result = await _send_as(relay, tls_files, username, address)
        assert result.ok and result.queue_id, result.to_json()
    records = await sink.wait_for(2, within=20)
    assert sorted(r.mail_from for r in records) == ["bob@example.org", "carol@example.net"]
    methods = {r["identity"]: (r["method"], r["reason"]) for r in cli.json("senders", "ls", "--state", "verified")}
    assert methods["example.net"] == ("manual", "existing account")
    assert methods["example.org"][0] == "dns" and table_dns.address in methods["example.org"][1]
    assert relay.running  # the same relay all along
