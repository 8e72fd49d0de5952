"""Putting messages into the queue: SMTP intake (group-committed by the relay's
writer), campaign expansion and system mail (bounces, verification codes)."""

from __future__ import annotations

import base64
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.reasons import EventKind, Reason
from relay.store.db import transaction


def new_queue_id() -> str:
    """12 characters of base32 randomness (60 bits): unique across relays and nodes."""
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii")[:12]


@dataclass(slots=True)
class NewMessage:
    mail_from: str
    recipients: Sequence[str]
    data: bytes
    origin: str = "smtp"  # 'smtp' | 'campaign' | 'system'
    header_priority: int = 3
    user_priority: int = 3
    priority: int = 3
    header_from: str = ""
    subject: str = ""
    list_id: int | None = None
    list_name: str | None = None
    user_id: int | None = None
    username: str | None = None
    campaign_id: int | None = None
    client: str | None = None
    port: int | None = None
    queue_id: str = field(default_factory=new_queue_id)
    state: str = "queued"
    not_before: float | None = None  # earliest delivery time (scheduled mail)


@dataclass(frozen=True, slots=True)
class Queued:
    message_id: int
    queue_id: str


def insert_messages(db: sqlite3.Connection, messages: Sequence[NewMessage], *, now: float | None = None) -> list[Queued]:
    """Insert messages, their bodies, recipients and a ``queued`` event each, in one
    transaction (joins the caller's transaction when there is one)."""
    stamp = time.time() if now is None else now
    out: list[Queued] = []
    with transaction(db):
        for m in messages:
            cur = db.execute(
                "INSERT INTO messages(queue_id, list_id, list_name, user_id, username, origin, campaign_id, "
                "mail_from, header_from, subject, size, header_priority, user_priority, priority, state, "
                "next_attempt_at, client, port, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    m.queue_id, m.list_id, m.list_name, m.user_id, m.username, m.origin, m.campaign_id,
                    m.mail_from, m.header_from, m.subject, len(m.data), m.header_priority, m.user_priority,
                    m.priority, m.state, m.not_before if m.not_before is not None else stamp,
                    m.client, m.port, stamp, stamp,
                ),
            )
            message_id = int(cur.lastrowid or 0)
            db.execute("INSERT INTO message_bodies(message_id, data) VALUES (?, ?)", (message_id, m.data))
            db.executemany(
                "INSERT OR IGNORE INTO recipients(message_id, address) VALUES (?, ?)",
                [(message_id, r) for r in m.recipients],
            )
            db.execute(
                "INSERT INTO events(at, kind, reason, username, list_id, client, port, message_id, queue_id, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stamp, str(EventKind.QUEUED), str(Reason.ACCEPTED), m.username, m.list_id, m.client, m.port,
                    message_id, m.queue_id,
                    f"{m.origin} from {m.mail_from or '<>'} to {len(m.recipients)} recipient(s), "
                    f"priority {m.priority} (header {m.header_priority}, user {m.user_priority})",
                ),
            )
            out.append(Queued(message_id, m.queue_id))
    return out


def count_messages(db: sqlite3.Connection, origin: str | None = None) -> int:
    """How many messages the store holds (of one origin), whatever their state."""
    if origin is None:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    return int(db.execute("SELECT count(*) FROM messages WHERE origin = ?", (origin,)).fetchone()[0])
