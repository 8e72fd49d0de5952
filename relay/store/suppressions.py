"""The suppression list: addresses campaigns never send to.

An operator adds and removes entries (``smtpplus suppressions``); delivery adds a
recipient that a receiving server refused with a 5.1.x enhanced status code (the
mailbox does not exist) — not the relay's own DNS verdicts (null MX, no such domain:
``RecipientResult.judged`` is False), which are about a whole domain and may pass —
in the transaction that settles the outcome
(:func:`suppress_hard_bounces`, called from :mod:`relay.store.queue`). Addresses are
kept in their canonical form (:func:`relay.policy.check_address`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from relay.policy import check_address
from relay.reasons import EventKind, Reason
from relay.store import AlreadyExists, Connection, NotFound, transaction
from relay.store.events import NewEvent, record_event
from relay.store.subscriptions import remove_unsent_campaign_mail

# A 5xx reply with enhanced code 5.1.x (RFC 3463 "addressing status"), except 5.1.7 and
# 5.1.8: those are about the sender's address, not the recipient's.
_HARD_BOUNCE = re.compile(r"^5\d\d[ -]5\.1\.(\d{1,3})(?![\d\w.])")
_SENDER_CODES = frozenset({7, 8})


@dataclass(frozen=True, slots=True)
class Suppression:
    address: str
    reason: str  # a reason code (relay.reasons.Reason)
    detail: str
    created_at: float


def canonical(address: str) -> str:
    """The form suppressions are kept and looked up in."""
    check = check_address(address.strip())
    return check.address if check.address is not None and check.problem is None else address.strip().lower()


def hard_bounce_code(reply: str) -> str | None:
    """``5.1.1`` etc. when ``reply`` says the recipient address does not exist, else None."""
    match = _HARD_BOUNCE.match(reply.strip())
    if match is None or int(match.group(1)) in _SENDER_CODES:
        return None
    return f"5.1.{int(match.group(1))}"


def list_suppressions(db: Connection, *, limit: int | None = None) -> list[Suppression]:
    sql = "SELECT address, reason, detail, created_at FROM suppressions ORDER BY address"
    rows = db.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ()).fetchall()
    return [Suppression(r[0], r[1], r[2], r[3]) for r in rows]


def suppressed_among(db: Connection, addresses: Sequence[str]) -> set[str]:
    """The canonical forms among ``canonical(a) for a in addresses`` that are suppressed."""
    forms = sorted({canonical(a) for a in addresses})
    if not forms:
        return set()
    marks = ",".join("?" * len(forms))
    return {r[0] for r in db.execute(f"SELECT address FROM suppressions WHERE address IN ({marks})", forms)}


def suppressed_per_list(db: Connection) -> dict[int, int]:
    """list id -> members whose address is suppressed. Lists × suppressions, each a
    primary-key probe of ``list_members``: never a walk over a large list's members."""
    rows = db.execute(
        "SELECT l.id, (SELECT count(*) FROM suppressions s WHERE EXISTS "
        "(SELECT 1 FROM list_members m WHERE m.list_id = l.id AND m.address = s.address)) FROM lists l"
    ).fetchall()
    return {int(r[0]): int(r[1]) for r in rows if r[1]}


def _insert(db: Connection, address: str, reason: Reason, detail: str, now: float) -> bool:
    row = db.execute(
        "INSERT INTO suppressions(address, reason, detail, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (address) DO NOTHING RETURNING address",
        (address, str(reason), detail[:500], now),
    ).fetchone()
    return row is not None


def add_suppression(db: Connection, address: str, *, detail: str = "", now: float | None = None) -> tuple[Suppression, int]:
    """An operator's entry (the address is checked by the caller). Returns it and the
    number of unsent campaign messages to it that were removed."""
    stamp = time.time() if now is None else now
    with transaction(db):
        if not _insert(db, address, Reason.SUPPRESSION_ADDED, detail, stamp):
            raise AlreadyExists(f"{address} is already suppressed — see `smtpplus suppressions ls`")
        removed = remove_unsent_campaign_mail(db, address)
        record_event(
            db,
            NewEvent(
                EventKind.OPERATOR, Reason.SUPPRESSION_ADDED, at=stamp,
                detail=f"{address} suppressed by an operator" + (f": {detail}" if detail else "")
                + (f"; {removed} unsent campaign message(s) removed" if removed else ""),
            ),
        )
    return Suppression(address, str(Reason.SUPPRESSION_ADDED), detail, stamp), removed


def remove_suppression(db: Connection, address: str, *, now: float | None = None) -> Suppression:
    stamp = time.time() if now is None else now
    with transaction(db):
        row = db.execute(
            "DELETE FROM suppressions WHERE address = ? RETURNING address, reason, detail, created_at", (address,)
        ).fetchone()
        if row is None:
            raise NotFound(f"{address} is not suppressed — see `smtpplus suppressions ls`")
        record_event(
            db,
            NewEvent(
                EventKind.OPERATOR, Reason.SUPPRESSION_REMOVED, at=stamp,
                detail=f"{address} no longer suppressed (was: {row[1]})",
            ),
        )
    return Suppression(row[0], row[1], row[2], row[3])


def suppress_hard_bounces(
    db: Connection, failed: Iterable[tuple[str, str]], *, list_id: int | None, queue_id: str, message_id: int, now: float
) -> list[NewEvent]:
    """Suppress each (recipient, reply) whose reply is a 5.1.x hard bounce; the events
    to record with the outcome's. Runs in the caller's (the settling) transaction."""
    events: list[NewEvent] = []
    for address, reply in failed:
        code = hard_bounce_code(reply)
        if code is None:
            continue
        form = canonical(address)
        if _insert(db, form, Reason.RECIPIENT_SUPPRESSED, reply, now):
            events.append(
                NewEvent(
                    EventKind.BOUNCE, Reason.RECIPIENT_SUPPRESSED, list_id=list_id, message_id=message_id,
                    queue_id=queue_id, at=now, detail=f"{form} suppressed: the next hop answered {code} ({reply[:300]})",
                )
            )
    return events
