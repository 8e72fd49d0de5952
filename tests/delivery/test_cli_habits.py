"""Queue commands as Postfix's postsuper/postqueue: ``ALL`` and ``-`` for ids, unknown
ids exit 1 after acting on the known ones, a pipe closed early ends quietly, `status`
exits 3 without a live relay, `queue status` follows the next hop at once; and the
user of a message on every delivery event. Real subprocesses, relays and sinks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.sink import CaptureSink, Chaos
from relay.store import queue as q
from relay.store.events import find_events
from tests.conftest import ROOT
from tests.delivery.conftest import enqueue, eventually, message, point_at, running_engine, states
from tests.relay.test_cli import RelayProcess


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["queue_id"] for r in rows]


def test_all_and_stdin_ids_as_postsuper(cli: Any, db: Any) -> None:
    queued = [m.queue_id for m in enqueue(db, [message(n) for n in range(1, 6)])]
    held = cli("queue", "hold", "ALL", check=True)
    assert held.stdout.splitlines()[-1] == "5 of 5 message(s) held."
    assert sorted(_ids(cli.json("queue", "ls", "--state", "held"))) == sorted(queued)
    # Ids from stdin, one per line (blank lines ignored), as `postsuper -H -`.
    released = cli("queue", "release", "-", input=f"{queued[0]}\n\n{queued[1].lower()}\n", check=True)
    assert f"{queued[0]}: released" in released.stdout and f"{queued[1]}: released" in released.stdout
    assert sorted(_ids(cli.json("queue", "ls", "--state", "queued"))) == sorted(queued[:2])
    report = cli.json("queue", "release", "ALL")
    assert sorted(r["queue_id"] for r in report) == sorted(queued[2:]) and all(r["after"] == "queued" for r in report)
    assert cli("queue", "release", "ALL", check=True).stdout == "No message to be released.\n"
    mixed = cli("queue", "hold", "ALL", queued[0])
    assert mixed.returncode == 1 and "ALL stands alone" in mixed.stderr
    # rm ALL asks first; a script says --yes.
    refused = cli("queue", "rm", "ALL")
    assert refused.returncode == 1 and "--yes" in refused.stderr and len(q.list_messages(db)) == 5
    assert cli.json("queue", "rm", "ALL", "--yes")[0]["after"] is None
    assert q.list_messages(db) == []


def test_a_batch_with_unknown_ids_acts_on_the_known_ones_and_exits_1(cli: Any, db: Any) -> None:
    first, second = (m.queue_id for m in enqueue(db, [message(1), message(2)]))
    proc = cli("queue", "hold", first, "NOPE1", second, "NOPE2")
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"{first}: held", f"{second}: held", "2 of 2 message(s) held."]
    assert proc.stderr.strip().splitlines() == [
        "smtpplus: error: no message with queue id NOPE1, NOPE2 — see `smtpplus queue ls`"
    ]
    assert {r.state for r in q.list_messages(db)} == {"held"}
    as_json = cli("queue", "release", "-", "--json", input=f"{first}\nNOPE3\n")
    assert as_json.returncode == 1 and "NOPE3" in as_json.stderr
    assert [(r["queue_id"], r["found"]) for r in json.loads(as_json.stdout)] == [(first, True), ("NOPE3", False)]
    assert q.list_messages(db, state="held")[0].queue_id == second
    removed = cli("queue", "rm", "NOPE4", second)
    assert removed.returncode == 1 and f"{second}: deleted" in removed.stdout
    assert [r.queue_id for r in q.list_messages(db, state="all")] == [first]


def _with_reader_gone(cli: Any, *args: str) -> tuple[int, str]:
    """Run smtpplus with stdout a real pipe whose reader has already gone, so its first
    write meets EPIPE (a pipe buffer, however large, cannot hide it)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "from console.cli import main; main()", *args],
            env=cli.env, cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, timeout=60,
        )
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr.decode()


