"""Putting messages into the queue: SMTP intake (group-committed by the relay's
writer), campaign expansion and system mail (bounces, verification codes)."""

from __future__ import annotations

import mmap
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from relay.reasons import EventKind, Reason
from relay.store.connection import Connection, dialect_of, insert_id, transaction
from relay.store.events import EVENT_COLUMNS

# Base32's 32 characters in ASCII order, so that ids compare (bytewise, as the
# stores' indexes do) in the order of the numbers they encode.
_ALPHABET = "234567ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_TIME_BITS = 34  # microseconds: the time part starts again at 0 every 4.8 hours
_TIME_MASK = (1 << _TIME_BITS) - 1
_RANDOM_BITS = 60 - _TIME_BITS
_last_time = 0
_time_lock = threading.Lock()
# The random part needs no secrecy (a queue id names a message, it grants nothing), only
# independence between processes: seeded from the OS at start and again in a forked
# child. secrets.randbits asked the OS's generator for each id (0.67 against 0.06 µs).
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)


def new_queue_id() -> str:
    """12 characters of base32 (60 bits): the time in microseconds, modulo 4.8 hours
    (34 bits), then 26 random bits. Ids made close together sort together.

    Why: the stores keep a unique index on the queue id. Fully random ids put each
    new one on a random page of that index, so a group commit of ten messages wrote
    about ten index pages (SQLite: to the WAL, read back in as the store grew). Ids
    made in the same moment now land on the same page — after the wrap too, since
    the mail of earlier rounds spreads thinly over the whole range.

    Unique: within a process the time part only ever grows (a clock that stands
    still or steps back gets the last value + 1). An id can match one already
    stored only if it has the same time part and the same random bits: the same
    odds as 60 random bits (one in 2^60 per stored id). Two processes making ids at
    the same moment (relays sharing a PostgreSQL store) clash on the same
    microsecond with the same 26 random bits: at 5,000 messages a second on each of
    two relays, about once a month; the clash costs that one message a 451 (the
    unique index refuses it) and its client sends it again. About 1 µs each."""
    global _last_time
    with _time_lock:
        now = time.time_ns() // 1000 & _TIME_MASK
        # Ahead of the clock only while ids come faster than one a microsecond.
        if now <= _last_time and _last_time - now < 1 << (_TIME_BITS - 1):
            now = _last_time + 1 & _TIME_MASK
        _last_time = now
    n = now << _RANDOM_BITS | _random.getrandbits(_RANDOM_BITS)
    pairs = _PAIRS
    return (
        pairs[n >> 50] + pairs[(n >> 40) & 1023] + pairs[(n >> 30) & 1023]
        + pairs[(n >> 20) & 1023] + pairs[(n >> 10) & 1023] + pairs[n & 1023]
    )


@dataclass(frozen=True, slots=True)
class RecipientDsn:
    """A recipient's RFC 3461 parameters: ``notify`` is ``"NEVER"`` or a comma list of
    ``SUCCESS``/``FAILURE``/``DELAY`` (None = not given: failures only); ``orcpt`` is the
    ORCPT value as given (``rfc822;ann@example.com``, xtext kept encoded)."""

    notify: str | None = None
    orcpt: str | None = None


@dataclass(slots=True)
class NewMessage:
    mail_from: str
    recipients: Sequence[str]
    data: bytes | mmap.mmap  # a spooled SMTP message is an mmap of its spool file: never copied whole
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
    # What the client declared on MAIL/RCPT (None/False = not declared).
    mail_auth: str | None = None  # RFC 4954 AUTH= value ("<>" or an address)
    body_type: str | None = None  # "7BIT" | "8BITMIME" (RFC 6152)
    smtputf8: bool = False  # RFC 6531: the envelope or headers need SMTPUTF8
    size_declared: int | None = None  # RFC 1870 SIZE=
    dsn_ret: str | None = None  # RFC 3461 RET=: "FULL" | "HDRS"
    dsn_envid: str | None = None  # RFC 3461 ENVID= (xtext as given)
    recipient_dsn: Mapping[str, RecipientDsn] | None = None  # NOTIFY=/ORCPT= per recipient


@dataclass(frozen=True, slots=True)
class Queued:
    message_id: int
    queue_id: str


