"""DKIM keys in the store (table ``dkim_keys``): add, rotate, list, remove, and the
active keys with their private halves for the delivery engine's signer.

Only :func:`active_keys` reads a private key; every other read leaves the column out,
so no listing, event or export made from these rows can show one. Each change and its
event (kind ``operator``) are one transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from relay.dkim import KeyPair, StoredKey
from relay.reasons import EventKind, Reason
from relay.store import Connection, transaction
from relay.store.errors import AlreadyExists, InvalidInput, NotFound
from relay.store.events import NewEvent, record_event

_PUBLIC_COLUMNS = "domain, selector, algorithm, public_key, active, created_at, retired_at"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key without its private half."""

    domain: str
    selector: str
    algorithm: str
    public_key: str
    active: bool
    created_at: float
    retired_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> KeyInfo:
        return cls(row[0], row[1], row[2], row[3], bool(row[4]), float(row[5]), None if row[6] is None else float(row[6]))


def list_keys(db: Connection, domain: str | None = None) -> list[KeyInfo]:
    """Every key (of ``domain``), by domain, active first, then newest first."""
    where, args = ("WHERE domain = ?", (domain,)) if domain else ("", ())
    rows = db.execute(
        f"SELECT {_PUBLIC_COLUMNS} FROM dkim_keys {where} ORDER BY domain, active DESC, created_at DESC, selector",
        args,
    ).fetchall()
    return [KeyInfo.from_row(r) for r in rows]


def get_key(db: Connection, domain: str, selector: str) -> KeyInfo:
    row = db.execute(
        f"SELECT {_PUBLIC_COLUMNS} FROM dkim_keys WHERE domain = ? AND selector = ?", (domain, selector)
    ).fetchone()
    if row is None:
        raise NotFound(f"no DKIM key {selector} for {domain} — see `smtpplus dkim ls`")
    return KeyInfo.from_row(row)


def active_key(db: Connection, domain: str) -> KeyInfo | None:
    row = db.execute(f"SELECT {_PUBLIC_COLUMNS} FROM dkim_keys WHERE domain = ? AND active = 1", (domain,)).fetchone()
    return None if row is None else KeyInfo.from_row(row)


def selectors(db: Connection, domain: str) -> list[str]:
    return [r[0] for r in db.execute("SELECT selector FROM dkim_keys WHERE domain = ?", (domain,)).fetchall()]


def active_keys(db: Connection) -> list[StoredKey]:
    """The active key of every domain, private half included: for the signer only."""
    rows = db.execute(
        "SELECT domain, selector, algorithm, private_key FROM dkim_keys WHERE active = 1 ORDER BY domain"
    ).fetchall()
    return [StoredKey(r[0], r[1], r[2], r[3]) for r in rows]


def add_key(db: Connection, domain: str, selector: str, pair: KeyPair, *, now: float | None = None) -> KeyInfo:
    """The domain's first active key. A domain that has one is refused (rotate it)."""
    stamp = time.time() if now is None else now
    with transaction(db):
        current = active_key(db, domain)
        if current is not None:
            raise InvalidInput(
                f"{domain} already signs with key {current.selector} — use `smtpplus dkim rotate {domain}` for a new one"
            )
        _insert(db, domain, selector, pair, stamp)
        record_event(db, NewEvent(
            EventKind.OPERATOR, Reason.DKIM_KEY_ADDED, at=stamp,
            detail=f"DKIM key {selector} ({pair.algorithm}) added for {domain}: publish it, then it signs",
        ))
    return get_key(db, domain, selector)


def rotate_key(
    db: Connection, domain: str, selector: str, pair: KeyPair, *, now: float | None = None
) -> tuple[KeyInfo, KeyInfo]:
    """A new active key for ``domain``; the active one is retired (kept, signs nothing).
    Returns (new, retired)."""
    stamp = time.time() if now is None else now
    with transaction(db):
        current = active_key(db, domain)
        if current is None:
            raise InvalidInput(f"{domain} has no active DKIM key to rotate — add one with `smtpplus dkim add {domain}`")
        db.execute(
            "UPDATE dkim_keys SET active = 0, retired_at = ? WHERE domain = ? AND selector = ?",
            (stamp, domain, current.selector),
        )
        _insert(db, domain, selector, pair, stamp)
        record_event(db, NewEvent(
            EventKind.OPERATOR, Reason.DKIM_KEY_ROTATED, at=stamp,
            detail=f"DKIM key {selector} ({pair.algorithm}) now signs for {domain}; {current.selector} retired",
        ))
    return get_key(db, domain, selector), get_key(db, domain, current.selector)


def remove_key(db: Connection, domain: str, selector: str, *, now: float | None = None) -> KeyInfo:
    stamp = time.time() if now is None else now
    with transaction(db):
        key = get_key(db, domain, selector)
        db.execute("DELETE FROM dkim_keys WHERE domain = ? AND selector = ?", (domain, selector))
        what = "the active key: mail from it goes unsigned" if key.active else "retired"
        record_event(db, NewEvent(
            EventKind.OPERATOR, Reason.DKIM_KEY_REMOVED, at=stamp,
            detail=f"DKIM key {selector} of {domain} removed ({what})",
        ))
    return key


def _insert(db: Connection, domain: str, selector: str, pair: KeyPair, stamp: float) -> None:
    if db.execute("SELECT 1 FROM dkim_keys WHERE domain = ? AND selector = ?", (domain, selector)).fetchone():
        raise AlreadyExists(f"{domain} already has a key with selector {selector} — choose another --selector")
    db.execute(
        "INSERT INTO dkim_keys(domain, selector, algorithm, private_key, public_key, active, created_at, retired_at) "
        "VALUES (?, ?, ?, ?, ?, 1, ?, NULL)",
        (domain, selector, pair.algorithm, pair.private_pem, pair.public, stamp),
    )
