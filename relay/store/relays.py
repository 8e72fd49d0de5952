"""The live relays of a store: who serves it, and taking over from the dead.

On SQLite one relay serves a store (its lease, :mod:`relay.store.lease`). On
PostgreSQL any number do: each holds an advisory lock on its own id for its lifetime
(:mod:`relay.store.postgres.relays`; a relay whose lock is free is dead) and writes a
heartbeat row for display — host, pid, listen address, ports, TLS certificate
fingerprint, started, last beat — stamped with the database's clock. The rows are
settings ``relay.live.<owner>`` (JSON), so both databases hold them without a
migration.

Public API
----------
``beat(db, owner, facts) -> None``
    Write (or refresh) this relay's heartbeat row.
``leave(db, owner) -> None``
    A clean stop: the row goes.
``live_relays(db) -> list[LiveRelay]``
    Every live relay, oldest first (on SQLite: the lease's relay when it is alive).
``reclaim_dead(db) -> Reclaimed``
    PostgreSQL: put the in-flight messages of every relay whose lock is free back in
    the queue (at once: the lock is the database's judgement, no clock is involved)
    and drop dead relays' rows. SQLite: nothing (its one relay reclaims at start).
``share(total, relays) -> int``
    A relay's share of a limit that is a total across relays (parallel, rate,
    connections per destination): ``ceil(total / relays)``, at least 1.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from relay.store.connection import transaction

PREFIX = "relay.live."
DEFAULT_STALE_AFTER = 10.0  # relay.store.lease's

__all__ = ["PREFIX", "LiveRelay", "Reclaimed", "beat", "leave", "live_relays", "now", "reclaim_dead", "share"]


@dataclass(frozen=True, slots=True)
class LiveRelay:
    owner: str
    host: str | None = None
    pid: int | None = None
    listen_host: str | None = None
    ports: list[int] = field(default_factory=list)
    implicit_tls: list[int] = field(default_factory=list)
    tls_fingerprint: str | None = None
    started_at: float | None = None
    beat_at: float | None = None
    beat_age: float | None = None  # seconds since its last beat, by the database's clock
    listening: bool = False  # it has bound its ports (published them): ready


@dataclass(frozen=True, slots=True)
class Reclaimed:
    messages: int = 0
    relays: list[str] = field(default_factory=list)  # the dead relays' owners
    events: list[Any] = field(default_factory=list)  # the relay-takeover events recorded (NewEvent), one a dead relay


def _postgres(db: Any) -> bool:
    return getattr(db, "dialect", "sqlite") == "postgresql"


def now(db: Any) -> float:
    """The store's clock: the database server's on PostgreSQL (relays on several hosts
    agree on ages), this host's on SQLite (one host)."""
    if _postgres(db):
        from relay.store.postgres.relays import database_now

        return database_now(db)
    return time.time()


def beat(db: Any, owner: str, facts: dict[str, Any]) -> None:
    """Write this relay's heartbeat row: ``facts`` (host, pid, listen_host, ports,
    implicit_tls, tls_fingerprint, started_at) merged into what it wrote before."""
    with transaction(db):
        row = db.execute("SELECT value FROM settings WHERE key = ?", (PREFIX + owner,)).fetchone()
        value = _load(row[0]) if row else {}
        value.update(facts)
        value["beat_at"] = now(db)
        value.setdefault("started_at", value["beat_at"])
        db.execute(
            "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (PREFIX + owner, json.dumps(value)),
        )


def leave(db: Any, owner: str) -> None:
    with transaction(db):
        db.execute("DELETE FROM settings WHERE key = ?", (PREFIX + owner,))


