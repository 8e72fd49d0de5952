"""relay.admin.verification against a real store file (and a real DNS server on loopback)."""

from __future__ import annotations

from typing import Any

import pytest

from relay import verification as rules
from relay.admin import users as user_admin
from relay.admin import verification as admin
from relay.reasons import Reason
from relay.store import directory
from relay.store import queue as queue_store
from relay.store.errors import InvalidInput, NotFound
from relay.store.events import find_events
from relay.store.settings import Keys, set_setting
from relay.verification import CodeOutcome

T0 = 1_800_000_000.0


@pytest.fixture
def pending(listed: Any) -> Any:
    set_setting(listed, Keys.SYSTEM_SENDER, "smtpplus@relay.example.net")
    user_admin.create_user(
        listed, list_name="News", username="alice", senders=["alice@example.com"], domains=["example.org"]
    )
    return listed


def test_send_code_queues_the_composed_mail_and_keeps_the_code_out_of_repr(pending: Any) -> None:
    sent = admin.send_code(pending, "Alice@Example.COM", now=T0)
    assert sent.identity.value == "alice@example.com"
    assert sent.sender == "smtpplus@relay.example.net"
    assert sent.expires_at == rules.expiry(T0, rules.DEFAULT_CODE_TTL)
    assert sent.code not in repr(sent)
    (row,) = queue_store.list_messages(pending)
    assert (row.queue_id, row.origin, row.priority) == (sent.queue_id, "system", admin.SYSTEM_MAIL_PRIORITY)
    assert row.subject == rules.CODE_SUBJECT and row.mail_from == sent.sender
    (event,) = find_events(pending, reason=Reason.CODE_SENT)
    assert event.queue_id == sent.queue_id and sent.code not in (event.detail or "")


def test_send_code_refuses_bad_input_before_anything_is_queued(pending: Any) -> None:
    with pytest.raises(InvalidInput, match="lifetime must be positive"):
        admin.send_code(pending, "alice@example.com", ttl=0)
    with pytest.raises(InvalidInput, match="is a domain"):
        admin.send_code(pending, "example.org")
    with pytest.raises(NotFound):
        admin.send_code(pending, "nobody@example.com")
    with pytest.raises(InvalidInput, match="system sender"):
        admin.send_code(pending, "alice@example.com", sender="not an address")
    assert find_events(pending, reason=Reason.CODE_SENT) == []


def test_a_confirmed_code_verifies_the_address_once(pending: Any) -> None:
    sent = admin.send_code(pending, "alice@example.com", now=T0)
    wrong = admin.confirm_code(pending, "alice@example.com", "0000 0000" if sent.code != "00000000" else "1111 1111",
                               now=T0 + 1)
    assert wrong.outcome is CodeOutcome.WRONG and not wrong.ok
    right = admin.confirm_code(pending, "alice@example.com", sent.code, now=T0 + 2)
    assert right.ok and right.identity.verified and right.identity.method == "code"
    with pytest.raises(InvalidInput, match="already verified"):
        admin.send_code(pending, "alice@example.com")


def test_check_dns_verifies_a_domain_carrying_its_own_token(pending: Any, table_dns: Any) -> None:
    identity = directory.get_identity(pending, "example.org")
    table_dns.set("example.org", "txt", "smtpplus-verification=stale")
    missed = admin.check_dns(pending, "example.org", resolver=table_dns.address)
    assert not missed.result.verified and not missed.after.verified and missed.seconds >= 0
    table_dns.set("example.org", "txt", identity.txt_record)
    found = admin.check_dns(pending, "example.org", resolver=table_dns.address)
    assert found.result.verified and not found.before.verified
    assert found.after.verified and found.after.method == "dns"
    with pytest.raises(InvalidInput, match="is an address"):
        admin.check_dns(pending, "alice@example.com", resolver=table_dns.address)


def test_approve_many_with_a_reason_and_only_once(pending: Any) -> None:
    with pytest.raises(InvalidInput, match="needs a reason"):
        admin.approve(pending, ["example.org"], "  ")
    with pytest.raises(NotFound):
        admin.approve(pending, ["example.org", "unknown.example"], "existing account")
    assert not directory.get_identity(pending, "example.org").verified  # nothing changed
    first = admin.approve(pending, ["example.org", "alice@example.com"], "existing account")
    assert [(i.value, changed) for i, changed in first] == [("example.org", True), ("alice@example.com", True)]
    again = admin.approve(pending, ["example.org"], "again")
    assert [(i.reason, changed) for i, changed in again] == [("existing account", False)]