def insert_messages(db: Connection, messages: Sequence[NewMessage], *, now: float | None = None) -> list[Queued]:
    """Insert messages, their bodies, recipients and a ``queued`` event each, in one
    transaction (joins the caller's transaction when there is one)."""
    stamp = time.time() if now is None else now
    out: list[Queued] = []
    dialect = dialect_of(db)
    rows_per_insert = dialect.rows_per_insert()
    if dialect.group_statement() and messages and len(messages) <= rows_per_insert:
        at_once = _insert_at_once(db, messages, stamp)
        if at_once is not None:
            return at_once
    with transaction(db):
        if rows_per_insert > 1:
            return _insert_grouped(db, messages, stamp, rows_per_insert)
        for m in messages:
            message_id = insert_id(
                db,
                "INSERT INTO messages(queue_id, list_id, list_name, user_id, username, origin, campaign_id, "
                "mail_from, header_from, subject, size, header_priority, user_priority, priority, state, "
                "next_attempt_at, client, port, created_at, updated_at, mail_auth, body_type, smtputf8, "
                "size_declared, dsn_ret, dsn_envid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    m.queue_id, m.list_id, m.list_name, m.user_id, m.username, m.origin, m.campaign_id,
                    m.mail_from, m.header_from, m.subject, len(m.data), m.header_priority, m.user_priority,
                    m.priority, m.state, m.not_before if m.not_before is not None else stamp,
                    m.client, m.port, stamp, stamp, m.mail_auth, m.body_type, int(bool(m.smtputf8)),
                    m.size_declared, m.dsn_ret, m.dsn_envid,
                ),
            )
            dialect_of(db).write_body(db, message_id, m.data)
            dsn = m.recipient_dsn or {}
            db.executemany(
                "INSERT INTO recipients(message_id, address, dsn_notify, dsn_orcpt) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(message_id, r, *_dsn_row(dsn.get(r))) for r in m.recipients],
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


# The grouped path (a database where a statement is a round trip): each table's rows
# of the whole group in one statement (the dialect's ``insert_rows``) per
# ``rows_per_insert`` rows. Same rows, same values as above.
MESSAGE_COLUMNS = (
    "queue_id", "list_id", "list_name", "user_id", "username", "origin", "campaign_id", "mail_from", "header_from",
    "subject", "size", "header_priority", "user_priority", "priority", "state", "next_attempt_at", "client", "port",
    "created_at", "updated_at", "mail_auth", "body_type", "smtputf8", "size_declared", "dsn_ret", "dsn_envid",
)
_RECIPIENT_COLUMNS = ("message_id", "address", "dsn_notify", "dsn_orcpt")
# Bodies are also bounded in bytes per statement (the dialect's body_bytes_per_insert):
# a group of big messages is never all in one buffer.
_BODY_COLUMNS = ("message_id", "data")


def _insert_grouped(db: Connection, messages: Sequence[NewMessage], stamp: float, rows_per_insert: int) -> list[Queued]:
    dialect = dialect_of(db)
    given = dialect.new_ids(db, "messages", len(messages))
    if given is not None:
        out = [Queued(i, m.queue_id) for i, m in zip(given, messages, strict=True)]
        rows = [(q.message_id, *_message_row(m, stamp)) for q, m in zip(out, messages, strict=True)]
        for chunk in _chunks(rows, rows_per_insert):
            dialect.insert_rows(db, "messages", ("id", *MESSAGE_COLUMNS), chunk)
    else:
        ids: dict[str, int] = {}
        for chunk in _chunks([_message_row(m, stamp) for m in messages], rows_per_insert):
            # RETURNING's order is not promised to be the rows' order: match by queue id.
            for row in dialect.insert_rows(db, "messages", MESSAGE_COLUMNS, chunk, "RETURNING id, queue_id"):
                ids[row[1]] = int(row[0])
        out = [Queued(ids[m.queue_id], m.queue_id) for m in messages]
    _insert_bodies(db, [(q.message_id, m.data) for q, m in zip(out, messages, strict=True)], rows_per_insert)
    recipient_rows: list[tuple[object, ...]] = []
    for q, m in zip(out, messages, strict=True):
        dsn = m.recipient_dsn or {}
        recipient_rows.extend((q.message_id, r, *_dsn_row(dsn.get(r))) for r in m.recipients)
    for chunk in _chunks(recipient_rows, rows_per_insert):
        dialect.insert_rows(db, "recipients", _RECIPIENT_COLUMNS, chunk, "ON CONFLICT DO NOTHING")
    event_rows = [_event_row(m, q.message_id, stamp) for q, m in zip(out, messages, strict=True)]
    for chunk in _chunks(event_rows, rows_per_insert):
        dialect.insert_rows(db, "events", EVENT_COLUMNS, chunk)
    return out


def _insert_at_once(db: Connection, messages: Sequence[NewMessage], stamp: float) -> list[Queued] | None:
    """The whole group in one statement where the dialect has one (PostgreSQL: a
    round trip, and its own transaction when the caller has none), rows keyed by
    queue id; None: the dialect has none, or the bodies are too big for one."""
    if sum(len(m.data) for m in messages) > dialect_of(db).body_bytes_per_insert():
        return None
    recipients: list[tuple[object, ...]] = []
    for m in messages:
        dsn = m.recipient_dsn or {}
        recipients.extend((m.queue_id, r, *_dsn_row(dsn.get(r))) for r in m.recipients)
    group = GroupRows(
        messages=[_message_row(m, stamp) for m in messages],
        bodies=[(m.queue_id, m.data) for m in messages],
        recipients=recipients,
        events=[_event_row(m, None, stamp) for m in messages],
    )
    ids = dialect_of(db).insert_group(db, group)
    if ids is None:
        return None
    return [Queued(ids[m.queue_id], m.queue_id) for m in messages]


@dataclass(slots=True)
class GroupRows:
    """A group of new messages for :meth:`Dialect.insert_group`: each table's rows,
    the message's id left out (the database gives it), tied by queue id instead —
    ``messages`` in ``MESSAGE_COLUMNS``' order, ``bodies`` (queue id, data),
    ``recipients`` (queue id, address, dsn_notify, dsn_orcpt), ``events``
    (``EVENT_COLUMNS`` without message_id)."""

    messages: list[tuple[object, ...]]
    bodies: list[tuple[str, bytes | mmap.mmap]]
    recipients: list[tuple[object, ...]]
    events: list[tuple[object, ...]]


def _message_row(m: NewMessage, stamp: float) -> tuple[object, ...]:
    return (
        m.queue_id, m.list_id, m.list_name, m.user_id, m.username, m.origin, m.campaign_id,
        m.mail_from, m.header_from, m.subject, len(m.data), m.header_priority, m.user_priority,
        m.priority, m.state, m.not_before if m.not_before is not None else stamp,
        m.client, m.port, stamp, stamp, m.mail_auth, m.body_type, int(bool(m.smtputf8)),
        m.size_declared, m.dsn_ret, m.dsn_envid,
    )


def _event_row(m: NewMessage, message_id: int | None, stamp: float) -> tuple[object, ...]:
    """The ``queued`` event's values (``message_id`` None: left out, for insert_group)."""
    return (
        stamp, str(EventKind.QUEUED), str(Reason.ACCEPTED), m.username, m.list_id, m.client, m.port,
        *(() if message_id is None else (message_id,)), m.queue_id,
        f"{m.origin} from {m.mail_from or '<>'} to {len(m.recipients)} recipient(s), "
        f"priority {m.priority} (header {m.header_priority}, user {m.user_priority})",
    )


def _chunks(rows: list[tuple[object, ...]], size: int) -> list[list[tuple[object, ...]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _insert_bodies(db: Connection, bodies: list[tuple[int, bytes | mmap.mmap]], rows_per_insert: int) -> None:
    """Bodies a few MB per statement; a bigger one on its own (the dialect's way)."""
    most = dialect_of(db).body_bytes_per_insert()
    group: list[tuple[object, ...]] = []
    views: list[memoryview] = []
    size = 0
    try:
        for message_id, data in bodies:
            if len(data) > most:
                dialect_of(db).write_body(db, message_id, data)
                continue
            if group and (size + len(data) > most or len(group) >= rows_per_insert):
                dialect_of(db).insert_rows(db, "message_bodies", _BODY_COLUMNS, group)
                group, size = [], 0
            view = memoryview(data)  # no copy here: the driver reads the view as it encodes
            views.append(view)
            group.append((message_id, view))
            size += len(data)
        if group:
            dialect_of(db).insert_rows(db, "message_bodies", _BODY_COLUMNS, group)
    finally:
        for view in views:
            view.release()


def _dsn_row(dsn: RecipientDsn | None) -> tuple[str | None, str | None]:
    return (None, None) if dsn is None else (dsn.notify, dsn.orcpt)


def count_messages(db: Connection, origin: str | None = None) -> int:
    """How many messages the store holds (of one origin), whatever their state."""
    if origin is None:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    return int(db.execute("SELECT count(*) FROM messages WHERE origin = ?", (origin,)).fetchone()[0])