def _load(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _rows(db: Any) -> dict[str, dict[str, Any]]:
    rows = db.execute("SELECT key, value FROM settings WHERE key LIKE ?", (PREFIX + "%",)).fetchall()
    return {str(key)[len(PREFIX):]: _load(value) for key, value in rows}


def _relay(owner: str, facts: dict[str, Any], stamp: float) -> LiveRelay:
    beat_at = facts.get("beat_at")
    return LiveRelay(
        owner=owner,
        host=facts.get("host"),
        pid=facts.get("pid"),
        listen_host=facts.get("listen_host"),
        ports=[int(p) for p in facts.get("ports") or []],
        implicit_tls=[int(p) for p in facts.get("implicit_tls") or []],
        tls_fingerprint=facts.get("tls_fingerprint"),
        started_at=facts.get("started_at"),
        beat_at=beat_at,
        beat_age=max(0.0, stamp - float(beat_at)) if beat_at else None,
        listening=bool(facts.get("listening_at")),
    )


def live_relays(db: Any) -> list[LiveRelay]:
    """Every live relay of the store, oldest first."""
    stamp = now(db)
    if _postgres(db):
        from relay.store.postgres.relays import held_keys, key_of

        held = held_keys(db)
        found = [_relay(owner, facts, stamp) for owner, facts in _rows(db).items() if key_of(owner) in held]
    else:
        found = _sqlite_relay(db, stamp)
    return sorted(found, key=lambda r: (r.started_at or 0.0, r.owner))


def _sqlite_relay(db: Any, stamp: float) -> list[LiveRelay]:
    # One relay: the lease's, with the facts it publishes (as `status` showed it before).
    from relay.store.lease import relay_status

    status = relay_status(db, now=stamp)
    if not status.alive or not status.owner:
        return []
    mine = _rows(db).get(status.owner, {})
    return [
        LiveRelay(
            owner=status.owner,
            host=status.host,
            pid=status.pid,
            listen_host=status.listen_host,
            ports=list(status.served),
            implicit_tls=list(status.implicit_tls),
            tls_fingerprint=mine.get("tls_fingerprint") or status.tls_fingerprint,
            started_at=status.started_at,
            beat_at=stamp - status.heartbeat_age if status.heartbeat_age is not None else None,
            beat_age=status.heartbeat_age,
            listening=status.ready,
        )
    ]


def reclaim_dead(db: Any, *, mine: str | None = None) -> Reclaimed:
    """PostgreSQL: take over the claims of every relay that is dead — its lock is free
    and its last beat is older than its ``stale_after`` by the database's clock (a
    relay whose lock connection dropped, a server restart, takes it again at its next
    beat: it is not dead) — or that holds claims and has no row. ``mine``: the caller,
    never judged."""
    if not _postgres(db):
        return Reclaimed()
    from relay.reasons import EventKind, Reason
    from relay.store.events import NewEvent, record_events
    from relay.store.postgres.relays import held_keys, key_of
    from relay.store.queue import reclaim_owner

    with transaction(db):
        held = held_keys(db)
        owners = {
            str(row[0])
            for row in db.execute(
                "SELECT DISTINCT lease_owner FROM messages WHERE state = 'sending' AND lease_owner IS NOT NULL"
            ).fetchall()
        }
        rows = _rows(db)
        stamp = now(db)

        def dead(owner: str) -> bool:
            if owner == mine or key_of(owner) in held:
                return False
            facts = rows.get(owner)
            if facts is None:
                return True
            limit = float(facts.get("stale_after") or DEFAULT_STALE_AFTER)
            return stamp - float(facts.get("beat_at") or 0.0) >= limit

        gone = sorted(owner for owner in owners | set(rows) if dead(owner))
        if not gone:
            return Reclaimed()
        count = 0
        events = []
        for owner in gone:
            taken = reclaim_owner(db, owner, now=stamp) if owner in owners else 0
            count += taken
            db.execute("DELETE FROM settings WHERE key = ?", (PREFIX + owner,))
            facts = rows.get(owner) or {}
            events.append(
                NewEvent(
                    kind=EventKind.RELAY,
                    reason=Reason.RELAY_TAKEOVER,
                    detail=f"took over from relay {owner} (pid {facts.get('pid')} on {facts.get('host')}): its lock is "
                    f"free and its last beat {stamp - float(facts.get('beat_at') or 0.0):.1f}s old; "
                    f"{taken} message(s) in flight back in the queue"
                    if facts
                    else f"took over from relay {owner} (no row): {taken} message(s) in flight back in the queue",
                    at=stamp,
                )
            )
        record_events(db, events)
        return Reclaimed(count, gone, events)


def share(total: int | float | None, relays: int) -> Any:
    """This relay's share of a limit that is a total across ``relays`` live relays:
    ``ceil(total / relays)`` (at least 1) for counts, ``total / relays`` for rates.
    ``None`` (no limit) stays ``None``."""
    if total is None:
        return None
    if relays <= 1:
        return total
    if isinstance(total, int):
        return max(1, math.ceil(total / relays))
    return total / relays


# ---------------------------------------------------------------------------
# The lease of many relays (PostgreSQL): what relay.store.lease does for one relay.
# relay.store.lease dispatches here for a PostgreSQL store, so the relay service
# calls the same functions on either backend.


def acquire_lease(
    db: Any, owner: str, pid: int, host: str, listen_host: str, stale_after: float, **_: Any
) -> Any:
    """Join the store's relays (never refused: any number serve one PostgreSQL store)
    and take over from any that died. The caller holds its own advisory lock."""
    from relay.store.lease import Acquired

    beat(db, owner, {"host": host, "pid": pid, "listen_host": listen_host, "stale_after": stale_after})
    reclaim_dead(db, mine=owner)
    return Acquired(None, False)


def heartbeat(db: Any, owner: str, **_: Any) -> Reclaimed:
    """Hold this relay's lock (taken again when its connection was lost: a server
    restart), refresh its row and take over from relays that died meanwhile (what it
    took over is returned: the relay logs it). The lease is always still this relay's:
    a relay declared dead while its lock was lost (the others took its claims: those
    may be delivered twice, never lost) simply carries on."""
    from relay.store.changes import announced_as_beat
    from relay.store.postgres.relays import keep

    keep(owner)
    with announced_as_beat(db):  # every second: readers waiting for mail or controls skip it
        beat(db, owner, {})
    return reclaim_dead(db, mine=owner)  # not announced as a beat: a takeover makes mail ready


def mark_listening(db: Any, owner: str, **_: Any) -> None:
    """The relay serves its ports now (called in the transaction that published them:
    the shared port rows and TLS fingerprint are this relay's at this moment)."""
    from relay.store.relay_info import implicit_tls_ports, served_ports
    from relay.store.settings import Keys, get_setting

    served, _not_served = served_ports(db)
    beat(
        db,
        owner,
        {
            "ports": served,
            "implicit_tls": [p for p in implicit_tls_ports(db) if p in served],
            "tls_fingerprint": get_setting(db, Keys.TLS_FINGERPRINT),
            "listening_at": now(db),
        },
    )


def release(db: Any, owner: str, **_: Any) -> None:
    leave(db, owner)


def relay_status(db: Any, stale_after: float, *, now: float | None = None) -> Any:
    """:func:`relay.store.lease.relay_status` for many relays: alive while any relay is;
    the oldest named, every one in ``relays``."""
    from relay.store.lease import RelayStatus, _status_common

    common = _status_common(db)
    found = live_relays(db)
    if not found:
        return RelayStatus(alive=False, liveness="lock", **common)
    first = found[0]
    return RelayStatus(
        alive=True,
        ready=any(r.listening for r in found),
        liveness="lock",
        owner=first.owner,
        pid=first.pid,
        host=first.host,
        listen_host=first.listen_host,
        heartbeat_age=first.beat_age,
        started_at=first.started_at,
        relays=found,
        **{**common, "served": sorted({p for r in found for p in r.ports}) or common["served"]},
    )


def live_count(db: Any) -> int:
    """How many relays share the store's limits now (at least 1: the one asking)."""
    if not _postgres(db):
        return 1
    from relay.store.postgres.relays import held_keys, key_of

    held = held_keys(db)
    return max(1, sum(1 for owner in _rows(db) if key_of(owner) in held))


def shared_settings(settings: Any, relays: int) -> Any:
    """The delivery settings one of ``relays`` live relays follows: ``parallel`` and
    ``rate`` are totals across them, so each takes its share (``rate`` 0 is unlimited)."""
    if relays <= 1:
        return settings
    import dataclasses

    return dataclasses.replace(
        settings,
        parallel=share(int(settings.parallel), relays),
        rate=share(float(settings.rate), relays) if settings.rate else settings.rate,
    )
