"""The harness against a live relay: it sends over SMTP only, checks at the relay's
own next hop, never changes the relay's delivery, and removes what it made — while
real mail keeps flowing through the same relay to the same next hop."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import ssl
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from harness.report import failure_details
from harness.scenario import RunOptions, load_scenario, run_files, run_scenarios
from harness.sink import CaptureSink
from relay import policy
from relay.passwords import hash_password
from relay.reasons import EventKind, Reason
from relay.store import campaigns as campaigns_store
from relay.store import directory
from relay.store import events as events_store
from relay.store import queue as queue_store
from relay.store.errors import NotFound

REAL_PASSWORD = "Real-Mail-Password-0123456789"

LIVE = """
[scenario]
name = "live"
ports = "served"
[setup]
lists = [{{ name = "live" }}]
users = [{{ username = "live-user", list = "live", domains = "live.example" }}]
[sink]
address = "127.0.0.1:{port}"
record = "next-hop.jsonl"
[[sends]]
name = "hello"
user = "live-user"
mail_from = "a@live.example"
to = ["b@dest.example"]
expect = "250 2.0.0"
[[sends]]
name = "not-authorized"
user = "live-user"
mail_from = "a@elsewhere.example"
to = ["b@dest.example"]
expect = "550 5.7.1"
expect_stage = "mail"
[expect]
counts = {{ accepted = 3, refused = 3, delivered = 3 }}
events = [{{ kind = "queued", reason = "accepted", min = 3 }}]
"""


def _real_user(db: sqlite3.Connection) -> None:
    """The store's own list and user: real mail, not the harness's."""
    directory.create_list(db, "customers")
    directory.create_user(
        db, list_name="customers", password_hash=hash_password(REAL_PASSWORD), username="real-sender",
        domains=policy.parse_domains("real.example"),
    )
    directory.approve_identities(db, ["real.example"], "an existing customer")
    directory.set_active(db, "real-sender", True)


async def _send_real_mail(port: int, ca: Path, subject: str) -> None:
    message = EmailMessage()
    message["From"] = "billing@real.example"
    message["To"] = "customer@dest.example"
    message["Subject"] = subject
    message.set_content("An invoice, not a test.\n")
    context = ssl.create_default_context(cafile=str(ca))
    await aiosmtplib.send(
        message, hostname="127.0.0.1", port=port, start_tls=True, tls_context=context,
        username="real-sender", password=REAL_PASSWORD, timeout=20,
    )


async def _real_mail_until(done: asyncio.Event, port: int, ca: Path, at_least: int) -> list[str]:
    """Real mail, one message after another, until the harness run is over."""
    subjects: list[str] = []
    while not done.is_set() or len(subjects) < at_least:
        subject = f"invoice {len(subjects) + 1}"
        await _send_real_mail(port, ca, subject)
        subjects.append(subject)
        await asyncio.sleep(0.02)
    return subjects


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _wait_for_subjects(path: Path, subjects: list[str]) -> list[str]:
    deadline = time.monotonic() + 60
    while True:
        arrived = [r.get("subject") for r in _records(path)]
        if all(s in arrived for s in subjects) or time.monotonic() > deadline:
            return [s for s in subjects if s in arrived]
        await asyncio.sleep(0.05)


def _controls(db: sqlite3.Connection) -> queue_store.DeliverySettings:
    return queue_store.delivery_settings(db)


def _harness_names(db: sqlite3.Connection) -> list[str]:
    names = [u.username for u in directory.all_users(db)] + [item.name for item in directory.all_lists(db)]
    return sorted(n for n in names if n.startswith("hr-"))


@pytest.fixture
async def next_hop(db: sqlite3.Connection, tmp_path: Path, relay: Any) -> Any:
    """The live relay's real next hop: a capture sink recording to a file; the relay
    runs with its own controls (rate, parallel), not paused."""
    record = tmp_path / "next-hop.jsonl"
    async with CaptureSink("127.0.0.1", 0, record) as sink:
        queue_store.set_next_hop(db, f"127.0.0.1:{sink.port}", tls="off")
        queue_store.set_rate(db, 500)
        queue_store.set_parallel(db, 3)
        _real_user(db)
        yield sink, record


async def test_a_run_against_a_live_relay_leaves_its_delivery_and_real_mail_alone(
    relay: Any, db: sqlite3.Connection, next_hop: Any, store_path: Path, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    sink, record = next_hop
    scenario = tmp_path / "live.toml"
    scenario.write_text(LIVE.format(port=sink.port))
    before = _controls(db)
    started = time.time()

    done = asyncio.Event()
    real = asyncio.create_task(_real_mail_until(done, relay.served[0], tls_files["ca"], at_least=5))
    await asyncio.sleep(0.1)  # real mail is already flowing when the run starts
    try:
        report = await run_files([str(scenario)], RunOptions(store_path=store_path, timeout=20))
    finally:
        done.set()
        subjects = await real
    assert report.passed, "\n".join(failure_details(report))

    # Every real message reached the real next hop; the harness's did too, tagged.
    assert await _wait_for_subjects(record, subjects) == subjects
    tagged = [r for r in _records(record) if r.get("harness_id")]
    assert len(tagged) == 3 and {r["harness_id"].split()[1] for r in tagged} == {"hello"}
    # The relay's delivery controls are exactly as they were, and no one changed them.
    assert _controls(db) == before
    changes = events_store.find_events(db, kind=str(EventKind.OPERATOR), since=started, limit=100)
    assert [e.detail for e in changes] == []
    # What the run made is gone (mail stays); the store's own list and user are untouched.
    assert _harness_names(db) == []
    assert [u.username for u in directory.all_users(db)] == ["real-sender"]
    with pytest.raises(NotFound):
        directory.get_identity(db, "live.example")
    [scenario_report] = report.scenarios
    assert scenario_report.facts["removed"] == "1 list(s), 1 user(s), 1 identities, 0 campaign(s)"
    assert "sink" in scenario_report.facts and scenario_report.facts["run_prefix"].startswith("hr-")


async def test_keep_keeps_what_the_run_made_and_says_so(
    relay: Any, db: sqlite3.Connection, next_hop: Any, cli: Any, tmp_path: Path
) -> None:
    sink, _ = next_hop
    scenario = tmp_path / "live.toml"
    scenario.write_text(LIVE.format(port=sink.port))
    before = _controls(db)
    proc = await asyncio.to_thread(cli, "harness", "run", "--keep", "--timeout", "20", str(scenario), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kept = _harness_names(db)
    assert len(kept) == 2 and kept[0].endswith("-live") and kept[1].endswith("-live-user")
    assert f"live: kept lists {kept[0]}; users {kept[1]}; identities live.example (--keep)" in proc.stdout
    assert directory.get_identity(db, "live.example").verified
    assert _controls(db) == before

    # Without --keep, the summary says what was removed.
    again = await asyncio.to_thread(cli, "harness", "run", "--timeout", "20", str(scenario), timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "live: removed what the run made (1 list(s), 1 user(s), 0 identities, 0 campaign(s))" in again.stdout
    assert _harness_names(db) == kept  # the kept ones are not this run's to remove


async def test_a_scenario_that_needs_to_own_delivery_is_refused_in_one_line(
    relay: Any, db: sqlite3.Connection, next_hop: Any, cli: Any
) -> None:
    before = _controls(db)
    proc = await asyncio.to_thread(cli, "harness", "run", "priority", timeout=60)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("smtpplus: error: priority: needs to own delivery")
    assert "pauses delivery" in line and "delivery.parallel, delivery.rate" in line and "own sink" in line
    assert line.endswith("run it with --start-relay")
    assert _controls(db) == before and _harness_names(db) == []


async def test_a_sink_that_is_not_the_relays_next_hop_is_refused(
    relay: Any, db: sqlite3.Connection, next_hop: Any, store_path: Path, tmp_path: Path
) -> None:
    scenario = tmp_path / "elsewhere.toml"
    scenario.write_text(LIVE.format(port=9))
    (tmp_path / "next-hop.jsonl").touch()
    report = await run_files([str(scenario)], RunOptions(store_path=store_path, timeout=10))
    [check] = report.failures
    assert check.name == "live-relay"
    assert "checks at the sink 127.0.0.1:9, which is not the relay's next hop (127.0.0.1:" in check.detail
    assert "--start-relay" in check.detail
    assert _harness_names(db) == []


async def test_owning_delivery_every_change_and_restore_is_an_event(
    relay: Any, db: sqlite3.Connection, store_path: Path, tmp_path: Path
) -> None:
    """A relay the run owns (the test's own): it may set the next hop and controls,
    and puts each back with an event, so the Events screen ends with the restores."""
    queue_store.set_next_hop(db, "127.0.0.1:2", tls="opportunistic")
    before = _controls(db)
    started = time.time()
    scenario = tmp_path / "owned.toml"
    scenario.write_text(
        """
[scenario]
name = "owned"
ports = "sample:1"
pause_delivery_until_queued = true
[setup]
settings = { "delivery.parallel" = 1 }
lists = [{ name = "owned" }, { name = "owned-news", member_count = 3 }]
users = [{ username = "owned-user", list = "owned", domains = "owned.example" }]
[sink]
start = true
[[sends]]
name = "one"
user = "owned-user"
mail_from = "a@owned.example"
to = ["b@dest.example"]
expect = "250"
[[sends]]
name = "news"
kind = "campaign"
list = "owned-news"
mail_from = "news@owned.example"
"""
    )
    report = await run_scenarios(
        [load_scenario(str(scenario))], RunOptions(store_path=store_path, timeout=10, owns_delivery=True)
    )
    assert report.passed, "\n".join(failure_details(report))
    assert _controls(db) == before
    events = list(reversed(events_store.find_events(db, kind=str(EventKind.OPERATOR), since=started, limit=100)))
    details = [e.detail for e in events]
    prefix = report.scenarios[0].facts["run_prefix"].rstrip("-")
    assert f"parallel connections set to 1 by harness run {prefix} (was unset (the default))" in details
    assert any(d.startswith("next hop set to 127.0.0.1:") for d in details)
    assert "delivery paused" in details and "delivery resumed" in details
    restores = [d for d in details if "restored" in d]
    assert sorted(restores) == sorted([
        f"next hop restored to 127.0.0.1:2 after harness run {prefix}",
        f"next hop STARTTLS restored to opportunistic after harness run {prefix}",
        f"parallel connections restored to unset (the default) after harness run {prefix}",
    ])
    # The last word on the Events screen is a restore, not the run's next hop.
    assert details[-1] in restores
    assert all(e.reason in (Reason.SETTING_CHANGED, Reason.DELIVERY_PAUSED, Reason.DELIVERY_RESUMED) for e in events)
    # Its lists, user, identity and (finished) campaign are gone; the campaign's mail stays.
    assert _harness_names(db) == [] and campaigns_store.list_campaigns(db) == []
    assert report.scenarios[0].facts["removed"] == "2 list(s), 1 user(s), 1 identities, 1 campaign(s)"
    # The sink had every message when the run ended; the relay records the last one's
    # outcome a moment later (its round after the delivery): wait for it, boundedly.
    for _ in range(200):
        if len(queue_store.list_messages(db, state="sent", limit=10)) == 4:
            break
        await asyncio.sleep(0.05)
    assert len(queue_store.list_messages(db, state="sent", limit=10)) == 4


async def test_the_documented_example_runs_against_a_live_relay(
    relay: Any, db: sqlite3.Connection, next_hop: Any, store_path: Path, tmp_path: Path
) -> None:
    """docs/scenarios.md's complete example, as written but for the sink's port."""
    from tests.conftest import ROOT

    sink, _ = next_hop
    text = (ROOT / "docs" / "scenarios.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    assert 'address = "127.0.0.1:2526"' in example
    scenario = tmp_path / "staging.toml"
    scenario.write_text(example.replace("127.0.0.1:2526", f"127.0.0.1:{sink.port}"))
    before = _controls(db)
    report = await run_files([str(scenario)], RunOptions(store_path=store_path, timeout=20))
    assert report.passed, "\n".join(failure_details(report))
    assert _controls(db) == before and _harness_names(db) == []


async def test_the_harness_never_approves_a_pending_identity_of_the_store(
    relay: Any, db: sqlite3.Connection, next_hop: Any, store_path: Path, tmp_path: Path
) -> None:
    sink, _ = next_hop
    directory.create_user(
        db, list_name="customers", password_hash=hash_password(REAL_PASSWORD), username="waiting",
        senders=policy.parse_senders("carol@waiting.example"),
    )
    scenario = tmp_path / "live.toml"
    scenario.write_text(LIVE.format(port=sink.port).replace('domains = "live.example"', 'senders = "carol@waiting.example"'))
    report = await run_files([str(scenario)], RunOptions(store_path=store_path, timeout=10))
    setup = next(c for c in report.checks if c.name == "setup")
    assert not setup.passed
    assert "carol@waiting.example is a pending sender identity of this store" in setup.observed
    assert not directory.get_identity(db, "carol@waiting.example").verified
    assert _harness_names(db) == []
