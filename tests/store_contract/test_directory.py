"""The directory (through the backend's ``Directory`` interface): lists, users,
sender identities shared between users, member imports, and what deleting keeps."""

from __future__ import annotations

from typing import Any

import pytest

from relay import passwords
from relay.store.errors import AlreadyExists, InvalidInput, NotFound
from relay.store.intake import NewMessage
from tests.store_contract.conftest import ops

HASH = passwords.hash_password("correct horse battery staple")


def test_lists_are_unique_case_insensitively_and_renamable(db: Any) -> None:
    d = ops(db).directory
    d.create_list(db, "Newsletter", "monthly")
    with pytest.raises(AlreadyExists, match="already exists"):
        d.create_list(db, "newsletter")
    with pytest.raises(InvalidInput):
        d.create_list(db, "   ")
    d.create_list(db, "Alerts")
    with pytest.raises(AlreadyExists):
        d.edit_list(db, "Alerts", new_name="NEWSLETTER")
    renamed = d.edit_list(db, "alerts", new_name="Ops alerts", description="pager")
    assert (renamed.name, renamed.description) == ("Ops alerts", "pager")
    assert [x.name for x in d.all_lists(db)] == ["Newsletter", "Ops alerts"]
    with pytest.raises(NotFound, match="smtpplus lists ls"):
        d.get_list(db, "Alerts")


def test_users_get_generated_names_and_fields_are_validated(db: Any) -> None:
    d = ops(db).directory
    d.create_list(db, "Newsletter EU")
    first = d.create_user(db, list_name="Newsletter EU", password_hash=HASH)
    second = d.create_user(db, list_name="newsletter eu", password_hash=HASH, priority=1)
    assert (first.username, second.username) == ("newsletter-eu-1", "newsletter-eu-2")
    assert not first.active and first.priority == 3 and second.priority == 1
    with pytest.raises(AlreadyExists, match="already exists"):
        d.create_user(db, list_name="Newsletter EU", password_hash=HASH, username="newsletter-eu-1")
    with pytest.raises(InvalidInput, match="argon2id"):
        d.create_user(db, list_name="Newsletter EU", password_hash="plaintext")
    with pytest.raises(InvalidInput, match="1 \\(very high\\) to 5"):
        d.create_user(db, list_name="Newsletter EU", password_hash=HASH, priority=9)
    with pytest.raises(InvalidInput, match="note"):
        d.edit_user(db, "newsletter-eu-1", note="x" * 500)
    with pytest.raises(InvalidInput, match="not a valid"):
        d.edit_user(db, "newsletter-eu-1", senders=["visitor%evil@example.com"])
    with pytest.raises(NotFound, match="smtpplus users ls"):
        d.get_user(db, "nobody")
    with pytest.raises(NotFound):
        d.create_user(db, list_name="missing", password_hash=HASH)
    assert [u.username for u in d.all_users(db, "Newsletter EU")] == ["newsletter-eu-1", "newsletter-eu-2"]


def test_identities_are_shared_and_verification_survives_edits(db: Any) -> None:
    d = ops(db).directory
    d.create_list(db, "Shop")
    a = d.create_user(db, list_name="Shop", password_hash=HASH, domains=["Shop.Example"], senders=["Info@Shop.Example"])
    b = d.create_user(db, list_name="Shop", password_hash=HASH, domains=["shop.example"])
    assert [(i.kind, i.value, i.state) for i in a.identities] == [
        ("domain", "shop.example", "pending"),
        ("address", "info@shop.example", "pending"),
    ]
    assert not a.all_verified and not a.needs_activation
    version_before = d.auth_version(db, b.username)

    [(identity, changed)] = d.approve_identities(db, ["SHOP.example"], "existing account")
    assert changed and identity.method == "manual" and identity.reason == "existing account"
    assert d.approve_identities(db, ["shop.example"], "again") == [(identity, False)]  # a no-op
    version_after = d.auth_version(db, b.username)
    assert version_before is not None and version_after is not None
    assert version_after > version_before  # cached authorizations invalidated
    assert d.get_user(db, b.username).needs_activation  # its only identity is verified, still inactive
    assert not d.get_user(db, a.username).needs_activation  # info@ is pending

    # Dropping an identity from a user and adding it back keeps its verification.
    d.edit_user(db, b.username, domains=[])
    assert d.get_user(db, b.username).identities == ()
    assert d.edit_user(db, b.username, domains=["shop.example"]).identities[0].state == "verified"
    with pytest.raises(InvalidInput, match="reason"):
        d.approve_identities(db, ["info@shop.example"], "  ")
    with pytest.raises(NotFound):
        d.approve_identities(db, ["unknown.example"], "why")
    with pytest.raises(InvalidInput, match="method"):
        d.mark_verified(db, identity.id, "because")
    assert d.set_active(db, b.username, True).active and not d.get_user(db, b.username).needs_activation


