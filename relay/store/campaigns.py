"""Campaigns: a message from the console to every member of a list.

Operators: :func:`insert_campaign` (through :func:`relay.admin.campaigns.create_campaign`,
which checks the sender), :func:`list_campaigns`, :func:`get_campaign`,
:func:`pause_campaign`, :func:`resume_campaign`, :func:`cancel_campaign`.
The relay's engine: :func:`start_due_campaigns`, :func:`expandable_campaigns`,
:func:`expand_batch`, :func:`finish_campaigns`.

A campaign sends only as verified sender identities: its envelope sender and
every address in its ``From:``/``Sender:`` must be covered by a verified identity
(the exact address, or exactly its domain) — the rule the relay applies to users.

Expansion inserts one message per member in batches (a keyset cursor on the member
address, saved with each batch), so a 100,000-member list never blocks the relay
and a crash resumes where the last committed batch ended. Preemption by priority
traffic ("paused: priority traffic") is decided where messages are claimed
(:mod:`relay.store.queue`).
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

from relay.priority import header_priority
from relay.reasons import EventKind, Reason
from relay.store.connection import Connection, Row, insert_id, transaction
from relay.store.directory import ListInfo
from relay.store.errors import InvalidInput, NotFound
from relay.store.events import NewEvent, record_event, record_events
from relay.store.intake import NewMessage, insert_messages, new_queue_id
from relay.store.settings import Keys, get_setting
from relay.store.subscriptions import batch_subscriptions, list_settings, token_secret
from relay.store.suppressions import canonical, suppressed_among
from relay.unsubscribe import header_lines, make_token

EXPAND_BATCH = 500

_COLUMNS = (
    "c.id, c.list_id, c.list_name, c.subject, c.mail_from, c.priority, c.state, c.paused_reason, "
    "c.scheduled_at, c.expanded, c.expand_done, c.total, c.created_at, c.finished_at, c.skipped"
)


@dataclass(frozen=True, slots=True)
class CampaignInfo:
    id: int
    list_id: int | None
    list_name: str
    subject: str
    mail_from: str
    priority: int
    state: str  # scheduled | sending | paused | done | cancelled
    paused_reason: str | None  # 'priority' (preempted) | 'operator'
    scheduled_at: float
    expanded: int  # messages created so far
    expand_done: bool
    total: int | None  # members when created (the final count once expanded)
    created_at: float
    finished_at: float | None
    sent: int = 0
    failed: int = 0
    pending: int = 0  # queued, sending, deferred or held
    delivery_paused: bool = False  # all delivery is paused (``smtpplus queue pause``)
    skipped: int = 0  # members given no message: unsubscribed or suppressed

    @property
    def display_state(self) -> str:
        """What operators see (:func:`relay.campaigns.display_state`, the one rule)."""
        from relay.campaigns import display_state  # relay.campaigns imports this module

        return display_state(self.state, self.paused_reason, delivery_paused=self.delivery_paused)


def _delivery_paused(db: Connection) -> bool:
    return bool(get_setting(db, Keys.PAUSED, False))


def _info(db: Connection, row: Row, delivery_paused: bool | None = None) -> CampaignInfo:
    counts = dict(
        db.execute(
            "SELECT state, count(*) FROM messages WHERE campaign_id = ? GROUP BY state", (row[0],)
        ).fetchall()
    )
    pending = sum(counts.get(s, 0) for s in ("queued", "sending", "deferred", "held"))
    return CampaignInfo(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], bool(row[10]), row[11],
        row[12], row[13], counts.get("sent", 0), counts.get("failed", 0), pending,
        _delivery_paused(db) if delivery_paused is None else delivery_paused, row[14],
    )


def get_campaign(db: Connection, campaign_id: int) -> CampaignInfo:
    row = db.execute(f"SELECT {_COLUMNS} FROM campaigns c WHERE c.id = ?", (int(campaign_id),)).fetchone()
    if row is None:
        raise NotFound(f"no campaign {campaign_id} — see `smtpplus campaigns ls`")
    return _info(db, row)


def list_campaigns(db: Connection, *, limit: int = 200) -> list[CampaignInfo]:
    """Newest first, with progress counts."""
    rows = db.execute(f"SELECT {_COLUMNS} FROM campaigns c ORDER BY c.id DESC LIMIT ?", (limit,)).fetchall()
    paused = _delivery_paused(db)
    return [_info(db, r, paused) for r in rows]


def insert_campaign(
    db: Connection,
    target: ListInfo,
    *,
    subject: str,
    template: bytes,
    mail_from: str,
    scheduled_at: float,
    priority: int,
    now: float,
) -> CampaignInfo:
    """Write a scheduled campaign and its ``campaign-created`` event. The checks (a
    list with members, verified senders, the template) are
    :func:`relay.admin.campaigns.create_campaign`'s; callers go through it."""
    with transaction(db):
        campaign_id = insert_id(
            db,
            "INSERT INTO campaigns(list_id, list_name, subject, mail_from, body, priority, state, "
            "scheduled_at, total, created_at) VALUES (?, ?, ?, ?, ?, ?, 'scheduled', ?, ?, ?)",
            (target.id, target.name, subject, mail_from, template, priority, scheduled_at, target.members, now),
        )
        record_event(
            db,
            NewEvent(
                EventKind.CAMPAIGN, Reason.CAMPAIGN_CREATED, list_id=target.id, at=now,
                detail=f"campaign {campaign_id} to list {target.name} ({target.members} members), "
                f"priority {priority}, subject {subject!r}",
            ),
        )
    return get_campaign(db, campaign_id)


