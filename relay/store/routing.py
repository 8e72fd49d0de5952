"""Where mail goes besides the MX records: the operator's transport map (``routes``:
a recipient domain sent to a fixed HOST:PORT, as Postfix's transport map), and the
delivery engine's per-destination state (``destinations``) that ``queue destinations``
and the console show beside the queued counts.

SQL here runs on SQLite and PostgreSQL alike (``?`` placeholders, ``ON CONFLICT``,
times as REAL epoch seconds from Python).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.reasons import EventKind, Reason
from relay.store import Connection, InvalidInput, NotFound, transaction
from relay.store.connection import Statement
from relay.store.events import NewEvent, record_event

ACTIVE_STATES = ("queued", "sending", "deferred", "held")
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True, slots=True)
class Route:
    domain: str
    host: str
    port: int
    created_at: float

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_route_domain(text: str) -> str:
    """A recipient domain as routes keep it: lower case, no final dot, IDN as A-label."""
    value = text.strip().rstrip(".").lower()
    if value and not value.isascii():
        try:
            value = value.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidInput(f"domain {text!r} is not a valid internationalized domain name") from None
    if not _DOMAIN.fullmatch(value):
        raise InvalidInput(f"domain {text!r} is not a domain name — e.g. example.com")
    return value


def add_route(db: Connection, domain: str, host: str, port: int, *, now: float | None = None) -> Route:
    """Send mail for ``domain`` to HOST:PORT instead of its MX hosts (replaces a route
    for the same domain). Recorded as an operator event."""
    name = parse_route_domain(domain)
    if not 1 <= port <= 65535:
        raise InvalidInput(f"port {port} is out of range 1-65535")
    stamp = time.time() if now is None else now
    with transaction(db):
        db.execute(
            "INSERT INTO routes(domain, host, port, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (domain) DO UPDATE SET host = excluded.host, port = excluded.port, created_at = excluded.created_at",
            (name, host, port, stamp),
        )
        route = Route(name, host, port, stamp)
        record_event(db, NewEvent(EventKind.OPERATOR, Reason.ROUTE_CHANGED, detail=f"route {name} → {route.address}"))
    return route


def remove_route(db: Connection, domain: str) -> Route:
    """Forget ``domain``'s route (its mail goes to its MX hosts again). NotFound if none."""
    name = parse_route_domain(domain)
    with transaction(db):
        row = db.execute("SELECT domain, host, port, created_at FROM routes WHERE domain = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no route for {name} — see `smtpplus routes ls`")
        db.execute("DELETE FROM routes WHERE domain = ?", (name,))
        record_event(db, NewEvent(EventKind.OPERATOR, Reason.ROUTE_CHANGED, detail=f"route {name} removed"))
    return Route(row[0], row[1], int(row[2]), float(row[3]))


def list_routes(db: Connection) -> list[Route]:
    rows = db.execute("SELECT domain, host, port, created_at FROM routes ORDER BY domain").fetchall()
    return [Route(r[0], r[1], int(r[2]), float(r[3])) for r in rows]


def route_map(db: Connection) -> dict[str, tuple[str, int]]:
    """domain → (host, port), for the delivery engine."""
    return {r.domain: (r.host, r.port) for r in list_routes(db)}


# ---------------------------------------------------------------------------
# Destination state


@dataclass(frozen=True, slots=True)
class DestinationState:
    """What the engine knows of one destination (written by its rounds)."""

    domain: str
    in_flight: int
    last_reply: str | None
    last_at: float | None
    backoff_until: float | None
    failures: int


def record_destinations(db: Connection, states: Sequence[DestinationState], now: float) -> None:
    """Upsert the engine's view of these destinations (inside the caller's transaction)."""
    if not states:
        return
    db.executemany(_UPSERT_DESTINATION, [_destination_row(s, now) for s in states])


def destination_statements(states: Sequence[DestinationState], now: float) -> list[Statement]:
    """:func:`record_destinations` as statements, for a batch (``Dialect.batch``)."""
    return [(_UPSERT_DESTINATION, _destination_row(s, now)) for s in states]


_UPSERT_DESTINATION = (
    "INSERT INTO destinations(domain, in_flight, last_reply, last_at, backoff_until, failures, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (domain) DO UPDATE SET in_flight = excluded.in_flight, "
    "last_reply = excluded.last_reply, last_at = excluded.last_at, backoff_until = excluded.backoff_until, "
    "failures = excluded.failures, updated_at = excluded.updated_at"
)


def _destination_row(s: DestinationState, now: float) -> tuple[Any, ...]:
    return (s.domain, s.in_flight, (s.last_reply or "")[:1000] or None, s.last_at, s.backoff_until, s.failures, now)


@dataclass(frozen=True, slots=True)
class DestinationRow:
    """One line of ``queue destinations``."""

    domain: str
    queued: int  # recipients still to deliver, in messages not finished
    in_flight: int
    last_reply: str | None
    last_at: float | None
    backoff_until: float | None
    route: str | None  # HOST:PORT when a route sends it there, else None (its MX hosts)

    def backing_off(self, now: float) -> bool:
        return self.backoff_until is not None and self.backoff_until > now


def destination_rows(db: Connection, *, limit: int = 1000) -> list[DestinationRow]:
    """Every destination with mail to deliver or engine state, busiest first."""
    marks = ",".join("?" * len(ACTIVE_STATES))
    queued = {
        str(domain or ""): int(n)
        for domain, n in db.execute(
            "SELECT r.domain, count(*) FROM recipients r JOIN messages m ON m.id = r.message_id "
            f"WHERE m.state IN ({marks}) AND r.state IN ('queued', 'deferred') GROUP BY r.domain",
            ACTIVE_STATES,
        )
    }
    state = {
        row[0]: row
        for row in db.execute("SELECT domain, in_flight, last_reply, last_at, backoff_until FROM destinations")
    }
    routes = {r.domain: r.address for r in list_routes(db)}
    rows = []
    for domain in set(queued) | set(state):
        s = state.get(domain)
        rows.append(
            DestinationRow(
                domain, queued.get(domain, 0), int(s[1]) if s else 0, s[2] if s else None, s[3] if s else None,
                s[4] if s else None, routes.get(domain),
            )
        )
    rows.sort(key=lambda r: (-r.queued, -r.in_flight, r.domain))
    return rows[:limit]
