"""The queue, campaigns, list statistics and sink commands, as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiosmtplib

from relay.reasons import Reason
from relay.store import directory, lease
from relay.store import queue as q
from relay.store.campaigns import start_due_campaigns
from relay.store.events import NewEvent, find_events, record_event
from relay.store.settings import Keys, get_setting
from tests.conftest import ROOT
from tests.delivery.conftest import enqueue, message
from tests.delivery.test_campaigns import NO_LOGIN, verify_sender_domain


def test_queue_listing_show_and_message_actions(cli: Any, db: Any) -> None:
    queued = enqueue(db, [message(1, priority=4), message(2, priority=1), message(3, priority=2)])
    rows = cli.json("queue", "ls")
    assert [r["queue_id"] for r in rows] == [queued[i].queue_id for i in (1, 2, 0)]
    assert rows[0]["priority"] == 1 and rows[0]["state"] == "queued"
    assert [r["queue_id"] for r in cli.json("queue", "ls", "--priority", "4")] == [queued[0].queue_id]
    table = cli("queue", "ls", check=True).stdout
    assert queued[1].queue_id in table and "next hop none" in table

    held = cli("queue", "hold", queued[0].queue_id, queued[1].queue_id, check=True)
    assert f"{queued[0].queue_id}: held" in held.stdout
    assert cli.json("queue", "ls", "--state", "held")[0]["queue_id"] == queued[1].queue_id
    assert "released" in cli("queue", "release", queued[0].queue_id, check=True).stdout
    assert "retry" in cli("queue", "retry", queued[1].queue_id, check=True).stdout
    assert "deleted" in cli("queue", "rm", queued[2].queue_id, check=True).stdout

    shown = cli.json("queue", "show", queued[1].queue_id)
    assert shown["state"] == "queued" and shown["recipient_states"][0]["address"] == "rcpt2@example.net"
    assert [e["reason"] for e in shown["events"]] == ["accepted", "message-held", "message-retry"]
    human = cli("queue", "show", queued[1].queue_id, check=True).stdout
    assert "timeline" in human and "message-held" in human and "header 1" in human and "urgent" in human

    missing = cli("queue", "hold", "NOSUCHID")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "smtpplus: error: no message with queue id NOSUCHID — see `smtpplus queue ls`"
    ]


def test_queue_controls_are_store_settings_and_operator_events(cli: Any, db: Any) -> None:
    cli("queue", "pause", check=True)
    assert get_setting(db, Keys.PAUSED) is True
    cli("queue", "resume", check=True)
    assert get_setting(db, Keys.PAUSED) is False
    assert "25 messages per second" in cli("queue", "rate", "25", check=True).stdout
    cli("queue", "parallel", "6", check=True)
    cli("queue", "next-hop", "127.0.0.1:8025", "--tls", "off", check=True)
    settings = q.delivery_settings(db)
    assert (settings.rate, settings.parallel, settings.next_hop, settings.next_hop_tls) == (25.0, 6, "127.0.0.1:8025", "off")
    assert "127.0.0.1:8025" in cli("queue", "next-hop", check=True).stdout
    cli("queue", "next-hop", "--clear", check=True)
    assert q.delivery_settings(db).next_hop is None
    reasons = [e.reason for e in find_events(db, kind="operator", limit=50)]
    assert reasons.count(str(Reason.SETTING_CHANGED)) == 4
    assert str(Reason.DELIVERY_PAUSED) in reasons and str(Reason.DELIVERY_RESUMED) in reasons
    for args, words in (
        (("queue", "rate", "fast"), "not a number"),
        (("queue", "parallel", "0"), "from 1 to 256"),
        (("queue", "next-hop", "nohost"), "is not HOST:PORT"),
    ):
        bad = cli(*args)
        assert bad.returncode == 1 and words in bad.stderr and "Traceback" not in bad.stderr
    status = cli.json("queue", "status")
    assert status["rate"] == 25.0 and [p["priority"] for p in status["priorities"]] == [1, 2, 3, 4, 5]


def test_campaign_commands(cli: Any, db: Any, tmp_path: Path) -> None:
    directory.create_list(db, "news")
    directory.import_members(db, "news", [("a@example.org", "A"), ("b@example.org", "B")])
    verify_sender_domain(db, "example.com")
    made = cli.json("campaigns", "add", "--list", "news", "--subject", "Hello", "--body", "Hi all",
                    "--from", "news@example.com", "--priority", "4", "--at", "+1h")
    assert (made["state"], made["priority"], made["total"]) == ("scheduled", 4, 2)
    eml = tmp_path / "letter.eml"
    eml.write_bytes(b"From: Boss <boss@example.com>\nSubject: Letter\n\nDear members\n")
    second = cli.json("campaigns", "add", "--list", "news", "--eml", str(eml))
    assert second["from"] == "boss@example.com" and second["subject"] == "Letter"
    assert [c["id"] for c in cli.json("campaigns", "ls")] == [second["id"], made["id"]]
    assert cli.json("campaigns", "pause", str(made["id"]))["state"] == "paused"
    assert cli.json("campaigns", "resume", str(made["id"]))["state"] == "scheduled"
    assert cli.json("campaigns", "cancel", str(made["id"]))["state"] == "cancelled"
    assert "Hello" in cli("campaigns", "ls", check=True).stdout
    for args, words in (
        (("campaigns", "add", "--list", "news", "--subject", "x", "--from", "a@b.example"), "exactly one of --body"),
        (("campaigns", "add", "--list", "nope", "--subject", "x", "--body", "y", "--from", "a@b.example"), "no list named 'nope'"),
        (("campaigns", "add", "--list", "news", "--subject", "x", "--body", "y", "--from", "a@b.example", "--priority", "9"), "priority must be"),
        (("campaigns", "cancel", str(made["id"])), "already cancelled"),
    ):
        bad = cli(*args)
        assert bad.returncode != 0 and words in bad.stderr, bad.stderr


def test_campaigns_send_only_as_verified_identities(cli: Any, db: Any, tmp_path: Path) -> None:
    directory.create_list(db, "Tiny")
    directory.import_members(db, "Tiny", [("a@example.org", "A")])
    verify_sender_domain(db, "example.com")
    spoof = cli("campaigns", "add", "--list", "Tiny", "--subject", "spoof", "--body", "hi",
                "--from", "ceo@bank-not-ours.example")
    assert spoof.returncode == 1 and "Traceback" not in spoof.stderr
    [line] = spoof.stderr.strip().splitlines()
    assert line.startswith("smtpplus: error: --from ceo@bank-not-ours.example is not a known sender identity — "
                           "add it to a user's senders/domains and verify it")
    eml = tmp_path / "spoof.eml"
    eml.write_bytes(b"From: CEO <ceo@bank-not-ours.example>\nSubject: Wire money\n\nNow.\n")
    from_eml = cli("campaigns", "add", "--list", "Tiny", "--eml", str(eml))
    assert from_eml.returncode == 1 and "ceo@bank-not-ours.example is not a known sender identity" in from_eml.stderr
    nope = cli("campaigns", "add", "--list", "Nope", "--subject", "s", "--body", "hi", "--from", "ceo@bank-not-ours.example")
    assert nope.returncode == 1 and "no list named 'Nope'" in nope.stderr
    no_from = cli("campaigns", "add", "--list", "Tiny", "--subject", "s", "--body", "hi")
    assert no_from.returncode == 1 and "--from ADDRESS (required with --body)" in no_from.stderr
    assert "required with --body; optional with --eml" in " ".join(cli("campaigns", "add", "--help").stdout.split())
    assert cli.json("campaigns", "ls") == []
    # The same address through a pending identity names the verification step.
    directory.create_user(db, list_name="Tiny", password_hash=NO_LOGIN, username="ceo", senders=["ceo@bank-not-ours.example"])
    pending = cli("campaigns", "add", "--list", "Tiny", "--subject", "s", "--body", "hi", "--from", "ceo@bank-not-ours.example")
    assert pending.returncode == 1
    assert "awaits verification — verify it with `smtpplus senders send-code ceo@bank-not-ours.example`" in pending.stderr


def test_campaigns_ls_shows_all_delivery_paused(cli: Any, db: Any) -> None:
    directory.create_list(db, "news")
    directory.import_members(db, "news", [("a@example.org", "A")])
    verify_sender_domain(db, "example.com")
    made = cli.json("campaigns", "add", "--list", "news", "--subject", "Hello", "--body", "Hi", "--from", "news@example.com")
    start_due_campaigns(db)
    assert cli.json("campaigns", "ls")[0]["state"] == "sending"
    cli("queue", "pause", check=True)
    assert cli.json("campaigns", "ls")[0]["state"] == "paused (all delivery paused)"
    assert "paused (all delivery paused)" in cli("campaigns", "ls", check=True).stdout
    cli("queue", "resume", check=True)
    assert cli.json("campaigns", "ls")[0]["state"] == "sending" and made["id"] == 1


def test_queue_starvation_share_is_an_operator_setting(cli: Any, db: Any) -> None:
    assert cli("queue", "starvation", check=True).stdout.strip() == "starvation share: off (strict priority)"
    assert "starvation share off" in cli("queue", "status", check=True).stdout
    out = cli("queue", "starvation", "0.05", check=True).stdout
    assert out.strip() == "Starvation share: 0.05 (1 dispatch in 20 goes to the oldest lower-priority message)."
    assert q.delivery_settings(db).starvation_share == 0.05
    assert cli.json("queue", "status")["starvation_share"] == 0.05
    assert "starvation share 0.05 (1 dispatch in 20" in cli("queue", "status", check=True).stdout
    [event] = find_events(db, kind="operator", reason=str(Reason.SETTING_CHANGED))
    assert event.detail.startswith("starvation share set to 0.05")
    for value, words in (("0.6", "from 0 (off) to 0.5"), ("-1", "from 0 (off) to 0.5"), ("lots", "is not a number"),
                         ("nan", "from 0 (off) to 0.5")):
        bad = cli("queue", "starvation", "--", value)
        assert bad.returncode == 1 and words in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    cli("queue", "starvation", "0", check=True)
    assert q.delivery_settings(db).starvation_share == 0.0


def test_queue_status_says_when_no_relay_is_running(cli: Any, db: Any) -> None:
    # The engine's last word was "running", but its relay is gone (no live lease).
    q.publish_status(db, "running", "to 127.0.0.1:8025")
    status = cli("queue", "status", check=True).stdout
    assert status.splitlines()[0].startswith("delivery: relay not running (start one with `smtpplus relay`")
    assert "running (to" not in status
    assert "delivery: relay not running" in cli("queue", "ls", check=True).stdout
    report = cli.json("queue", "status")
    assert report["relay_alive"] is False and report["delivery"]["state"] == "relay not running"
    lease.acquire(db, "relay-live", os.getpid(), "test-host", "127.0.0.1")
    status = cli("queue", "status", check=True).stdout
    assert status.splitlines()[0] == "delivery: running (to 127.0.0.1:8025)"
    assert cli.json("queue", "status")["relay_alive"] is True
    lease.release(db, "relay-live")
    assert cli.json("queue", "status")["delivery"]["state"] == "relay not running"


def test_list_statistics_today_and_total(cli: Any, db: Any) -> None:
    team = directory.create_list(db, "team")
    old = time.time() - 3 * 86400
    for kind, reason, at in (
        ("queued", Reason.ACCEPTED, old), ("queued", Reason.ACCEPTED, None), ("sent", Reason.DELIVERED, None),
        ("refused", Reason.SENDER_NOT_AUTHORIZED, None), ("deferred", Reason.DEFERRED_4XX, old),
        ("failed", Reason.FAILED_5XX, None),
    ):
        record_event(db, NewEvent(kind, reason, list_id=team.id, at=at))  # type: ignore[arg-type]
    stats = cli.json("lists", "stats", "team")
    assert stats["today"] == {"accepted": 1, "refused": 1, "delivered": 1, "deferred": 0, "failed": 1}
    assert stats["total"] == {"accepted": 2, "refused": 1, "delivered": 1, "deferred": 1, "failed": 1}
    assert "today" in cli("lists", "stats", "team", check=True).stdout


def spawn_sink(cli: Any, ready: Path, record: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "sink", "--port", "0",
         "--ready-file", str(ready), "--record", str(record), "--chaos", "5xx-match=bad@*"],
        cwd=ROOT, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def read_ready(ready: Path) -> dict[str, Any] | None:
    return json.loads(ready.read_text()) if ready.exists() else None


async def test_sink_command_records_and_writes_a_ready_file(cli: Any, tmp_path: Path) -> None:
    ready, record = tmp_path / "sink.json", tmp_path / "sink.jsonl"
    proc = spawn_sink(cli, ready, record)
    try:
        deadline = time.monotonic() + 20
        while (info := read_ready(ready)) is None:
            assert proc.poll() is None and time.monotonic() < deadline, "sink did not start"
            await asyncio.sleep(0.05)
        assert info["pid"] == proc.pid
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=info["port"], start_tls=False, local_hostname="test")
        async with client:
            errors, _ = await client.sendmail(
                "a@example.com", ["ok@example.net", "bad@example.net"],
                b"Subject: hello\r\nX-Priority: 1\r\nMessage-ID: <id1@test>\r\n\r\nbody\r\n",
            )
            assert list(errors) == ["bad@example.net"] and errors["bad@example.net"].code == 550
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "#1 from <a@example.com> to ok@example.net X-Priority 1" in out
    [line] = [json.loads(x) for x in record.read_text().splitlines()]
    assert (line["seq"], line["rcpt_tos"], line["x_priority"], line["message_id"]) == (1, ["ok@example.net"], "1", "<id1@test>")
    bad = cli("sink", "--chaos", "4xx=2")
    assert bad.returncode == 1 and "not valid" in bad.stderr
