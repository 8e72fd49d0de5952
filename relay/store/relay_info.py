"""What the live relay publishes about itself: the ports it serves and why others are not,
and which served ports speak implicit TLS (a setting: the ports table has no column for it)."""

from __future__ import annotations

from typing import Any

from relay.reasons import EventKind, Reason
from relay.store.connection import Connection, transaction
from relay.store.events import NewEvent, record_event
from relay.store.settings import get_setting, set_setting

# The served ports that speak implicit TLS (RFC 8314), a JSON list; every one of them
# is also in relay_ports as served.
IMPLICIT_TLS_KEY = "relay.implicit_tls_ports"


def publish_ports(
    db: Connection, served: list[int], not_served: dict[int, str], implicit_tls: list[int] | None = None
) -> None:
    with transaction(db):
        set_setting(db, IMPLICIT_TLS_KEY, sorted(implicit_tls or []))
        db.execute("DELETE FROM relay_ports")
        db.executemany("INSERT INTO relay_ports(port, served, reason) VALUES (?, 1, NULL)", [(p,) for p in served])
        db.executemany(
            "INSERT INTO relay_ports(port, served, reason) VALUES (?, 0, ?)", list(not_served.items())
        )


def served_ports(db: Connection) -> tuple[list[int], dict[int, str]]:
    """(served ports, {port: reason} for ports not served), as the last relay published."""
    served: list[int] = []
    not_served: dict[int, str] = {}
    for port, is_served, reason in db.execute("SELECT port, served, reason FROM relay_ports ORDER BY port"):
        if is_served:
            served.append(port)
        else:
            not_served[port] = reason or "not served"
    return served, not_served


def implicit_tls_ports(db: Connection) -> list[int]:
    """The served ports that speak implicit TLS, as the last relay published (sorted)."""
    value = get_setting(db, IMPLICIT_TLS_KEY, [])
    return sorted(int(p) for p in value) if isinstance(value, list) else []


def record_relay_change(
    db: Connection, kind: EventKind, reason: Reason, detail: str, facts: dict[str, Any] | None = None
) -> None:
    """An event about the live relay (TLS reloaded, …) and the facts it publishes anew."""
    with transaction(db):
        for key, value in (facts or {}).items():
            set_setting(db, key, value)
        record_event(db, NewEvent(kind=kind, reason=reason, detail=detail))
