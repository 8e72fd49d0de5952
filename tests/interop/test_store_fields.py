"""The envelope parameters a client declared: stored with the message (schema v3,
upgraded in place from v2) and handed to delivery with each claim."""

from __future__ import annotations

from pathlib import Path

from relay.store import open_store
from relay.store import queue as q
from relay.store.intake import NewMessage, RecipientDsn, insert_messages


def claim_all(db: object) -> list[q.Claimed]:
    q.set_next_hop(db, "127.0.0.1:25")  # type: ignore[arg-type]
    request = q.RoundRequest(owner="t", lease_seconds=60, budget=10, hop="127.0.0.1:25", outcomes=[], force=True)
    return q.dispatch_round(db, request).claimed  # type: ignore[arg-type]


def test_a_v2_store_is_upgraded_and_old_messages_keep_todays_behaviour(store_path: Path) -> None:
    old = open_store(store_path, migrate_to=2)
    with old:  # a message as a v2 relay queued it
        old.execute(
            "INSERT INTO messages(id, queue_id, origin, mail_from, size, header_priority, user_priority, priority, "
            "next_attempt_at, created_at, updated_at) VALUES (1, 'OLD1', 'smtp', 'a@example.com', 20, 3, 3, 3, 0, 0, 0)"
        )
        old.execute("INSERT INTO message_bodies(message_id, data) VALUES (1, ?)", (b"Subject: x\r\n\r\nb\r\n",))
        old.execute("INSERT INTO recipients(message_id, address) VALUES (1, 'b@example.net')")
    old.close()
    db = open_store(store_path)
    try:
        [claimed] = claim_all(db)
        assert (claimed.mail_auth, claimed.body_type, claimed.smtputf8, claimed.size_declared) == (None, None, False, None)
        assert (claimed.dsn_ret, claimed.dsn_envid, claimed.recipient_dsn) == (None, None, {})
    finally:
        db.close()


def test_declared_parameters_are_stored_and_claimed_with_the_message(db: object) -> None:
    message = NewMessage(
        mail_from="ann@example.com", recipients=["bob@example.net", "cy@example.net", "dee@example.net"],
        data=b"Subject: x\r\n\r\nb\r\n", mail_auth="ann@example.com", body_type="8BITMIME", smtputf8=True,
        size_declared=1234, dsn_ret="HDRS", dsn_envid="QQ+2B1",
        recipient_dsn={
            "bob@example.net": RecipientDsn("SUCCESS,FAILURE", "rfc822;bob@example.net"),
            "cy@example.net": RecipientDsn("NEVER"),
        },
    )
    insert_messages(db, [message])  # type: ignore[arg-type]
    [claimed] = claim_all(db)
    assert (claimed.mail_auth, claimed.body_type, claimed.smtputf8, claimed.size_declared) == (
        "ann@example.com", "8BITMIME", True, 1234,
    )
    assert (claimed.dsn_ret, claimed.dsn_envid) == ("HDRS", "QQ+2B1")
    assert claimed.recipient_dsn == {
        "bob@example.net": RecipientDsn("SUCCESS,FAILURE", "rfc822;bob@example.net"),
        "cy@example.net": RecipientDsn("NEVER", None),
    }
