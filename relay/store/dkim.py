"""DKIM keys in the store (table ``dkim_keys``): add, stage and activate (a rotation),
rotate at once, list, remove, and the active keys with their private halves for the
delivery engine's signer.

A key is active (``active`` 1: it signs), pending (0, never retired: staged by a
rotation, it signs once activated) or retired (0, ``retired_at`` set: it signs nothing).

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

    @property
    def pending(self) -> bool:
        """Staged by a rotation, not signing yet (never active)."""
        return not self.active and self.retired_at is None

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
        _refuse_if_waiting(db, domain)
        _insert(db, domain, selector, pair, stamp)
        record_event(db, NewEvent(
            EventKind.OPERATOR, Reason.DKIM_KEY_ADDED, at=stamp,
            detail=f"DKIM key {selector} ({pair.algorithm}) added for {domain}: it signs from now on; publish its record",
        ))
    return get_key(db, domain, selector)


def pending_key(db: Connection, domain: str) -> KeyInfo | None:
    row = db.execute(
        f"SELECT {_PUBLIC_COLUMNS} FROM dkim_keys WHERE domain = ? AND active = 0 AND retired_at IS NULL", (domain,)
    ).fetchone()
    return None if row is None else KeyInfo.from_row(row)


def stage_key(db: Connection, domain: str, selector: str, pair: KeyPair, *, now: float | None = None) -> tuple[KeyInfo, KeyInfo]:
    """A rotation's new key, pending: the active key signs on until :func:`activate_key`
    (once the new record is published — a key that signed before receivers could find
    its record would fail every signature meanwhile). Returns (pending, active)."""
    stamp = time.time() if now is None else now
    with transaction(db):
        current = _to_rotate(db, domain)
        _refuse_if_waiting(db, domain)
        _insert(db, domain, selector, pair, stamp, active=False)
        record_event(db, NewEvent(
            EventKind.OPERATOR, Reason.DKIM_KEY_STAGED, at=stamp,
            detail=f"DKIM key {selector} ({pair.algorithm}) staged for {domain}: {current.selector} signs until "
            f"it is activated (`smtpplus dkim activate {domain}`, once its record is published)",
        ))
    return get_key(db, domain, selector), current


def activate_key(
    db: Connection, domain: str, selector: str, *, public_key: str | None = None, now: float | None = None
) -> tuple[KeyInfo, KeyInfo | None]:
    """The pending key ``selector`` (with ``public_key``, when given: the one whose
    record was checked) signs from now on; the active one is retired. Returns
    (new, retired)."""
    stamp = time.time() if now is None else now
    with transaction(db):
        key = get_key(db, domain, selector)
        if not key.pending:
            raise InvalidInput(f"DKIM key {selector} of {domain} is {'active' if key.active else 'retired'}, not waiting to sign")
        current = active_key(db, domain)
        if current is not None:
            _retire(db, domain, current.selector, stamp)
        # Still the key that was read (and checked): another operator's `dkim rm` (and a
        # new rotation under the same selector) between the two leaves nothing to activate.
        same = db.execute(
            "UPDATE dkim_keys SET active = 1 WHERE domain = ? AND selector = ? AND active = 0 AND retired_at IS NULL "
            "AND public_key = ? RETURNING selector",
            (domain, selector, key.public_key if public_key is None else public_key),
        ).fetchone()
        if same is None:
            raise InvalidInput(f"DKIM key {selector} of {domain} changed meanwhile — see `smtpplus dkim ls {domain}`")
        record_event(db, NewEvent(
            EventKind.OPERATOR, Reason.DKIM_KEY_ROTATED, at=stamp,
            detail=f"DKIM key {selector} now signs for {domain}" + (f"; {current.selector} retired" if current else ""),
        ))
    return get_key(db, domain, selector), None if current is None else get_key(db, domain, current.selector)


def rotate_key(
    db: Connection, domain: str, selector: str, pair: KeyPair, *, now: float | None = None
) -> tuple[KeyInfo, KeyInfo]:
    """A new active key for ``domain`` at once (before its record can be published: for
    a key that must stop signing now); the active one is retired (kept, signs
    nothing). Returns (new, retired)."""
    stamp = time.time() if now is None else now
    with transaction(db):
        current = _to_rotate(db, domain)
        waiting = pending_key(db, domain)
        if waiting is not None:  # else a later `dkim activate` would retire this key for the one waiting
            raise InvalidInput(
                f"{domain} has key {waiting.selector} waiting for its record — `smtpplus dkim activate {domain} --force` "
                f"switches to it now, or `smtpplus dkim rm {domain} {waiting.selector} --yes` first"
            )
        _retire(db, domain, current.selector, stamp)
        _insert(db, domain, selector, pair, stamp)
        record_event(db, NewEvent(
            EventKind.OPERATOR, Reason.DKIM_KEY_ROTATED, at=stamp,
            detail=f"DKIM key {selector} ({pair.algorithm}) now signs for {domain}, at once; {current.selector} retired",
        ))
    return get_key(db, domain, selector), get_key(db, domain, current.selector)


def _to_rotate(db: Connection, domain: str) -> KeyInfo:
    current = active_key(db, domain)
    if current is None:
        _refuse_if_waiting(db, domain)
        raise InvalidInput(f"{domain} has no active DKIM key to rotate — add one with `smtpplus dkim add {domain}`")
    return current


def _refuse_if_waiting(db: Connection, domain: str) -> None:
    """A rotation's key waits: it is the way on — another key now would be retired by
    its activation (or, staged too, wait beside it)."""
    waiting = pending_key(db, domain)
    if waiting is not None:
        raise InvalidInput(
            f"{domain} already has key {waiting.selector} waiting for its record — publish it and "
            f"`smtpplus dkim activate {domain}`, or `smtpplus dkim rm {domain} {waiting.selector} --yes` first"
        )


def _retire(db: Connection, domain: str, selector: str, stamp: float) -> None:
    db.execute("UPDATE dkim_keys SET active = 0, retired_at = ? WHERE domain = ? AND selector = ?", (stamp, domain, selector))


def remove_key(db: Connection, domain: str, selector: str, *, now: float | None = None) -> KeyInfo:
    stamp = time.time() if now is None else now
    with transaction(db):
        key = get_key(db, domain, selector)
        db.execute("DELETE FROM dkim_keys WHERE domain = ? AND selector = ?", (domain, selector))
        what = "the active key: mail from it goes unsigned" if key.active else "pending" if key.pending else "retired"
        record_event(db, NewEvent(
            EventKind.OPERATOR, Reason.DKIM_KEY_REMOVED, at=stamp,
            detail=f"DKIM key {selector} of {domain} removed ({what})",
        ))
    return key


def _insert(db: Connection, domain: str, selector: str, pair: KeyPair, stamp: float, *, active: bool = True) -> None:
    if db.execute("SELECT 1 FROM dkim_keys WHERE domain = ? AND selector = ?", (domain, selector)).fetchone():
        raise AlreadyExists(f"{domain} already has a key with selector {selector} — choose another --selector")
    db.execute(
        "INSERT INTO dkim_keys(domain, selector, algorithm, private_key, public_key, active, created_at, retired_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
        (domain, selector, pair.algorithm, pair.private_pem, pair.public, int(active), stamp),
    )
