"""One group commit of many messages, on every backend: what each message gets
(its id, body, recipients, ``queued`` event) and the maintained counts are the same
in multi-row INSERTs on both backends: more rows than one INSERT carries, more body
bytes than one carries, a group that is not a power of two (SQLite's chunks)."""

from __future__ import annotations

from typing import Any

from relay.store.connection import dialect_of
from relay.store.intake import NewMessage, RecipientDsn
from tests.store_contract.conftest import ops

SENDER = "news@example.com"


def _group(db: Any) -> list[NewMessage]:
    lists = [ops(db).directory.create_list(db, name) for name in ("alpha", "beta")]
    out = []
    for n in range(1203):  # over two full INSERTs of the grouped path
        target = lists[n % 3] if n % 3 < 2 else None
        priority = 1 + n % 5
        size = dialect_of(db).body_bytes_per_insert() + 10 if n == 7 else (1 << 20 if n % 300 == 1 else 64)
        body = (f"Subject: m{n}\r\n\r\n".encode() + bytes([65 + n % 26]) * size)
        recipients = [f"r{n}@example.net", f"R{n}@example.net", f"r{n}@example.net"] if n % 100 == 0 else [f"r{n}@example.net"]
        out.append(NewMessage(
            mail_from=SENDER, recipients=recipients, data=body, priority=priority, header_priority=priority,
            user_priority=priority, subject=f"m{n}", state="held" if n % 7 == 0 else "queued",
            list_id=target.id if target else None, list_name=target.name if target else None,
            recipient_dsn={f"r{n}@example.net": RecipientDsn(notify="SUCCESS,FAILURE", orcpt=f"rfc822;r{n}@example.net")},
        ))
    return out


def test_a_big_group_commit_gives_each_message_its_own_rows(db: Any) -> None:
    messages = _group(db)
    queued = ops(db).intake.insert_messages(db, messages, now=1000.0)

    assert [q.queue_id for q in queued] == [m.queue_id for m in messages]
    by_id = {r[0]: r for r in db.execute("SELECT id, queue_id, size, priority, state, list_id FROM messages")}
    assert len(by_id) == len(messages)
    for q, m in zip(queued, messages, strict=True):
        row = by_id[q.message_id]
        assert (row[1], row[2], row[3], row[4], row[5]) == (m.queue_id, len(m.data), m.priority, m.state, m.list_id)
    for n in (0, 1, 7, 8, 1202):
        body = db.execute("SELECT data FROM message_bodies WHERE message_id = ?", (queued[n].message_id,)).fetchone()[0]
        assert bytes(body) == messages[n].data
    recipients = db.execute(
        "SELECT address, dsn_notify, dsn_orcpt FROM recipients WHERE message_id = ? ORDER BY address",
        (queued[100].message_id,),
    ).fetchall()
    assert [tuple(r) for r in recipients] == [
        ("R100@example.net", None, None), ("r100@example.net", "SUCCESS,FAILURE", "rfc822;r100@example.net"),
    ]
    assert db.execute("SELECT count(*) FROM recipients").fetchone()[0] == len(messages) + 13  # one more each for 0, 100, …, 1200
    events = db.execute("SELECT message_id, queue_id, at FROM events WHERE kind = 'queued'").fetchall()
    assert sorted((e[0], e[1], e[2]) for e in events) == sorted((q.message_id, q.queue_id, 1000.0) for q in queued)
    assert ops(db).counts.differences(db) == []


def test_deleting_many_messages_at_once_keeps_the_counts(db: Any) -> None:
    ops(db).intake.insert_messages(db, _group(db)[:400])
    db.execute("DELETE FROM messages WHERE priority IN (2, 4) OR list_id IS NULL")
    assert ops(db).counts.differences(db) == []
    db.execute("DELETE FROM messages")
    assert ops(db).counts.differences(db) == []


def test_the_dialect_inserts_rows_with_a_tail(db: Any) -> None:
    from relay.store.connection import dialect_of

    insert = dialect_of(db).insert_rows
    assert insert(db, "settings", ("key", "value"), []) == []
    assert insert(db, "settings", ("key", "value"), [("a", "1"), ("b", "2")]) == []
    assert insert(db, "settings", ("key", "value"), [("a", "9"), ("c", "3")], "ON CONFLICT DO NOTHING") == []
    returned = insert(db, "lists", ("name", "created_at"), [("x", 1.0), ("y", 2.0)], "RETURNING id, name")
    assert sorted(r[1] for r in returned) == ["x", "y"] and all(isinstance(r[0], int) for r in returned)
    assert [tuple(r) for r in db.execute("SELECT key, value FROM settings WHERE key IN ('a', 'b', 'c') ORDER BY key")] == [
        ("a", "1"), ("b", "2"), ("c", "3"),
    ]


def test_a_small_group_commit_gives_each_message_its_own_rows(db: Any) -> None:
    # A group that fits one statement (PostgreSQL writes it in one round trip).
    messages = [m for m in _group(db)[:60] if len(m.data) < 1000][:40]
    told = getattr(db, "notified", 0)
    queued = ops(db).intake.insert_messages(db, messages, now=1000.0)
    if db.dialect == "postgresql":
        assert db.notified == told + 1  # one statement, one commit, announced once
    assert [q.queue_id for q in queued] == [m.queue_id for m in messages]
    assert [q.message_id for q in queued] == sorted(q.message_id for q in queued)  # ids in the group's order
    for q, m in zip(queued, messages, strict=True):
        row = db.execute("SELECT queue_id, size, state, list_id FROM messages WHERE id = ?", (q.message_id,)).fetchone()
        assert tuple(row) == (m.queue_id, len(m.data), m.state, m.list_id)
        body = db.execute("SELECT data FROM message_bodies WHERE message_id = ?", (q.message_id,)).fetchone()[0]
        assert bytes(body) == m.data
        recipients = db.execute(
            "SELECT address, dsn_notify FROM recipients WHERE message_id = ? ORDER BY address", (q.message_id,)
        ).fetchall()
        assert sorted(set(m.recipients)) == [r[0] for r in recipients]
    events = db.execute("SELECT message_id, queue_id, at FROM events WHERE kind = 'queued' ORDER BY id").fetchall()
    assert [(e[0], e[1], e[2]) for e in events] == [(q.message_id, q.queue_id, 1000.0) for q in queued]
    assert ops(db).counts.differences(db) == []


