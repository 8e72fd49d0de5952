"""What the live relay publishes about itself: the ports it serves and why others are not."""

from __future__ import annotations

import sqlite3

from relay.store.db import transaction


def publish_ports(db: sqlite3.Connection, served: list[int], not_served: dict[int, str]) -> None:
    with transaction(db):
        db.execute("DELETE FROM relay_ports")
        db.executemany("INSERT INTO relay_ports(port, served, reason) VALUES (?, 1, NULL)", [(p,) for p in served])
        db.executemany(
            "INSERT INTO relay_ports(port, served, reason) VALUES (?, 0, ?)", list(not_served.items())
        )


def served_ports(db: sqlite3.Connection) -> tuple[list[int], dict[int, str]]:
    """(served ports, {port: reason} for ports not served), as the last relay published."""
    served: list[int] = []
    not_served: dict[int, str] = {}
    for port, is_served, reason in db.execute("SELECT port, served, reason FROM relay_ports ORDER BY port"):
        if is_served:
            served.append(port)
        else:
            not_served[port] = reason or "not served"
    return served, not_served
