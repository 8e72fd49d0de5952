"""What a test run (``smtpplus harness run``) needs from the store beyond the
operators' API: the effective priority of the messages it sent, and removing the
sender identities and finished campaigns it created, so nothing of it is left on
a store that others use.

Users and lists go through :mod:`relay.store.directory` (``delete_user`` /
``delete_list``); queued and delivered mail is never deleted here.
"""

from __future__ import annotations

from collections.abc import Iterable

from relay.store.connection import Connection, transaction


def message_priorities(db: Connection, queue_ids: Iterable[str]) -> dict[str, tuple[int, int, int]]:
    """``queue id → (priority, user priority, header priority)`` of the messages found."""
    out: dict[str, tuple[int, int, int]] = {}
    for queue_id in queue_ids:
        row = db.execute(
            "SELECT priority, user_priority, header_priority FROM messages WHERE queue_id = ?", (str(queue_id).upper(),)
        ).fetchone()
        if row is not None:
            out[str(queue_id)] = (int(row[0]), int(row[1]), int(row[2]))
    return out


def existing_identities(db: Connection, values: Iterable[str]) -> dict[str, str]:
    """``value → state`` of those of ``values`` (canonical) that exist already."""
    out: dict[str, str] = {}
    for value in values:
        row = db.execute("SELECT state FROM identities WHERE value = ?", (value,)).fetchone()
        if row is not None:
            out[value] = str(row[0])
    return out


def delete_unused_identities(db: Connection, values: Iterable[str]) -> list[str]:
    """Delete those of ``values`` that no user lists any more (their codes go with
    them); returns the ones deleted. One still listed by someone is kept."""
    deleted: list[str] = []
    with transaction(db):
        for value in values:
            cur = db.execute(
                "DELETE FROM identities WHERE value = ? "
                "AND NOT EXISTS (SELECT 1 FROM user_identities ui WHERE ui.identity_id = identities.id)",
                (value,),
            )
            if cur.rowcount:
                deleted.append(value)
    return deleted


def delete_finished_campaign(db: Connection, campaign_id: int) -> bool:
    """Delete a campaign that is done or cancelled (its messages stay, with its
    number); returns False when it is still under way or gone already."""
    with transaction(db):
        cur = db.execute("DELETE FROM campaigns WHERE id = ? AND state IN ('done', 'cancelled')", (int(campaign_id),))
    return bool(cur.rowcount)
