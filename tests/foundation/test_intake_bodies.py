"""Message bodies go into the store whole and exact, whether bytes or a spool's mmap,
small (one INSERT) or over 1 MiB (zeroblob, then incremental blob writes in pieces)."""

from __future__ import annotations

import mmap
import sqlite3
from pathlib import Path

import pytest

from relay.store.errors import Conflict
from relay.store.intake import NewMessage, insert_messages
from relay.store.sqlite.dialect import BODY_CHUNK


def _body(size: int) -> bytes:
    # Every piece differs, so a piece written twice or out of place shows.
    line = b"".join(b"%07d\r\n" % n for n in range(size // 9 + 1))
    return line[:size]


def _stored(db: sqlite3.Connection, message_id: int) -> bytes:
    return bytes(db.execute("SELECT data FROM message_bodies WHERE message_id = ?", (message_id,)).fetchone()[0])


@pytest.mark.parametrize("size", [0, 10, BODY_CHUNK, BODY_CHUNK + 1, 3 * BODY_CHUNK + 12345])
def test_bytes_bodies_of_every_size_round_trip(db: sqlite3.Connection, size: int) -> None:
    data = _body(size)
    [queued] = insert_messages(db, [NewMessage(mail_from="a@b.example", recipients=["r@d.example"], data=data)])
    assert _stored(db, queued.message_id) == data
    size_column = db.execute("SELECT size FROM messages WHERE id = ?", (queued.message_id,)).fetchone()[0]
    assert size_column == size


@pytest.mark.parametrize("size", [100, 2 * BODY_CHUNK + 7])
def test_an_mmap_body_is_stored_and_its_map_can_close(db: sqlite3.Connection, tmp_path: Path, size: int) -> None:
    data = _body(size)
    spool = tmp_path / "spool"
    spool.write_bytes(data)
    with spool.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    # Several messages in one transaction (the writer's group commit), the big one between.
    def message(data: bytes | mmap.mmap) -> NewMessage:
        return NewMessage(mail_from="a@b.example", recipients=["r@d.example"], data=data)

    queued = insert_messages(db, [message(b"small"), message(mapped), message(b"small")])
    mapped.close()  # nothing still holds a view of the spool's map
    assert [_stored(db, q.message_id) for q in queued] == [b"small", data, b"small"]


def test_a_failed_transaction_leaves_no_half_written_body(db: sqlite3.Connection) -> None:
    good = NewMessage(mail_from="a@b.example", recipients=["r@d.example"], data=_body(2 * BODY_CHUNK))
    bad = NewMessage(mail_from="a@b.example", recipients=["r@d.example"], data=b"x", queue_id=good.queue_id)
    with pytest.raises(Conflict):  # the store's own error, translated at its edge
        insert_messages(db, [good, bad])  # the same queue id twice: the whole batch rolls back
    assert db.execute("SELECT count(*) FROM message_bodies").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
