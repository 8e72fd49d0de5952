"""One relay per store: the relay's lease (a heartbeat in the store's settings).

Public API
----------
``acquire(db, owner, pid, host, listen_host, stale_after, *, now=None) -> str | None``
    In one IMMEDIATE transaction: refuse with :class:`RelayAlreadyRunning` (naming the
    pid, host and heartbeat age) while another relay's heartbeat is fresher than
    ``stale_after`` seconds; otherwise take the lease. Returns the previous owner's id
    when that relay is gone (its heartbeat went stale, or it stopped), so its in-flight
    messages are reclaimed at once; ``None`` on a store never served before. A
    takeover from a relay that died (stale, not stopped) is recorded as an event.
``acquire_lease(...) -> Acquired(previous_owner, died)``
    The same, also telling whether the previous relay died (rather than stopped).
``heartbeat(db, owner, *, now=None) -> bool``
    Refresh the heartbeat; ``False`` when the lease now belongs to someone else
    (this relay was presumed dead and taken over: it must stop). ``beat(…) -> Beat``
    also returns the takeovers it made (many relays on PostgreSQL), for the log.
``mark_listening(db, owner, *, now=None)``
    The relay has published its settings and the ports it serves: it is *ready*
    (``RelayStatus.ready``). A new lease starts not ready, so a reader never takes a
    previous relay's ports for this one's.
``release(db, owner)``
    A clean stop: the lease stays as a record (``stopped_at``) but is no longer alive.
``relay_status(db, stale_after=10.0, *, now=None) -> RelayStatus``
    Whether a relay is alive on this store, who, since when, the ports it serves and
    does not serve (with reasons), and the facts it publishes (TLS fingerprint, …) and
    the runtime controls (paused, next hop). ``stale_after`` applies only when the
    relay did not publish its own. Used by ``smtpplus status``, the console and the
    harness.

The OS lock
-----------
A heartbeat can stop while its relay lives (a stalled event loop, a full disk), so on
its own it cannot tell a stalled relay from a dead one. The relay therefore also holds
its backend's relay lock for its whole life (``Backend.relay_lock``; SQLite: an
exclusive ``flock`` on ``<store>-relay.lock``, :mod:`relay.store.sqlite.lock`); the
kernel drops it the instant the process dies, kill -9 included. On this host the lock
is the truth: a second relay is refused at once while it is held, a restart after a
crash takes over at its first try, and :func:`relay_status` calls a relay alive while
its lock is held whatever its heartbeat says (``liveness == "lock"``). The heartbeat
stays for display and for stores the lock cannot see (no lock file: ``"heartbeat"``).
The lock file's text names the holder (pid, host) and, after a stop for a reason
worth telling (a corrupt store), that reason.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any

from relay.reasons import EventKind, Reason
from relay.store.connection import Connection, transaction
from relay.store.errors import RelayAlreadyRunning
from relay.store.events import NewEvent, record_event
from relay.store.relay_info import implicit_tls_ports, served_ports
from relay.store.settings import Keys, get_setting, get_settings, set_setting

DEFAULT_STALE_AFTER = 10.0

__all__ = [
    "DEFAULT_STALE_AFTER",
    "Acquired",
    "RelayAlreadyRunning",
    "RelayStatus",
    "acquire",
    "acquire_lease",
    "heartbeat",
    "mark_listening",
    "relay_status",
    "release",
]


@dataclass(frozen=True, slots=True)
class RelayStatus:
    alive: bool
    owner: str | None = None
    pid: int | None = None
    host: str | None = None
    listen_host: str | None = None
    heartbeat_age: float | None = None
    started_at: float | None = None
    stopped_at: float | None = None
    served: list[int] = field(default_factory=list)
    not_served: dict[int, str] = field(default_factory=dict)
    implicit_tls: list[int] = field(default_factory=list)  # those of served with TLS from the first byte
    server_name: str | None = None
    tls_fingerprint: str | None = None
    allow_plain_auth: bool = False
    paused: bool = False
    next_hop: str | None = None
    rate: float | None = None
    parallel: int | None = None
    liveness: str = "heartbeat"  # what decided ``alive``: "lock" (the OS lock) or "heartbeat"
    stopped_reason: str | None = None  # why the last relay stopped, when it said (a corrupt store)
    # Alive and done starting: its settings and served ports are its own (`status --wait`).
    ready: bool = False
    # PostgreSQL: every live relay (relay.store.relays.LiveRelay), oldest first.
    relays: list[Any] = field(default_factory=list)


def _read_lease(db: Connection) -> dict[str, Any] | None:
    try:
        value = get_setting(db, Keys.LEASE)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _write_lease(db: Connection, lease: dict[str, Any]) -> None:
    set_setting(db, Keys.LEASE, lease)


def _is_alive(lease: dict[str, Any] | None, stale_after: float, now: float) -> bool:
    if not lease or lease.get("stopped_at"):
        return False
    return now - float(lease.get("heartbeat_at") or 0) < stale_after


@dataclass(frozen=True, slots=True)
class Acquired:
    previous_owner: str | None  # the relay before this one, when it is gone
    died: bool  # it did not stop cleanly: its heartbeat went stale


def acquire(
    db: Connection,
    owner: str,
    pid: int,
    host: str,
    listen_host: str,
    stale_after: float = DEFAULT_STALE_AFTER,
    *,
    now: float | None = None,
) -> str | None:
    """Take the lease, or raise RelayAlreadyRunning. Returns the gone owner's id."""
    return acquire_lease(db, owner, pid, host, listen_host, stale_after, now=now).previous_owner


