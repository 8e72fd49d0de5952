"""Bulk-sender rules against a real store file: List-Unsubscribe settings, tokens,
unsubscribing (also after a campaign was created, before its expansion), the
suppression list and the hard-bounce hook where delivery outcomes are settled."""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import SMTP as SMTP_POLICY
from typing import Any

import pytest

from relay.admin import campaigns as admin_campaigns
from relay.admin import unsubscribe as admin
from relay.admin import users as user_admin
from relay.campaigns import build_template
from relay.reasons import Reason
from relay.store import InvalidInput, directory
from relay.store import campaigns as store_campaigns
from relay.store import queue as q
from relay.store.events import find_events
from relay.store.suppressions import hard_bounce_code, list_suppressions
from relay.unsubscribe import TOKEN_PLACEHOLDER

T0 = 1_800_000_000.0
MEMBERS = [("a@example.net", "A"), ("b@example.net", "B"), ("c@example.net", "C")]


@pytest.fixture
def news(listed: Any) -> Any:
    directory.import_members(listed, "News", MEMBERS)
    user_admin.create_user(listed, list_name="News", username="u", domains=["example.com"])
    directory.approve_identities(listed, ["example.com"], "test")
    return listed


def campaign(db: Any, eml: bytes | None = None) -> int:
    template, subject, _ = build_template(
        subject="Hi", mail_from="news@example.com", body=None if eml else "Hello.", eml=eml, now=T0
    )
    info = admin_campaigns.create_campaign(db, "News", subject=subject, template=template, mail_from="news@example.com", now=T0)
    store_campaigns.start_due_campaigns(db, now=T0)
    return info.id


def expand(db: Any, campaign_id: int) -> dict[str, bytes]:
    while store_campaigns.expand_batch(db, campaign_id, batch=2, server_name="relay.test", now=T0):
        pass
    rows = db.execute(
        "SELECT r.address, b.data FROM messages m JOIN recipients r ON r.message_id = m.id "
        "JOIN message_bodies b ON b.message_id = m.id WHERE m.campaign_id = ?",
        (campaign_id,),
    ).fetchall()
    return {r[0]: bytes(r[1]) for r in rows}


def headers(data: bytes) -> Any:
    return BytesParser(policy=SMTP_POLICY).parsebytes(data, headersonly=True)


def token_of(data: bytes) -> str:
    value = str(headers(data)["List-Unsubscribe"])
    return value.split("/u/", 1)[1].split(">", 1)[0]


def test_settings_are_checked_and_shown(news: Any) -> None:
    _, settings = admin.unsubscribe_settings(news, "News")
    assert not settings.configured
    for bad, fix in [
        ("http://example.org/u/{token}", "https://"),
        ("https://example.org/u/", TOKEN_PLACEHOLDER),
        ("https://example.org/{token}/{token}", "exactly once"),
        ("https://example.org/u/{token} x", "printable"),
    ]:
        with pytest.raises(InvalidInput, match=fix.replace("{", r"\{").replace("}", r"\}")):
            admin.set_unsubscribe_settings(news, "News", url_template=bad)
    with pytest.raises(InvalidInput, match="--mailto"):
        admin.set_unsubscribe_settings(news, "News", mailto="not an address")
    _, settings = admin.set_unsubscribe_settings(news, "News", mailto="mailto:Unsub@Example.org")
    assert (settings.url_template, settings.mailto) == (None, "unsub@example.org")
    _, settings = admin.set_unsubscribe_settings(news, "News", url_template="https://example.org/u/{token}")
    assert settings.mailto == "unsub@example.org"  # what is not given stays
    _, settings = admin.set_unsubscribe_settings(news, "News", clear=True)
    assert not settings.configured


def test_messages_carry_the_headers_only_with_a_target_and_an_eml_cannot_bring_its_own(news: Any) -> None:
    eml = b"From: news@example.com\nSubject: S\nList-Unsubscribe: <https://evil.example/x>\n\nBody\n"
    plain = expand(news, campaign(news, eml))
    assert all(headers(d)["List-Unsubscribe"] is None for d in plain.values())  # no target, and not the file's
    for row in q.list_messages(news, state="all", limit=100):
        q.delete(news, [row.queue_id])

    admin.set_unsubscribe_settings(news, "News", mailto="unsub@example.org")
    mail_only = expand(news, campaign(news))
    for data in mail_only.values():
        assert str(headers(data)["List-Unsubscribe"]).startswith("<mailto:unsub@example.org?subject=unsubscribe%20")
        assert headers(data)["List-Unsubscribe-Post"] is None  # one-click needs an https URL


