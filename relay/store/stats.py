"""Per-list statistics: accepted, refused, delivered, deferred, failed — today
(local time) and in total.

Counted from the event log (every decision is an event carrying its list), plus
the daily roll-ups that retention writes before it prunes old events
(``list_stats_archive``), so totals survive pruning.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from relay.reasons import EventKind
from relay.store.connection import Connection
from relay.store.directory import get_list

# Which event kind feeds which counter.
_KINDS = {
    str(EventKind.QUEUED): "accepted",
    str(EventKind.REFUSED): "refused",
    str(EventKind.SENT): "delivered",
    str(EventKind.DEFERRED): "deferred",
    str(EventKind.FAILED): "failed",
}


@dataclass(frozen=True, slots=True)
class Counts:
    accepted: int = 0
    refused: int = 0
    delivered: int = 0
    deferred: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class ListStats:
    list_name: str
    today: Counts
    total: Counts


def _local_midnight(now: float) -> tuple[float, str]:
    local = dt.datetime.fromtimestamp(now).astimezone()
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp(), midnight.strftime("%Y-%m-%d")


def list_stats(db: Connection, list_name: str, *, now: float | None = None) -> ListStats:
    """Counts for one list (raises NotFound for an unknown list)."""
    target = get_list(db, list_name)
    stamp = time.time() if now is None else now
    since, today_name = _local_midnight(stamp)
    kinds = list(_KINDS)
    marks = ",".join("?" * len(kinds))
    total: dict[str, int] = {}
    today: dict[str, int] = {}
    for kind, n in db.execute(
        f"SELECT kind, count(*) FROM events WHERE list_id = ? AND kind IN ({marks}) GROUP BY kind",
        (target.id, *kinds),
    ):
        total[_KINDS[kind]] = total.get(_KINDS[kind], 0) + n
    for kind, n in db.execute(
        f"SELECT kind, count(*) FROM events WHERE list_id = ? AND at >= ? AND kind IN ({marks}) GROUP BY kind",
        (target.id, since, *kinds),
    ):
        today[_KINDS[kind]] = today.get(_KINDS[kind], 0) + n
    for day, kind, n in db.execute(
        "SELECT day, kind, count FROM list_stats_archive WHERE list_id = ?", (target.id,)
    ):
        if kind not in _KINDS:
            continue
        total[_KINDS[kind]] = total.get(_KINDS[kind], 0) + n
        if day == today_name:
            today[_KINDS[kind]] = today.get(_KINDS[kind], 0) + n
    return ListStats(target.name, Counts(**today), Counts(**total))