def acquire_lease(
    db: Connection,
    owner: str,
    pid: int,
    host: str,
    listen_host: str,
    stale_after: float = DEFAULT_STALE_AFTER,
    *,
    now: float | None = None,
    locked: bool = False,
) -> Acquired:
    """:func:`acquire`, also telling whether the previous relay died.

    ``locked``: the caller holds the store's OS lock (:class:`StoreLock`), so a
    previous relay on this same host is gone whatever its heartbeat says — taken
    over at once (a restart after kill -9 serves at its first try)."""
    if _many(db):
        return _relays().acquire_lease(db, owner, pid, host, listen_host, stale_after)
    with transaction(db):
        stamp = time.time() if now is None else now
        previous = _read_lease(db)
        gone_here = locked and previous is not None and previous.get("host") == host
        if previous and previous.get("owner") != owner and not gone_here and _is_alive(previous, stale_after, stamp):
            age = max(0.0, stamp - float(previous.get("heartbeat_at") or 0))
            where = previous.get("listen_host") or "?"
            raise RelayAlreadyRunning(
                f"a relay is already running on this store (pid {previous.get('pid')} on "
                f"{previous.get('host')}, listening on {where}, heartbeat {age:.1f}s ago) — "
                "stop it first, or use another --db",
                owner=str(previous.get("owner")),
                pid=previous.get("pid"),
                host=previous.get("host"),
                age=age,
            )
        _write_lease(
            db,
            {
                "owner": owner,
                "pid": pid,
                "host": host,
                "listen_host": listen_host,
                "heartbeat_at": stamp,
                "started_at": stamp,
                "stopped_at": None,
                "stale_after": stale_after,
            },
        )
        if not previous or previous.get("owner") in (None, owner):
            return Acquired(None, False)
        died = not previous.get("stopped_at")
        if died:
            age = stamp - float(previous.get("heartbeat_at") or 0)
            why = "its lock was free: the process is gone" if gone_here else "its heartbeat went stale"
            record_event(
                db,
                NewEvent(
                    kind=EventKind.RELAY,
                    reason=Reason.RELAY_TAKEOVER,
                    detail=f"took over from relay pid {previous.get('pid')} on {previous.get('host')} "
                    f"(heartbeat {age:.1f}s old; {why})",
                    at=stamp,
                ),
            )
        return Acquired(str(previous["owner"]), died)


@dataclass(frozen=True)
class Beat:
    """A heartbeat's outcome: whether the lease is still this relay's, and the
    takeovers of dead relays it made (PostgreSQL: ``relay-takeover`` events, recorded)."""

    ours: bool
    took_over: list[NewEvent] = field(default_factory=list)


def beat(db: Connection, owner: str, *, now: float | None = None) -> Beat:
    """:func:`heartbeat`, also telling what it took over."""
    if _many(db):
        return Beat(True, list(_relays().heartbeat(db, owner).events))
    return Beat(heartbeat(db, owner, now=now))


def heartbeat(db: Connection, owner: str, *, now: float | None = None) -> bool:
    """Refresh the heartbeat; False when another relay owns the lease now."""
    if _many(db):
        return beat(db, owner).ours
    with transaction(db):
        lease = _read_lease(db)
        if not lease or lease.get("owner") != owner or lease.get("stopped_at"):
            return False
        lease["heartbeat_at"] = time.time() if now is None else now
        _write_lease(db, lease)
        return True