def test_member_import_counts_added_and_already_there(db: Any) -> None:
    d = ops(db).directory
    d.create_list(db, "Shop")
    assert d.import_members(db, "Shop", [("A@Example.com", "Ann"), ("b@example.com", "")]) == (2, 0)
    assert d.import_members(db, "Shop", [("a@example.com", "Ann again"), ("c@example.com", "Cy")]) == (1, 1)
    assert d.list_members(db, "Shop") == [("a@example.com", "Ann"), ("b@example.com", ""), ("c@example.com", "Cy")]
    assert d.list_members(db, "Shop", after="a@example.com", limit=1) == [("b@example.com", "")]
    with pytest.raises(InvalidInput, match="row 2"):
        d.import_members(db, "Shop", [("d@example.com", ""), ("not an address", "")])
    assert len(d.list_members(db, "Shop")) == 3  # nothing half-imported


def test_deleting_a_user_or_a_list_keeps_queued_mail(db: Any) -> None:
    d = ops(db).directory
    d.create_list(db, "Shop")
    alice = d.create_user(db, list_name="Shop", password_hash=HASH, username="alice")
    bob = d.create_user(db, list_name="Shop", password_hash=HASH, username="bob")

    def message(user: Any) -> NewMessage:
        return NewMessage(
            mail_from="info@shop.example", recipients=["r1@x.example", "r2@x.example"], data=b"Subject: hi\r\n\r\nbody\r\n",
            list_id=user.list_id, list_name="Shop", user_id=user.id, username=user.username,
        )

    queued = ops(db).intake.insert_messages(db, [message(alice), message(bob)])
    d.delete_user(db, "alice")
    d.delete_list(db, "Shop")  # cascades to bob
    assert d.all_users(db) == []
    rows = db.execute(
        "SELECT queue_id, list_id, list_name, user_id, username, state FROM messages ORDER BY id"
    ).fetchall()
    assert [tuple(r) for r in rows] == [
        (queued[0].queue_id, None, "Shop", None, "alice", "queued"),
        (queued[1].queue_id, None, "Shop", None, "bob", "queued"),
    ]
    assert db.execute("SELECT count(*) FROM recipients").fetchone()[0] == 4
    assert db.execute("SELECT count(*) FROM message_bodies").fetchone()[0] == 2




def test_a_streamed_member_import_keeps_the_first_name_and_counts_repeats(db: Any) -> None:
    d = ops(db).directory
    d.create_list(db, "Shop")
    d.import_members(db, "Shop", [("a@example.com", "Ann")])
    rows = [("a@example.com", "Ann again"), ("b@example.com", "Bo"), ("c@example.com", "Cy"), ("b@example.com", "Bob")]
    result = d.import_member_stream(db, "Shop", iter(rows))
    assert (result.added, result.already, result.repeated) == (2, 1, 1)
    assert d.list_members(db, "Shop") == [("a@example.com", "Ann"), ("b@example.com", "Bo"), ("c@example.com", "Cy")]

    def failing() -> Any:
        yield ("d@example.com", "")
        raise ValueError("row 2: not an address")

    with pytest.raises(ValueError, match="row 2"):
        d.import_member_stream(db, "Shop", failing())
    assert len(d.list_members(db, "Shop")) == 3  # nothing half-imported
    # The scratch table is gone and a second import works.
    assert d.import_member_stream(db, "Shop", iter([("e@example.com", "")])).added == 1