def _campaign_event(db: Connection, info: CampaignInfo, reason: Reason, detail: str, now: float) -> None:
    record_event(
        db,
        NewEvent(EventKind.CAMPAIGN, reason, list_id=info.list_id, at=now, detail=f"campaign {info.id} {detail}"),
    )


def pause_campaign(db: Connection, campaign_id: int, *, now: float | None = None) -> CampaignInfo:
    """An operator's pause: its waiting messages are held until resumed."""
    stamp = time.time() if now is None else now
    with transaction(db):
        info = get_campaign(db, campaign_id)
        if info.state in ("done", "cancelled"):
            raise InvalidInput(f"campaign {info.id} is {info.state} — nothing to pause")
        if info.state == "paused" and info.paused_reason == "operator":
            return info
        db.execute("UPDATE campaigns SET state = 'paused', paused_reason = 'operator' WHERE id = ?", (info.id,))
        held = db.execute(
            "UPDATE messages SET state = 'held', updated_at = ? WHERE campaign_id = ? AND state IN ('queued', 'deferred')",
            (stamp, info.id),
        ).rowcount
        _campaign_event(db, info, Reason.CAMPAIGN_PAUSED, f"paused by an operator ({held} message(s) held)", stamp)
    return get_campaign(db, campaign_id)


def resume_campaign(db: Connection, campaign_id: int, *, now: float | None = None) -> CampaignInfo:
    """Undo an operator's pause: held messages of the campaign are ready again."""
    stamp = time.time() if now is None else now
    with transaction(db):
        info = get_campaign(db, campaign_id)
        if info.state != "paused":
            raise InvalidInput(f"campaign {info.id} is {info.display_state}, not paused")
        if info.paused_reason != "operator":
            return info  # preempted: it resumes by itself
        started = info.expanded + info.skipped > 0 or info.scheduled_at <= stamp
        db.execute(
            "UPDATE campaigns SET state = ?, paused_reason = NULL WHERE id = ?",
            ("sending" if started else "scheduled", info.id),
        )
        released = db.execute(
            "UPDATE messages SET state = 'queued', next_attempt_at = ?, updated_at = ? "
            "WHERE campaign_id = ? AND state = 'held'",
            (stamp, stamp, info.id),
        ).rowcount
        _campaign_event(db, info, Reason.CAMPAIGN_RESUMED, f"resumed by an operator ({released} message(s) released)", stamp)
    return get_campaign(db, campaign_id)