def test_a_reader_that_goes_away_ends_the_command_quietly(cli: Any, db: Any) -> None:
    enqueue(db, [message(n) for n in range(50)])
    for args in (("queue", "status"), ("queue", "ls", "--state", "all"), ("queue", "ls", "--json"), ("--help",),
                 ("queue", "hold", "ALL")):
        code, stderr = _with_reader_gone(cli, *args)
        assert code in (0, 141) and stderr == "", (args, code, stderr)
    # What a shell user types; whether the pipe is gone by the first write is up to timing.
    short = subprocess.run(
        f"{sys.executable} -c 'from console.cli import main; main()' queue status | head -1",
        shell=True, env=cli.env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert short.returncode == 0 and short.stderr == "" and short.stdout.startswith("delivery:")


def test_status_exits_0_with_a_live_relay_and_3_without(cli: Any, db: Any, tmp_path: Path) -> None:
    # No store at all: only reads, so exit 1 naming the path, and nothing is created.
    absent = tmp_path / "absent.db"
    missing = cli("status", "--db", str(absent))
    assert missing.returncode == 1 and f"no store at {absent}" in missing.stderr and not absent.exists()
    waited_for_store = cli("status", "--wait", "0.3", "--db", str(absent))
    assert waited_for_store.returncode == 3 and "no store at" in waited_for_store.stderr and not absent.exists()

    stopped = cli("status")
    assert stopped.returncode == 3 and "not running" in stopped.stdout and stopped.stderr == ""
    assert json.loads(cli("status", "--json").stdout)["alive"] is False
    waited = cli("status", "--wait", "0.3")
    assert waited.returncode == 3 and "no live relay" in waited.stderr

    relay = RelayProcess(cli, tmp_path, "--ports", "0")
    try:
        relay.wait_ready()
        alive = cli("status")
        assert alive.returncode == 0 and "alive" in alive.stdout, alive.stderr
        assert cli("status", "--wait", "5").returncode == 0
        assert cli.json("status")["alive"] is True
    finally:
        assert relay.stop() == 0, relay.output()
    assert cli("status").returncode == 3


def _delivery_line(cli: Any) -> str:
    return str(cli("queue", "status", check=True).stdout.splitlines()[0])


async def test_queue_status_shows_a_new_next_hop_at_once(cli: Any, db: Any, tmp_path: Path) -> None:
    q.set_next_hop(db, "127.0.0.1:9")
    relay = RelayProcess(cli, tmp_path, "--ports", "0")
    try:
        relay.wait_ready()
        await eventually(lambda: _delivery_line(cli) == "delivery: running (to 127.0.0.1:9)", within=30, every=0.2)
        cli("queue", "next-hop", "127.0.0.1:10", check=True)
        # The state word stays "running": the status is republished for the new hop all the same.
        await eventually(lambda: _delivery_line(cli) == "delivery: running (to 127.0.0.1:10)", within=30, every=0.2)
        assert cli.json("queue", "status")["delivery"] == {"state": "running", "detail": "to 127.0.0.1:10"}
    finally:
        assert relay.stop() == 0, relay.output()


async def test_delivery_events_carry_the_user_of_the_message(store_path: Path, db: Any) -> None:
    async with CaptureSink(port=0, chaos=Chaos(perm_match="bad*")) as picky:
        point_at(db, picky)
        good, bad = message(1), message(2, to=["bad@example.net"])
        good.username = bad.username = "alice"
        enqueue(db, [good, bad])
        async with running_engine(store_path):
            # alice's good message sent, her bad one failed, the notice about it sent.
            await eventually(lambda: states(db) == {"sent": 2, "failed": 1})
    kinds = [(e.kind, e.reason) for e in find_events(db, username="alice", limit=100)]
    assert ("delivery", "delivery-attempt") in kinds and ("sent", "delivered") in kinds
    assert ("failed", "failed-5xx") in kinds and ("bounce", "bounce-queued") in kinds
    # The notice about alice's failed message is alice's too: its own delivery shows under her name.
    [notice] = [m for m in q.list_messages(db, state="all") if m.origin == "system"]
    assert notice.username == "alice"
    attempts = {e.queue_id for e in find_events(db, username="alice", kind="delivery", limit=100)}
    assert notice.queue_id in attempts
    assert find_events(db, kind="delivery", limit=100) and all(
        e.username == "alice" for e in find_events(db, kind="delivery", limit=100)
    )