def test_a_group_that_fails_writes_nothing_and_the_store_goes_on(db: Any) -> None:
    from relay.store.errors import StoreError

    first = _group(db)[:3]
    ops(db).intake.insert_messages(db, first)
    again = [NewMessage(mail_from=SENDER, recipients=["a@example.net"], data=b"x"), first[1]]  # a queue id taken
    try:
        ops(db).intake.insert_messages(db, again)
    except StoreError:
        pass
    else:
        raise AssertionError("a taken queue id was accepted")
    assert not db.in_transaction
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 3
    ops(db).intake.insert_messages(db, [NewMessage(mail_from=SENDER, recipients=["b@example.net"], data=b"y")])
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 4
    assert ops(db).counts.differences(db) == []


def test_a_group_commit_keeps_every_value_as_given(db: Any) -> None:
    # PostgreSQL sends a group's rows as JSON text: quotes, backslashes, control
    # characters, non-ASCII text, NULLs and a time's every digit come back the same.
    lists = ops(db).directory.create_list(db, "odd \"list\" \\ ünï")
    tricky = "q\"uo'te \\ back\\\\slash\nline\ttab \x01 ü 中文 😀 %s ? $1 ::text"
    stamp = 1764536563.1234567
    messages = [
        NewMessage(
            mail_from="ünï@exämple.com", recipients=["😀@example.net", "b'c@example.net"], data=b"\x00\xff\r\n" * 5,
            subject=tricky, header_from=tricky, list_id=lists.id, list_name=lists.name, username=tricky,
            client=None, port=None, mail_auth="<>", body_type="8BITMIME", smtputf8=True, size_declared=12345678901,
            dsn_ret="HDRS", dsn_envid="id+2B\\x", priority=5, header_priority=1, user_priority=4,
            recipient_dsn={"b'c@example.net": RecipientDsn(notify="NEVER", orcpt="rfc822;b'c+2B@example.net")},
        ),
        NewMessage(mail_from="", recipients=["plain@example.net"], data=b"", origin="system"),
    ]
    queued = ops(db).intake.insert_messages(db, messages, now=stamp)
    columns = (
        "mail_from, subject, header_from, list_id, list_name, username, client, port, mail_auth, body_type, "
        "smtputf8, size_declared, dsn_ret, dsn_envid, priority, header_priority, user_priority, origin, size, "
        "created_at, next_attempt_at"
    )
    for q, m in zip(queued, messages, strict=True):
        row = db.execute(f"SELECT {columns} FROM messages WHERE id = ?", (q.message_id,)).fetchone()
        assert tuple(row) == (
            m.mail_from, m.subject, m.header_from, m.list_id, m.list_name, m.username, m.client, m.port, m.mail_auth,
            m.body_type, int(m.smtputf8), m.size_declared, m.dsn_ret, m.dsn_envid, m.priority, m.header_priority,
            m.user_priority, m.origin, len(m.data), stamp, stamp,
        )
        body = db.execute("SELECT data FROM message_bodies WHERE message_id = ?", (q.message_id,)).fetchone()[0]
        assert bytes(body) == m.data
        recipients = db.execute(
            "SELECT address, dsn_notify, dsn_orcpt FROM recipients WHERE message_id = ? ORDER BY address",
            (q.message_id,),
        ).fetchall()
        dsn = m.recipient_dsn or {}
        assert sorted(tuple(r) for r in recipients) == sorted(
            (a, dsn[a].notify if a in dsn else None, dsn[a].orcpt if a in dsn else None) for a in m.recipients
        )
        event = db.execute(
            "SELECT at, username, list_id, client, port, queue_id FROM events WHERE kind = 'queued' AND message_id = ?",
            (q.message_id,),
        ).fetchone()
        assert tuple(event) == (stamp, m.username, m.list_id, m.client, m.port, m.queue_id)


def test_groups_after_others_and_after_deletes_each_get_fresh_ids(db: Any) -> None:
    """SQLite's group commit picks its ids itself (after the largest, under the write
    lock) instead of reading them back row by row: a group after other groups, after
    a single message and after the newest messages were deleted still gets ids no
    row holds, each tied to its own row and body."""
    messages = _group(db)[:120]
    intake = ops(db).intake
    first = intake.insert_messages(db, messages[:40])
    single = intake.insert_messages(db, messages[40:41])
    db.execute("DELETE FROM messages WHERE id IN (?, ?)", (first[-1].message_id, single[0].message_id))
    second = intake.insert_messages(db, messages[41:])
    kept = [*first[:-1], *second]
    assert len({q.message_id for q in kept}) == len(kept)
    rows = dict(db.execute("SELECT id, queue_id FROM messages").fetchall())
    assert rows == {q.message_id: q.queue_id for q in kept}
    for q, m in zip(second, messages[41:], strict=True):
        body = db.execute("SELECT data FROM message_bodies WHERE message_id = ?", (q.message_id,)).fetchone()[0]
        assert bytes(body) == m.data
    assert ops(db).counts.differences(db) == []