def cancel_campaign(db: Connection, campaign_id: int, *, now: float | None = None) -> CampaignInfo:
    """Stop a campaign for good: messages not yet sent are removed (those being
    sent right now finish); what was sent stays sent."""
    stamp = time.time() if now is None else now
    with transaction(db):
        info = get_campaign(db, campaign_id)
        if info.state in ("done", "cancelled"):
            raise InvalidInput(f"campaign {info.id} is already {info.state}")
        removed = db.execute(
            "DELETE FROM messages WHERE campaign_id = ? AND state IN ('queued', 'deferred', 'held')", (info.id,)
        ).rowcount
        db.execute(
            "UPDATE campaigns SET state = 'cancelled', paused_reason = NULL, finished_at = ? WHERE id = ?",
            (stamp, info.id),
        )
        _campaign_event(db, info, Reason.CAMPAIGN_CANCELLED, f"cancelled by an operator ({removed} unsent message(s) removed)", stamp)
    return get_campaign(db, campaign_id)


# ---------------------------------------------------------------------------
# The engine's side


def start_due_campaigns(db: Connection, *, now: float | None = None) -> list[int]:
    """Scheduled campaigns whose time has come start sending; returns their ids."""
    stamp = time.time() if now is None else now
    due = db.execute("SELECT 1 FROM campaigns WHERE state = 'scheduled' AND scheduled_at <= ? LIMIT 1", (stamp,)).fetchone()
    if due is None:
        return []  # the common case, without taking the write lock
    with transaction(db):
        rows = db.execute(
            "UPDATE campaigns SET state = 'sending' WHERE state = 'scheduled' AND scheduled_at <= ? "
            "RETURNING id, list_id, list_name, total",
            (stamp,),
        ).fetchall()
        for campaign_id, list_id, list_name, total in rows:
            record_event(
                db,
                NewEvent(
                    EventKind.CAMPAIGN, Reason.CAMPAIGN_STARTED, list_id=list_id, at=stamp,
                    detail=f"campaign {campaign_id} started: {total} member(s) of list {list_name}",
                ),
            )
    return [r[0] for r in rows]


def next_scheduled_at(db: Connection) -> float | None:
    row = db.execute("SELECT min(scheduled_at) FROM campaigns WHERE state = 'scheduled'").fetchone()
    return row[0]


def expandable_campaigns(db: Connection) -> list[int]:
    """Started campaigns with members still to turn into messages, oldest first."""
    rows = db.execute(
        "SELECT id FROM campaigns WHERE state IN ('sending', 'paused') AND expand_done = 0 ORDER BY id"
    ).fetchall()
    return [r[0] for r in rows]


def personalize(template: bytes, address: str, name: str, queue_id: str, server_name: str, extra: bytes = b"") -> bytes:
    """The template with this member's ``To:``, a unique ``Message-ID:`` and ``extra``
    header lines (List-Unsubscribe) prepended."""
    to = email.utils.formataddr((name, address)) if name else address
    if any(ord(c) > 127 for c in to) or "\r" in to or "\n" in to:
        to = address  # a display name that would need encoding is left out rather than mangled
    return f"To: {to}\r\nMessage-ID: <{queue_id}@{server_name}>\r\n".encode() + extra + template


def header_priority_of(data: bytes) -> int:
    """The header priority of a message, read exactly as the SMTP path reads it (the
    same header section, the same field splitting, the same rule): a campaign and a
    relayed message with the same headers always get the same priority."""
    from relay.message import header_section, split_headers

    return header_priority(split_headers(header_section(data)))