def test_a_token_unsubscribes_its_member_once_and_forged_or_unknown_tokens_are_refused(news: Any) -> None:
    admin.set_unsubscribe_settings(news, "News", url_template="https://example.org/u/{token}")
    messages = expand(news, campaign(news))
    assert len(messages) == 3
    tokens = {address: token_of(data) for address, data in messages.items()}
    assert all("example" not in t and "@" not in t for t in tokens.values())
    assert all(headers(d)["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" for d in messages.values())

    number, code = tokens["b@example.net"].split(".")
    for bad in ["", "x", f"{number}.{code[:-1]}", f"{number}.{code[::-1]}", f"{int(number) + 100}.{code}",
                f"{tokens['a@example.net'].split('.')[0]}.{code}"]:
        with pytest.raises(InvalidInput, match="^unsubscribe-bad-token:"):
            admin.unsubscribe(news, bad)
    done = admin.unsubscribe(news, tokens["b@example.net"])
    assert (done.list_name, done.address, done.already) == ("News", "b@example.net", False)
    assert done.removed == 1  # its message was still queued: it goes
    assert admin.unsubscribe(news, tokens["b@example.net"]).already
    assert len(find_events(news, reason=Reason.MEMBER_UNSUBSCRIBED)) == 1


def test_members_unsubscribed_or_suppressed_after_the_campaign_was_created_are_skipped(news: Any) -> None:
    admin.set_unsubscribe_settings(news, "News", url_template="https://example.org/u/{token}")
    first = expand(news, campaign(news))
    admin.unsubscribe(news, token_of(first["a@example.net"]))
    later = campaign(news)  # created, not expanded yet
    admin.add_suppression(news, "C@Example.NET", detail="asked by phone")
    assert [s.address for s in list_suppressions(news)] == ["c@example.net"]
    while store_campaigns.expand_batch(news, later, batch=2, server_name="relay.test", now=T0):
        pass
    info = store_campaigns.get_campaign(news, later)
    assert (info.expanded, info.skipped, info.total) == (1, 2, 1)
    skipped = {e.reason for e in find_events(news) if e.reason.startswith("campaign-skipped")}
    assert skipped == {Reason.CAMPAIGN_SKIPPED_UNSUBSCRIBED, Reason.CAMPAIGN_SKIPPED_SUPPRESSED}
    with pytest.raises(InvalidInput, match="not an address"):
        admin.add_suppression(news, "nope")
    admin.remove_suppression(news, "c@example.net")
    assert list_suppressions(news) == []


@pytest.mark.parametrize(
    ("reply", "code"),
    [("550 5.1.1 User unknown", "5.1.1"), ("550-5.1.1 The email account does not exist", "5.1.1"),
     ("556 5.1.10 Recipient address has null MX", "5.1.10"), ("550 5.1.2 Host unknown", "5.1.2"),
     ("553 5.1.8 Sender domain bad", None), ("550 5.1.7 Bad sender", None), ("550 5.7.1 Spam", None),
     ("450 4.1.1 Try later", None), ("550 User unknown", None), ("550 5.1.1x", None)],
)
def test_hard_bounce_codes(reply: str, code: str | None) -> None:
    assert hard_bounce_code(reply) == code


def test_a_5_1_x_failure_settled_by_delivery_suppresses_the_recipient(news: Any) -> None:
    from tests.delivery.conftest import enqueue, message

    q.set_next_hop(news, "127.0.0.1:2525")
    enqueue(news, [message(1, to=["gone@example.net", "spam@example.net", "ok@example.net", "n@null.example", "s@example.net"])])
    claimed = q.dispatch_round(news, q.RoundRequest(owner="t", lease_seconds=60, budget=1, hop="127.0.0.1:2525")).claimed
    (m,) = claimed
    outcome = q.Outcome(
        m, "failed", Reason.FAILED_5XX, "550 5.1.1 no such user",
        recipients=[
            q.RecipientResult("gone@example.net", "failed", "550 5.1.1 no such user"),
            q.RecipientResult("spam@example.net", "failed", "550 5.7.1 rejected as spam"),
            q.RecipientResult("ok@example.net", "sent", "250 ok"),
            # The relay's own DNS verdict (null MX) and a refused MAIL FROM judge no
            # mailbox: a domain-level or sender problem, never suppressed.
            q.RecipientResult("n@null.example", "failed", "556 5.1.10 null.example accepts no mail", judged=False),
            q.RecipientResult("s@example.net", "failed", "550 5.1.0 sender rejected", judged=False),
        ],
    )
    q.dispatch_round(news, q.RoundRequest(owner="t", lease_seconds=60, budget=0, hop="127.0.0.1:2525", outcomes=[outcome]))
    assert [(s.address, s.reason) for s in list_suppressions(news)] == [("gone@example.net", "recipient-suppressed")]
    (event,) = find_events(news, reason=Reason.RECIPIENT_SUPPRESSED)
    assert event.queue_id == m.queue_id and "5.1.1" in (event.detail or "")
