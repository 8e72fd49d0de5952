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
from relay.store import directory
from relay.store import queue as q
from relay.store.events import NewEvent, find_events, record_event
from relay.store.settings import Keys, get_setting
from tests.conftest import ROOT
from tests.delivery.conftest import enqueue, message


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