def expand_batch(
    db: Connection,
    campaign_id: int,
    *,
    batch: int = EXPAND_BATCH,
    server_name: str = "localhost",
    now: float | None = None,
) -> int:
    """Turn the next ``batch`` members into queued messages in one transaction and
    move the cursor; returns how many were created (0 once the list is exhausted,
    which also marks the expansion complete)."""
    stamp = time.time() if now is None else now
    with transaction(db):
        row = db.execute(
            "SELECT id, list_id, list_name, subject, mail_from, body, priority, state, paused_reason, "
            "expand_cursor, expand_done FROM campaigns WHERE id = ?",
            (campaign_id,),
        ).fetchone()
        if row is None or row["expand_done"] or row["state"] not in ("sending", "paused"):
            return 0
        members: list[tuple[str, str]] = []
        if row["list_id"] is not None:
            members = [
                (r[0], r[1])
                for r in db.execute(
                    "SELECT address, name FROM list_members WHERE list_id = ? AND address > ? ORDER BY address LIMIT ?",
                    (row["list_id"], row["expand_cursor"] or "", batch),
                )
            ]
        if not members:
            db.execute(
                "UPDATE campaigns SET expand_done = 1, total = expanded WHERE id = ?", (campaign_id,)
            )
            return 0
        template = bytes(row["body"])
        header_priority = header_priority_of(template)
        held = row["state"] == "paused" and row["paused_reason"] == "operator"
        # Unsubscribes and suppressions are read here, when the member's message is made:
        # one that came after the campaign was created still counts.
        addresses = [address for address, _ in members]
        subscriptions = batch_subscriptions(db, row["list_id"], addresses)
        suppressed = suppressed_among(db, addresses)
        unsubscribe = list_settings(db, row["list_id"])
        secret = token_secret(db) if unsubscribe.configured else b""
        messages = []
        skips: list[NewEvent] = []
        for address, name in members:
            subscription_id, unsubscribed = subscriptions[address]
            skip = (
                Reason.CAMPAIGN_SKIPPED_UNSUBSCRIBED if unsubscribed
                else Reason.CAMPAIGN_SKIPPED_SUPPRESSED if canonical(address) in suppressed
                else None
            )
            if skip is not None:
                why = "unsubscribed" if unsubscribed else "suppressed"
                skips.append(
                    NewEvent(
                        EventKind.CAMPAIGN, skip, list_id=row["list_id"], at=stamp,
                        detail=f"campaign {campaign_id}: no message to {address} ({why})",
                    )
                )
                continue
            extra = b""
            if unsubscribe.configured:
                token = make_token(secret, subscription_id, row["list_id"], address)
                extra = header_lines(unsubscribe, token)
            queue_id = new_queue_id()
            messages.append(
                NewMessage(
                    mail_from=row["mail_from"],
                    recipients=[address],
                    data=personalize(template, address, name, queue_id, server_name, extra),
                    origin="campaign",
                    header_priority=header_priority,
                    user_priority=row["priority"],
                    priority=row["priority"],
                    header_from=row["mail_from"],
                    subject=row["subject"],
                    list_id=row["list_id"],
                    list_name=row["list_name"],
                    campaign_id=campaign_id,
                    queue_id=queue_id,
                    state="held" if held else "queued",
                )
            )
        if skips:
            record_events(db, skips)
        if messages:
            insert_messages(db, messages, now=stamp)
        db.execute(
            "UPDATE campaigns SET expand_cursor = ?, expanded = expanded + ?, skipped = skipped + ? WHERE id = ?",
            (members[-1][0], len(messages), len(skips), campaign_id),
        )
    # Members handled (messages made or skipped): 0 only once the list is exhausted.
    return len(members)


def finish_campaigns(db: Connection, *, now: float | None = None) -> list[int]:
    """Campaigns fully expanded with nothing left to deliver become ``done``."""
    stamp = time.time() if now is None else now
    finished: list[int] = []
    candidates = db.execute(
        "SELECT id, list_id, expanded FROM campaigns WHERE state IN ('sending', 'paused') AND expand_done = 1"
    ).fetchall()
    for campaign_id, list_id, expanded in candidates:
        pending = db.execute(
            "SELECT 1 FROM messages WHERE campaign_id = ? AND state IN ('queued', 'sending', 'deferred', 'held') LIMIT 1",
            (campaign_id,),
        ).fetchone()
        if pending is not None:
            continue
        with transaction(db):
            cur = db.execute(
                "UPDATE campaigns SET state = 'done', paused_reason = NULL, finished_at = ? "
                "WHERE id = ? AND state IN ('sending', 'paused')",
                (stamp, campaign_id),
            )
            if cur.rowcount:
                sent = db.execute(
                    "SELECT count(*) FROM messages WHERE campaign_id = ? AND state = 'sent'", (campaign_id,)
                ).fetchone()[0]
                record_event(
                    db,
                    NewEvent(
                        EventKind.CAMPAIGN, Reason.CAMPAIGN_DONE, list_id=list_id, at=stamp,
                        detail=f"campaign {campaign_id} done: {sent} of {expanded} message(s) sent",
                    ),
                )
                finished.append(campaign_id)
    return finished