def mark_listening(db: Connection, owner: str, *, now: float | None = None) -> None:
    """The lease's relay has published its settings and ports (no-op when not its lease)."""
    if _many(db):
        return _relays().mark_listening(db, owner)
    with transaction(db):
        lease = _read_lease(db)
        if not lease or lease.get("owner") != owner:
            return
        lease["listening_at"] = time.time() if now is None else now
        _write_lease(db, lease)


def release(db: Connection, owner: str, *, now: float | None = None) -> None:
    """Mark the lease stopped (a clean stop). No-op when someone else owns it."""
    if _many(db):
        return _relays().release(db, owner)
    with transaction(db):
        lease = _read_lease(db)
        if not lease or lease.get("owner") != owner:
            return
        lease["stopped_at"] = time.time() if now is None else now
        _write_lease(db, lease)


def _many(db: Connection) -> bool:
    # Many relays serve one PostgreSQL store (relay.store.relays); one serves a SQLite one.
    return getattr(db, "dialect", "sqlite") == "postgresql"


def _relays() -> Any:
    from relay.store import relays

    return relays


def _status_common(db: Connection) -> dict[str, Any]:
    """The facts about the serving relay(s) that the store holds, whatever the backend."""
    served, not_served = served_ports(db)
    values = get_settings(
        db,
        [
            Keys.SERVER_NAME, Keys.TLS_FINGERPRINT, Keys.ALLOW_PLAIN_AUTH, Keys.PAUSED,
            Keys.NEXT_HOP, Keys.RATE, Keys.PARALLEL,
        ],
    )
    common: dict[str, Any] = {
        "served": served,
        "not_served": not_served,
        "implicit_tls": [port for port in implicit_tls_ports(db) if port in served],
        "server_name": values.get(Keys.SERVER_NAME),
        "tls_fingerprint": values.get(Keys.TLS_FINGERPRINT),
        "allow_plain_auth": bool(values.get(Keys.ALLOW_PLAIN_AUTH, False)),
        "paused": bool(values.get(Keys.PAUSED, False)),
        "next_hop": values.get(Keys.NEXT_HOP),
        "rate": values.get(Keys.RATE),
        "parallel": values.get(Keys.PARALLEL),
    }
    return common


def relay_status(db: Connection, stale_after: float = DEFAULT_STALE_AFTER, *, now: float | None = None) -> RelayStatus:
    """What a console, ``status`` or the harness needs to know about the relay."""
    if _many(db):
        return _relays().relay_status(db, stale_after, now=now)
    stamp = time.time() if now is None else now
    lease = _read_lease(db)
    common = _status_common(db)
    from relay.store.backend import (
        backend_of,  # the backend's own lock (SQLite: a file beside the store)
    )

    lock = backend_of(db).lock_state(db)
    if lock.facts.get("stopped"):
        common["stopped_reason"] = str(lock.facts["stopped"])
    if not lease:
        return RelayStatus(alive=bool(lock.held), liveness="lock" if lock.held else "heartbeat", **common)
    heartbeat_at = float(lease.get("heartbeat_at") or 0)
    # The relay's own setting, when it published one, so every reader agrees with it.
    limit = float(lease.get("stale_after") or stale_after)
    alive = _is_alive(lease, limit, stamp)
    liveness = "heartbeat"
    if lock.held:
        # Held by a live process: alive, even when a stall or a full disk stopped its heartbeat.
        alive, liveness = True, "lock"
    elif lock.held is False and lease.get("host") == socket.gethostname():
        # Free on the relay's own host: whatever the heartbeat says, that relay is gone.
        alive, liveness = False, "lock"
    if lock.held and lock.facts.get("owner") not in (None, lease.get("owner")):
        # A relay holds the lock but has not taken the lease yet (it is starting): name it.
        lease = {"owner": lock.facts["owner"], "pid": lock.facts.get("pid"), "host": lock.facts.get("host"),
                 "listen_host": lock.facts.get("listen_host"), "heartbeat_at": None,
                 "started_at": lock.facts.get("started_at"), "stopped_at": None}
        heartbeat_at = 0.0
    return RelayStatus(
        alive=alive,
        ready=alive and bool(lease.get("listening_at")),
        liveness=liveness,
        owner=lease.get("owner"),
        pid=lease.get("pid"),
        host=lease.get("host"),
        listen_host=lease.get("listen_host"),
        heartbeat_age=max(0.0, stamp - heartbeat_at) if heartbeat_at else None,
        started_at=lease.get("started_at"),
        stopped_at=lease.get("stopped_at"),
        **common,
    )
