"""The console's read queries: only what a screen shows, never every row.

Every function here is either a maintained count (:mod:`relay.store.counts`), an
index-backed aggregate over a short range (today, the last seconds) or one page of
rows (``LIMIT``, keyset paging). With 1,000,000 messages queued, a refresh of the
queue screen reads 30 count rows, ten index seeks and one page of rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import default as default_policy

from relay.store.connection import Connection
from relay.store.counts import PRIORITIES, list_queued, oldest_waiting, state_counts
from relay.store.events import Event
from relay.store.queue import (  # noqa: F401 - HEADER_BYTES: the console reads the same cap
    HEADER_BYTES,
    MessageRow,
    RecipientState,
    list_messages,
    read_message,
)
from relay.store.settings import Keys, get_setting
from relay.store.subscriptions import unsubscribed_counts
from relay.store.suppressions import suppressed_per_list

# ---------------------------------------------------------------------------
# The queue: lanes per priority, delivery rate, pages in dispatch order


@dataclass(frozen=True, slots=True)
class Lane:
    """One priority's share of the queue."""

    priority: int
    queued: int = 0
    deferred: int = 0
    sending: int = 0
    held: int = 0
    oldest_at: float | None = None  # creation time of the oldest queued or deferred message

    def oldest_wait(self, now: float) -> float | None:
        return None if self.oldest_at is None else max(0.0, now - self.oldest_at)

    @property
    def waiting(self) -> int:
        return self.queued + self.deferred


def priority_lanes(db: Connection) -> list[Lane]:
    """Counts per priority 1–5 of queued, deferred, in flight (sending) and held
    messages, and when the oldest waiting one arrived.

    The counts are the maintained ones (:mod:`relay.store.counts`: 30 rows, whatever
    the queue's size); the oldest wait is two seeks per priority on the dispatch
    index ``(state, priority, id)``.
    """
    counts = state_counts(db)
    return [
        Lane(
            priority=p,
            queued=counts[("queued", p)],
            deferred=counts[("deferred", p)],
            sending=counts[("sending", p)],
            held=counts[("held", p)],
            oldest_at=oldest_waiting(db, p),
        )
        for p in PRIORITIES
    ]


def delivery_rate(db: Connection, *, now: float | None = None, window: float = 10.0) -> float:
    """Messages delivered per second over the last ``window`` seconds
    (an index range on ``finished_at``: only the last few seconds are read)."""
    stamp = time.time() if now is None else now
    row = db.execute(
        # `state || ''` keeps the planner on the finished_at index (the state index would
        # walk every sent message still retained).
        "SELECT count(*) FROM messages WHERE finished_at >= ? AND state || '' = 'sent'", (stamp - window,)
    ).fetchone()
    return float(row[0]) / window if window > 0 else 0.0


# One read model of the queue: rows and pages come from relay.store.queue (the same
# rows, columns and keyset paging as `smtpplus queue ls`/`show`).
QueueRow = MessageRow
RecipientRow = RecipientState


def queue_page(
    db: Connection,
    state: str = "queued",
    *,
    after: tuple[int, int] | None = None,
    limit: int = 50,
) -> list[MessageRow]:
    """One page of messages in ``state`` in dispatch order (priority, then id);
    ``after`` is the ``dispatch_key`` of the last row of the previous page.
    :func:`relay.store.queue.list_messages` with one state."""
    return list_messages(db, state=state, after=after, limit=limit)


# ---------------------------------------------------------------------------
# One message in full


@dataclass(frozen=True, slots=True)
class MessageDetail:
    """:func:`relay.store.queue.read_message` as the message screen shows it: the
    envelope beside the row, and the header block parsed into fields."""

    message: MessageRow
    header_from: str
    client: str | None
    port: int | None
    updated_at: float
    finished_at: float | None
    lease_owner: str | None
    lease_until: float | None
    recipients: list[RecipientState]
    recipient_count: int
    headers: list[tuple[str, str]]
    events: list[Event] = field(default_factory=list)


def message_detail(
    db: Connection, message_id: int | None = None, *, queue_id: str | None = None, max_recipients: int = 200
) -> MessageDetail | None:
    """Envelope, per-recipient states, the header block, and the event timeline of one
    message (by id or queue id); None when it no longer exists."""
    if message_id is None and queue_id is None:
        raise ValueError("message_detail needs a message id or a queue id")
    detail = read_message(db, message_id=message_id, queue_id=queue_id, max_recipients=max_recipients)
    if detail is None:
        return None
    m = detail.message
    return MessageDetail(
        message=m,
        header_from=m.header_from,
        client=m.client,
        port=m.port,
        updated_at=m.updated_at,
        finished_at=m.finished_at,
        lease_owner=m.lease_owner,
        lease_until=m.lease_until,
        recipients=detail.recipients,
        recipient_count=detail.recipient_count,
        headers=parse_headers(detail.header_bytes + b"\r\n\r\n") if detail.header_bytes else [],
        events=detail.events,
    )


