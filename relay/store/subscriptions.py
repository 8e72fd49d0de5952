"""Unsubscribes: each list's List-Unsubscribe settings, the members' subscription rows
(whose ids the tokens carry), the store's token secret, and marking a member
unsubscribed. The token format and the headers are :mod:`relay.unsubscribe`'s; the
checks and the one unsubscribe operation are :mod:`relay.admin.unsubscribe`'s.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from relay.reasons import EventKind, Reason
from relay.store import Connection, NotFound, transaction
from relay.store.events import NewEvent, record_event
from relay.unsubscribe import UnsubscribeSettings

SECRET_KEY = "unsubscribe.secret"  # hex, 32 random bytes, made once per store


def token_secret(db: Connection) -> bytes:
    """The store's unsubscribe secret, made on first use (every relay and CLI on this
    store then makes and checks the same tokens)."""
    from relay.store.settings import get_setting

    value = get_setting(db, SECRET_KEY)
    if value is None:
        with transaction(db):
            db.execute(
                "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (SECRET_KEY, f'"{secrets.token_hex(32)}"'),
            )
        value = get_setting(db, SECRET_KEY)
    return bytes.fromhex(str(value))


def list_settings(db: Connection, list_id: int) -> UnsubscribeSettings:
    row = db.execute("SELECT unsubscribe_url, unsubscribe_mailto FROM lists WHERE id = ?", (int(list_id),)).fetchone()
    if row is None:
        return UnsubscribeSettings()
    return UnsubscribeSettings(row[0], row[1])


def set_list_settings(db: Connection, list_id: int, settings: UnsubscribeSettings) -> None:
    with transaction(db):
        db.execute(
            "UPDATE lists SET unsubscribe_url = ?, unsubscribe_mailto = ? WHERE id = ?",
            (settings.url_template, settings.mailto, int(list_id)),
        )


@dataclass(frozen=True, slots=True)
class Member:
    """A list member a campaign batch reads: its subscription, and why it is skipped."""

    address: str
    name: str
    subscription_id: int
    unsubscribed: bool


def batch_subscriptions(db: Connection, list_id: int, addresses: Sequence[str]) -> dict[str, tuple[int, bool]]:
    """address -> (subscription id, unsubscribed) for members of one campaign batch,
    creating the rows that do not exist yet. Runs inside the caller's transaction."""
    if not addresses:
        return {}
    db.executemany(
        "INSERT INTO subscriptions(list_id, address) VALUES (?, ?) ON CONFLICT (list_id, address) DO NOTHING",
        [(int(list_id), a) for a in addresses],
    )
    marks = ",".join("?" * len(addresses))
    rows = db.execute(
        f"SELECT address, id, unsubscribed_at FROM subscriptions WHERE list_id = ? AND address IN ({marks})",
        (int(list_id), *addresses),
    ).fetchall()
    return {r[0]: (int(r[1]), r[2] is not None) for r in rows}


@dataclass(frozen=True, slots=True)
class SubscriptionInfo:
    id: int
    list_id: int
    list_name: str
    address: str
    unsubscribed_at: float | None


def get_subscription(db: Connection, subscription_id: int) -> SubscriptionInfo:
    row = db.execute(
        "SELECT s.id, s.list_id, l.name, s.address, s.unsubscribed_at FROM subscriptions s "
        "JOIN lists l ON l.id = s.list_id WHERE s.id = ?",
        (int(subscription_id),),
    ).fetchone()
    if row is None:
        raise NotFound(f"no subscription {subscription_id}")
    return SubscriptionInfo(int(row[0]), int(row[1]), row[2], row[3], row[4])


def mark_unsubscribed(db: Connection, info: SubscriptionInfo, *, via: str, now: float | None = None) -> tuple[bool, int]:
    """Mark the member unsubscribed (once) and remove the unsent messages of the list's
    campaigns to it. Returns (newly unsubscribed, messages removed)."""
    stamp = time.time() if now is None else now
    with transaction(db):
        changed = db.execute(
            "UPDATE subscriptions SET unsubscribed_at = ? WHERE id = ? AND unsubscribed_at IS NULL",
            (stamp, info.id),
        ).rowcount
        removed = remove_unsent_campaign_mail(db, info.address, list_id=info.list_id)
        if changed:
            record_event(
                db,
                NewEvent(
                    EventKind.CAMPAIGN, Reason.MEMBER_UNSUBSCRIBED, list_id=info.list_id, at=stamp,
                    detail=f"{info.address} unsubscribed from list {info.list_name} ({via})"
                    + (f"; {removed} unsent campaign message(s) removed" if removed else ""),
                ),
            )
    return bool(changed), removed


def remove_unsent_campaign_mail(db: Connection, address: str, *, list_id: int | None = None) -> int:
    """Delete campaign messages to ``address`` not yet sent (queued, deferred, held) —
    of one list's campaigns, or of all. Campaign messages have one recipient each."""
    where = "m.campaign_id IS NOT NULL AND m.state IN ('queued', 'deferred', 'held')"
    args: list[object] = [address]
    if list_id is not None:
        where += " AND m.list_id = ?"
        args.append(int(list_id))
    return int(
        db.execute(
            f"DELETE FROM messages WHERE id IN (SELECT m.id FROM messages m JOIN recipients r "
            f"ON r.message_id = m.id WHERE r.address = ? AND {where})",
            tuple(args),
        ).rowcount
    )


def unsubscribed_counts(db: Connection) -> dict[int, int]:
    """list id -> members unsubscribed (the partial index)."""
    rows = db.execute(
        "SELECT list_id, count(*) FROM subscriptions WHERE unsubscribed_at IS NOT NULL GROUP BY list_id"
    ).fetchall()
    return {int(r[0]): int(r[1]) for r in rows}
