"""Verification (through the backend's ``Verification`` interface): codes (single use,
expiry, try limit), approvals, DNS results."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from relay import verification as rules
from relay.admin import verification as admin
from relay.dnscheck import DnsOutcome, DnsResult
from relay.passwords import hash_password
from relay.reasons import Reason
from relay.store.errors import InvalidInput, NotFound
from relay.store.settings import Keys
from relay.verification import CodeOutcome
from tests.store_contract.conftest import Case, ops

ADDRESS = "alice@example.com"
SENDER = "verify@relay.example.net"
T0 = 1_700_000_000.0


@pytest.fixture(scope="session")
def password_hash() -> str:
    return hash_password("correct horse battery staple")


@pytest.fixture
def people(db: Any, password_hash: str) -> dict[str, Any]:
    """List ``news`` with user ``alice`` (sender alice@example.com, domain example.org)
    and user ``bob`` (domain example.org too: verification is shared)."""
    directory = ops(db).directory
    directory.create_list(db, "news")
    alice = directory.create_user(
        db, list_name="news", password_hash=password_hash, username="alice",
        senders=["alice@example.com"], domains=["example.org"],
    )
    bob = directory.create_user(db, list_name="news", password_hash=password_hash, username="bob", domains=["example.org"])
    return {"alice": alice, "bob": bob}


@pytest.fixture
def configured(db: Any, people: dict[str, Any]) -> Any:
    ops(db).settings.set_setting(db, Keys.SYSTEM_SENDER, SENDER)
    return db


def _queued_mail(db: Any, message_id: int) -> tuple[Any, bytes, list[str]]:
    row = db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
    body = db.execute("SELECT data FROM message_bodies WHERE message_id = ?", (message_id,)).fetchone()[0]
    rcpts = [r[0] for r in db.execute("SELECT address FROM recipients WHERE message_id = ?", (message_id,))]
    return row, body, rcpts


def test_send_code_queues_system_mail_at_priority_2_and_keeps_only_a_hash(configured: Any) -> None:
    db = configured
    sent = admin.send_code(db, "Alice@Example.COM", now=T0)
    assert sent.identity.value == ADDRESS and sent.sender == SENDER
    assert len(sent.code) == rules.CODE_DIGITS and sent.code not in repr(sent)
    assert sent.expires_at == T0 + 24 * 3600

    row, body, rcpts = _queued_mail(db, sent.message_id)
    assert (row["origin"], row["priority"], row["user_priority"], row["state"]) == ("system", 2, 2, "queued")
    assert row["mail_from"] == SENDER and row["queue_id"] == sent.queue_id
    assert rcpts == [ADDRESS]
    assert rules.format_code(sent.code).encode() in body

    stored = db.execute("SELECT code_hash, attempts, used_at FROM verification_codes").fetchall()
    assert len(stored) == 1 and stored[0]["attempts"] == 0 and stored[0]["used_at"] is None
    assert stored[0]["code_hash"].startswith("$argon2id$") and sent.code not in stored[0]["code_hash"]

    events = ops(db).events.find_events(db)
    assert [e.reason for e in events if e.reason == Reason.CODE_SENT] == [Reason.CODE_SENT]
    assert all(sent.code not in e.detail for e in events)  # the code is never logged
    assert ops(db).directory.get_identity(db, ADDRESS).state == "pending"


def test_system_sender_falls_back_to_the_server_name_else_says_how_to_set_it(
    db: Any, people: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInput, match="senders settings --system-sender"):
        admin.send_code(db, ADDRESS)
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    ops(db).settings.set_setting(db, Keys.SERVER_NAME, "mx.example.net")
    assert admin.send_code(db, ADDRESS).sender == "smtpplus@mx.example.net"
    assert admin.send_code(db, ADDRESS, sender="Ops@Example.net").sender == "ops@example.net"


def test_send_code_refuses_domains_verified_and_unknown_identities(configured: Any) -> None:
    db = configured
    with pytest.raises(InvalidInput, match="check-dns example.org"):
        admin.send_code(db, "example.org")
    with pytest.raises(NotFound, match="nobody@example.com"):
        admin.send_code(db, "nobody@example.com")
    ops(db).verification.approve(db, [ADDRESS], "existing account")
    with pytest.raises(InvalidInput, match="already verified"):
        admin.send_code(db, ADDRESS)
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


def test_right_code_verifies_once_and_refreshes_users_authorization(configured: Any) -> None:
    db = configured
    before = ops(db).directory.auth_version(db, "alice")
    sent = admin.send_code(db, ADDRESS, now=T0)
    check = ops(db).verification.confirm_code(db, ADDRESS, rules.format_code(sent.code), now=T0 + 60)
    assert check.outcome is CodeOutcome.VERIFIED and check.ok
    identity = ops(db).directory.get_identity(db, ADDRESS)
    assert (identity.state, identity.method) == ("verified", "code") and identity.verified_at is not None
    assert (ops(db).directory.auth_version(db, "alice") or 0) > (before or 0)  # a relay's cached authorization is dropped

    again = ops(db).verification.confirm_code(db, ADDRESS, sent.code, now=T0 + 120)
    assert again.outcome is CodeOutcome.USED and not again.ok
    assert "already used" in again.message
    reasons = [e.reason for e in ops(db).events.find_events(db)]
    assert Reason.IDENTITY_VERIFIED in reasons and Reason.CODE_REJECTED in reasons


def test_five_wrong_codes_lock_the_code_until_a_new_one_is_sent(configured: Any) -> None:
    db = configured
    sent = admin.send_code(db, ADDRESS, now=T0)
    wrong = f"{(int(sent.code) + 1) % 10**8:08d}"
    left = [ops(db).verification.confirm_code(db, ADDRESS, wrong, now=T0 + 1).attempts_left for _ in range(rules.MAX_ATTEMPTS)]
    assert left == [4, 3, 2, 1, 0]
    locked = ops(db).verification.confirm_code(db, ADDRESS, sent.code, now=T0 + 2)
    assert locked.outcome is CodeOutcome.TOO_MANY_TRIES
    assert f"send-code {ADDRESS}" in locked.message
    assert ops(db).directory.get_identity(db, ADDRESS).state == "pending"

    fresh = admin.send_code(db, ADDRESS, now=T0 + 3)
    assert ops(db).verification.code_info(db, fresh.identity.id).attempts == 0  # type: ignore[union-attr]
    assert ops(db).verification.confirm_code(db, ADDRESS, fresh.code, now=T0 + 4).outcome is CodeOutcome.VERIFIED
    assert ops(db).directory.get_identity(db, ADDRESS).method == "code"


def test_a_new_code_voids_the_previous_one(configured: Any) -> None:
    db = configured
    first = admin.send_code(db, ADDRESS, now=T0)
    second = admin.send_code(db, ADDRESS, now=T0 + 1)
    assert first.code != second.code and first.queue_id != second.queue_id  # 1 in 10^8 to collide
    assert ops(db).verification.confirm_code(db, ADDRESS, first.code, now=T0 + 2).outcome is CodeOutcome.WRONG
    assert ops(db).verification.confirm_code(db, ADDRESS, second.code, now=T0 + 3).outcome is CodeOutcome.VERIFIED


def test_expired_code_is_refused_without_using_a_try(configured: Any) -> None:
    db = configured
    sent = admin.send_code(db, ADDRESS, now=T0, ttl=600)
    expired = ops(db).verification.confirm_code(db, ADDRESS, sent.code, now=T0 + 600)
    assert expired.outcome is CodeOutcome.EXPIRED and "expired" in expired.message
    assert ops(db).verification.code_info(db, sent.identity.id).attempts == 0  # type: ignore[union-attr]
    assert ops(db).directory.get_identity(db, ADDRESS).state == "pending"

    again = admin.send_code(db, ADDRESS, now=T0 + 700, ttl=600)
    assert ops(db).verification.confirm_code(db, ADDRESS, again.code, now=T0 + 700 + 599).outcome is CodeOutcome.VERIFIED


def test_unknown_malformed_and_already_verified(configured: Any) -> None:
    db = configured
    unknown = ops(db).verification.confirm_code(db, ADDRESS, "12345678")
    assert unknown.outcome is CodeOutcome.UNKNOWN and "no code was sent" in unknown.message
    sent = admin.send_code(db, ADDRESS)
    malformed = ops(db).verification.confirm_code(db, ADDRESS, "12-34")
    assert malformed.outcome is CodeOutcome.MALFORMED and malformed.attempts_left == rules.MAX_ATTEMPTS
    with pytest.raises(InvalidInput, match="is a domain"):
        ops(db).verification.confirm_code(db, "example.org", sent.code)
    with pytest.raises(NotFound):
        ops(db).verification.confirm_code(db, "nobody@example.com", sent.code)

    ops(db).verification.approve(db, [ADDRESS], "known to us")
    done = ops(db).verification.confirm_code(db, ADDRESS, sent.code)
    assert done.outcome is CodeOutcome.ALREADY_VERIFIED and done.ok
    assert ops(db).directory.get_identity(db, ADDRESS).method == "manual"  # the approval stands


def test_concurrent_guesses_never_exceed_the_try_limit(configured: Any, backend: Case) -> None:
    sent = admin.send_code(configured, ADDRESS, now=T0)
    wrong = [f"{(int(sent.code) + k) % 10**8:08d}" for k in range(1, 13)]
    outcomes: list[CodeOutcome] = []
    lock = threading.Lock()

    def guess(code: str) -> None:
        conn = backend.open()
        try:
            result = ops(conn).verification.confirm_code(conn, ADDRESS, code, now=T0 + 1).outcome
        finally:
            conn.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=guess, args=(c,)) for c in wrong]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(outcomes) == len(wrong)
    assert outcomes.count(CodeOutcome.WRONG) == rules.MAX_ATTEMPTS
    assert outcomes.count(CodeOutcome.TOO_MANY_TRIES) == len(wrong) - rules.MAX_ATTEMPTS
    assert ops(configured).verification.code_info(configured, sent.identity.id).attempts == rules.MAX_ATTEMPTS  # type: ignore[union-attr]


def test_bulk_approval_checks_every_name_first_and_records_the_reason(configured: Any) -> None:
    db = configured
    with pytest.raises(NotFound, match="nobody.example"):
        ops(db).verification.approve(db, [ADDRESS, "nobody.example"], "existing account")
    assert all(v.identity.state == "pending" for v in ops(db).verification.sender_views(db))
    with pytest.raises(InvalidInput, match="reason"):
        ops(db).verification.approve(db, [ADDRESS], "  ")

    results = ops(db).verification.approve(db, ["ALICE@example.com", "Example.ORG"], "existing account")
    assert [(i.value, changed) for i, changed in results] == [(ADDRESS, True), ("example.org", True)]
    assert all((i.method, i.reason) == ("manual", "existing account") for i, _ in results)
    again = ops(db).verification.approve(db, [ADDRESS], "another reason")
    assert again[0][1] is False and again[0][0].reason == "existing account"  # no-op keeps history
    approvals = [e for e in ops(db).events.find_events(db) if e.reason == Reason.IDENTITY_VERIFIED]
    assert len(approvals) == 2 and all("existing account" in e.detail for e in approvals)


def _dns(outcome: DnsOutcome, token: str, domain: str = "example.org") -> DnsResult:
    return DnsResult(outcome, domain, "127.0.0.1:5353", rules.txt_record(token), f"{domain}: {outcome}")


def test_dns_results_verify_only_with_the_domains_own_token(configured: Any) -> None:
    db = configured
    token = ops(db).directory.get_identity(db, "example.org").dns_token
    after = ops(db).verification.record_dns_check(db, "example.org", _dns(DnsOutcome.NXDOMAIN, token))
    assert after.state == "pending"
    after = ops(db).verification.record_dns_check(db, "example.org", _dns(DnsOutcome.VERIFIED, "someone-elses-token"))
    assert after.state == "pending"
    failures = [e for e in ops(db).events.find_events(db) if e.reason == Reason.DNS_CHECK_FAILED]
    assert len(failures) == 2 and "nxdomain" in failures[-1].detail

    before = ops(db).directory.auth_version(db, "bob")
    after = ops(db).verification.record_dns_check(db, "example.org", _dns(DnsOutcome.VERIFIED, token))
    assert (after.state, after.method) == ("verified", "dns") and "127.0.0.1:5353" in (after.reason or "")
    assert (ops(db).directory.auth_version(db, "bob") or 0) > (before or 0)  # shared by every user listing the domain

    # A later failed lookup records an event but never un-verifies.
    assert ops(db).verification.record_dns_check(db, "example.org", _dns(DnsOutcome.TIMEOUT, token)).state == "verified"
    with pytest.raises(InvalidInput, match="is an address"):
        ops(db).verification.record_dns_check(db, ADDRESS, _dns(DnsOutcome.VERIFIED, token, ADDRESS))


def test_sender_views_show_users_txt_records_codes_and_filter_by_state(configured: Any) -> None:
    db = configured
    admin.send_code(db, ADDRESS, now=T0)
    ops(db).verification.confirm_code(db, ADDRESS, "00000000", now=T0 + 1)
    views = {v.identity.value: v for v in ops(db).verification.sender_views(db)}
    assert views["example.org"].users == ("alice", "bob")
    assert views["example.org"].txt_record == f"smtpplus-verification={views['example.org'].identity.dns_token}"
    assert views[ADDRESS].txt_record is None
    code = views[ADDRESS].as_dict(now=T0 + 2)["code"]
    assert code["attempts_left"] == 4 and code["status"] == "open"
    assert views[ADDRESS].as_dict(now=T0 + 10**6)["code"]["status"] == "expired"

    ops(db).verification.approve(db, ["example.org"], "existing account")
    assert [v.identity.value for v in ops(db).verification.sender_views(db, state="verified")] == ["example.org"]
    assert [v.identity.value for v in ops(db).verification.sender_views(db, state="pending")] == [ADDRESS]
    assert ops(db).verification.sender_view(db, "EXAMPLE.org").as_dict()["reason"] == "existing account"
    with pytest.raises(InvalidInput):
        ops(db).verification.sender_views(db, state="maybe")


def test_nothing_but_the_three_methods_verifies(configured: Any) -> None:
    """Activating users, sending codes, failed checks and new users leave identities pending."""
    db = configured
    ops(db).directory.set_active(db, "alice", True)
    admin.send_code(db, ADDRESS)
    ops(db).verification.confirm_code(db, ADDRESS, "00000000")
    ops(db).verification.record_dns_check(db, "example.org", _dns(DnsOutcome.WRONG_TOKEN, "x"))
    assert {v.identity.state for v in ops(db).verification.sender_views(db)} == {"pending"}