def parse_headers(data: bytes) -> list[tuple[str, str]]:
    """The header fields of a message (RFC 2047 words decoded), in order."""
    end = data.find(b"\r\n\r\n")
    block = data if end < 0 else data[: end + 4]
    try:
        parsed = BytesHeaderParser(policy=default_policy).parsebytes(block)
        return [(name, str(value)) for name, value in parsed.items()]
    except Exception:  # a malformed header must not hide the rest of the detail
        lines = block.decode("utf-8", "replace").splitlines()
        return [tuple(line.split(":", 1)) for line in lines if ":" in line]  # type: ignore[misc]


# ---------------------------------------------------------------------------
# Lists with their numbers


@dataclass(frozen=True, slots=True)
class ListRow:
    id: int
    name: str
    description: str
    users: int
    members: int
    queued: int  # still to deliver: queued, deferred, in flight or held
    delivered_today: int
    refused_today: int
    unsubscribed: int = 0  # members who used their List-Unsubscribe token
    suppressed: int = 0  # members on the suppression list


def list_rows(db: Connection, *, since: float) -> list[ListRow]:
    """Every list with its users, members, mail still queued, and mail delivered
    and refused since ``since`` (the caller's local midnight).

    Mail still queued is the maintained count per list (:mod:`relay.store.counts`);
    today's finished messages and refusals are grouped aggregates through the
    ``finished_at`` and event time indexes (today's rows only).
    """
    queued = list_queued(db)
    delivered = dict(
        db.execute(
            "SELECT list_id, count(*) FROM messages WHERE finished_at >= ? AND state || '' = 'sent' "
            "AND list_id IS NOT NULL GROUP BY list_id",
            (since,),
        ).fetchall()
    )
    refused = dict(
        db.execute(
            "SELECT list_id, count(*) FROM events WHERE at >= ? AND kind = 'refused' AND list_id IS NOT NULL "
            "GROUP BY list_id",
            (since,),
        ).fetchall()
    )
    unsubscribed = unsubscribed_counts(db)
    suppressed = suppressed_per_list(db)
    out = []
    for list_id, name, description, users, members in db.execute(
        "SELECT l.id, l.name, l.description, "
        "(SELECT count(*) FROM users u WHERE u.list_id = l.id), "
        "(SELECT count(*) FROM list_members m WHERE m.list_id = l.id) "
        "FROM lists l ORDER BY l.name"
    ):
        out.append(
            ListRow(
                id=list_id,
                name=name,
                description=description,
                users=users,
                members=members,
                queued=queued.get(list_id, 0),
                delivered_today=delivered.get(list_id, 0),
                refused_today=refused.get(list_id, 0),
                unsubscribed=unsubscribed.get(list_id, 0),
                suppressed=suppressed.get(list_id, 0),
            )
        )
    return out


# ---------------------------------------------------------------------------
# Campaigns


@dataclass(frozen=True, slots=True)
class CampaignRow:
    id: int
    list_name: str
    subject: str
    mail_from: str
    priority: int
    state: str  # scheduled | sending | paused | done | cancelled
    paused_reason: str | None
    scheduled_at: float
    total: int | None  # members when expansion started
    expanded: int
    finished: int  # messages sent or failed
    created_at: float
    finished_at: float | None
    delivery_paused: bool = False  # all delivery is paused (``smtpplus queue pause``)

    @property
    def paused_by_priority(self) -> bool:
        return self.state == "paused" and "priority" in (self.paused_reason or "").lower()

    @property
    def state_label(self) -> str:
        """The label ``smtpplus campaigns ls`` shows too (:func:`relay.campaigns.display_state`)."""
        from relay.campaigns import display_state

        return display_state(self.state, self.paused_reason, delivery_paused=self.delivery_paused)

    @property
    def progress(self) -> float | None:
        """Fraction delivered (sent or failed) of the campaign's messages."""
        if self.state == "done":
            return 1.0
        if not self.total:
            return None
        return min(1.0, self.finished / self.total)


def campaign_rows(db: Connection, *, limit: int = 50) -> list[CampaignRow]:
    """Campaigns still under way first, then the latest finished ones; each with
    how many of its messages are finished (counted only for unfinished campaigns,
    through the campaign index)."""
    rows = db.execute(
        "SELECT id, list_name, subject, mail_from, priority, state, paused_reason, scheduled_at, total, "
        "expanded, created_at, finished_at FROM campaigns "
        "ORDER BY state IN ('done', 'cancelled'), scheduled_at DESC, id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    paused = bool(get_setting(db, Keys.PAUSED, False))
    out = []
    for r in rows:
        finished = 0
        if r[5] not in ("done", "cancelled", "scheduled"):
            finished = int(
                db.execute(
                    "SELECT count(*) FROM messages WHERE campaign_id = ? AND state IN ('sent', 'failed')", (r[0],)
                ).fetchone()[0]
            )
        elif r[5] == "done":
            finished = int(r[8] or 0)
        out.append(
            CampaignRow(
                id=r[0], list_name=r[1], subject=r[2], mail_from=r[3], priority=r[4], state=r[5],
                paused_reason=r[6], scheduled_at=r[7], total=r[8], expanded=r[9], finished=finished,
                created_at=r[10], finished_at=r[11], delivery_paused=paused,
            )
        )
    return out
