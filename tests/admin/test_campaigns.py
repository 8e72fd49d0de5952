"""relay.admin.campaigns against a real store file: composing and the sender checks."""

from __future__ import annotations

from typing import Any

import pytest

from relay.admin import campaigns as admin
from relay.admin import users as user_admin
from relay.reasons import Reason
from relay.store import directory
from relay.store.errors import InvalidInput, NotFound
from relay.store.events import find_events

T0 = 1_800_000_000.0


@pytest.fixture
def news(listed: Any) -> Any:
    directory.import_members(listed, "News", [("a@example.net", "A"), ("b@example.net", "B")])
    user_admin.create_user(listed, list_name="News", username="u", domains=["example.com"], senders=["x@other.example"])
    directory.approve_identities(listed, ["example.com"], "test")
    return listed


def test_compose_from_a_body_and_create_schedules_for_every_member(news: Any) -> None:
    draft = admin.compose_campaign(subject="Hello", mail_from="news@example.com", body="Hi.", at="+30m", now=T0)
    assert draft.subject == "Hello" and draft.mail_from == "news@example.com" and draft.priority == 3
    assert draft.scheduled_at == T0 + 1800
    assert b"From: news@example.com" in draft.template and b"\r\n" in draft.template
    info = admin.create_draft(news, "News", draft, now=T0)
    assert (info.list_name, info.total, info.state, info.scheduled_at) == ("News", 2, "scheduled", T0 + 1800)
    (event,) = find_events(news, reason=Reason.CAMPAIGN_CREATED)
    assert f"campaign {info.id}" in (event.detail or "")


def test_compose_from_an_eml_takes_its_sender_and_drops_recipients() -> None:
    eml = b"From: Desk <desk@example.com>\nTo: someone@example.org\nSubject: From file\n\nBody\n"
    draft = admin.compose_campaign(subject=None, mail_from=None, eml=eml, priority="2")
    assert (draft.mail_from, draft.subject, draft.priority, draft.scheduled_at) == ("desk@example.com", "From file", 2, None)
    assert b"someone@example.org" not in draft.template


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"subject": "s", "mail_from": "a@example.com"}, "exactly one of --body TEXT or --eml FILE"),
        ({"subject": None, "mail_from": "a@example.com", "body": "b"}, "--subject is required"),
        ({"subject": "s", "mail_from": None, "body": "b"}, "give the sender with --from"),
        ({"subject": "s", "mail_from": "a@example.com", "body": "b", "at": "someday"}, "is not a time"),
    ],
)
def test_compose_refuses_incomplete_input_in_one_line(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected):
        admin.compose_campaign(**kwargs)


def _template(sender: str) -> bytes:
    return f"From: {sender}\r\nSubject: s\r\n\r\nbody\r\n".encode()


def test_only_verified_senders_may_send_a_campaign(news: Any) -> None:
    with pytest.raises(InvalidInput, match="awaits verification .* senders send-code x@other.example"):
        admin.create_campaign(news, "News", subject="s", template=_template("x@other.example"),
                              mail_from="x@other.example")
    with pytest.raises(InvalidInput, match="not a known sender identity"):
        admin.create_campaign(news, "News", subject="s", template=_template("a@unknown.example"),
                              mail_from="a@unknown.example")
    with pytest.raises(InvalidInput, match="the message's From: x@other.example"):
        admin.create_campaign(news, "News", subject="s", template=_template("x@other.example"),
                              mail_from="news@example.com")
    with pytest.raises(InvalidInput, match="no From: header"):
        admin.create_campaign(news, "News", subject="s", template=b"Subject: s\r\n\r\nbody\r\n",
                              mail_from="news@example.com")
    assert find_events(news, reason=Reason.CAMPAIGN_CREATED) == []


def test_a_list_without_members_or_no_list_is_refused(listed: Any) -> None:
    directory.create_list(listed, "Empty")
    with pytest.raises(InvalidInput, match="has no members"):
        admin.create_campaign(listed, "Empty", subject="s", template=_template("a@example.com"), mail_from="a@example.com")
    with pytest.raises(NotFound):
        admin.create_campaign(listed, "Nope", subject="s", template=_template("a@example.com"), mail_from="a@example.com")
