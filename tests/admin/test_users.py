"""relay.admin.users against a real store file: passwords shown once, stored hashed."""

from __future__ import annotations

from typing import Any

import pytest

from relay.admin import users as user_admin
from relay.passwords import verify_password
from relay.store import directory
from relay.store.errors import AlreadyExists, NotFound


def _hash(db: Any, username: str) -> str:
    record = directory.auth_record(db, username)
    assert record is not None
    return record.password_hash


def test_create_user_returns_a_generated_password_that_only_its_hash_is_stored(listed: Any) -> None:
    made = user_admin.create_user(listed, list_name="News", domains=["example.com"])
    assert made.username == "news-1" and not made.user.active
    assert len(made.password) >= 32
    stored = _hash(listed, made.username)
    assert made.password not in stored and stored.startswith("$argon2id$")
    assert verify_password(stored, made.password)
    # repr (logs, tracebacks) never carries the password.
    assert made.password not in repr(made)


def test_two_users_get_different_passwords(listed: Any) -> None:
    first = user_admin.create_user(listed, list_name="News")
    second = user_admin.create_user(listed, list_name="News")
    assert (first.username, second.username) == ("news-1", "news-2")
    assert first.password != second.password


def test_given_credentials_are_used_as_they_are(listed: Any) -> None:
    credentials = user_admin.new_credentials("fixed-bench-password")
    assert "fixed-bench-password" not in repr(credentials)
    made = user_admin.create_user(listed, list_name="News", username="bench", credentials=credentials, active=True)
    assert made.password == "fixed-bench-password" and made.user.active
    assert verify_password(_hash(listed, "bench"), "fixed-bench-password")


def test_a_taken_username_and_a_missing_list_are_refused(listed: Any) -> None:
    user_admin.create_user(listed, list_name="News", username="alice")
    with pytest.raises(AlreadyExists, match="pick another username"):
        user_admin.create_user(listed, list_name="News", username="alice")
    with pytest.raises(NotFound, match="no list named"):
        user_admin.create_user(listed, list_name="Nope")


def test_reset_password_replaces_the_old_one_and_bumps_the_auth_version(listed: Any) -> None:
    made = user_admin.create_user(listed, list_name="News", username="alice")
    before = directory.auth_version(listed, "alice")
    fresh = user_admin.reset_password(listed, "alice")
    assert fresh.username == "alice" and fresh.password != made.password
    stored = _hash(listed, "alice")
    assert verify_password(stored, fresh.password) and not verify_password(stored, made.password)
    assert (directory.auth_version(listed, "alice") or 0) > (before or 0)
    assert fresh.password not in repr(fresh)


def test_reset_password_of_an_unknown_user_changes_nothing(listed: Any) -> None:
    with pytest.raises(NotFound, match="no relay user 'ghost'"):
        user_admin.reset_password(listed, "ghost")


def test_nudges_say_what_to_do_next(listed: Any) -> None:
    bare = user_admin.create_user(listed, list_name="News", username="bare", priority=1)
    assert [n.kind for n in bare.nudges()] == ["no-identities", "priority-one"]
    assert "smtpplus users edit bare" in bare.nudges()[0].text

    waiting = user_admin.create_user(listed, list_name="News", username="waiting", senders=["a@example.com"])
    (pending,) = waiting.nudges()
    assert pending.kind == "pending" and "a@example.com" in pending.text

    directory.approve_identities(listed, ["a@example.com"], "test")
    verified = directory.get_user(listed, "waiting")
    (activate,) = user_admin.nudges(verified)
    assert activate.kind == "activate"
    assert activate.text.endswith("smtpplus users activate waiting")

    active = user_admin.set_active(listed, "waiting", True)
    assert active.active and user_admin.nudges(active) == []
    assert user_admin.activation_warnings(active) == []


def test_each_surface_brings_its_own_words(listed: Any) -> None:
    made = user_admin.create_user(listed, list_name="News", username="w", senders=["b@example.com"])
    words = user_admin.NudgeWords(
        activate="activate {user}", no_identities="none for {user}", pending="wait for {pending}", priority_one="p1"
    )
    assert [n.text for n in user_admin.nudges(made.user, words)] == ["wait for b@example.com"]


def test_activation_warnings_name_pending_identities_or_none(listed: Any) -> None:
    user_admin.create_user(listed, list_name="News", username="bare")
    bare = user_admin.set_active(listed, "bare", True)
    assert user_admin.activation_warnings(bare) == [
        "bare has no authorized domains or senders, so it cannot send as anyone"
    ]
    user_admin.create_user(listed, list_name="News", username="pend", senders=["c@example.com"])
    (warning,) = user_admin.activation_warnings(user_admin.set_active(listed, "pend", True))
    assert warning.startswith("not verified yet: c@example.com")
