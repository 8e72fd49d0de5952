"""Many relays on one PostgreSQL store: each relay's own advisory lock.

Every relay holds a session-level advisory lock on a key derived from its own id
(:func:`key_of`) on a connection of its own, from start to stop. The server lets go of
it the instant that connection ends — the process died (kill -9 included), its host
did, or the network between them — so *a relay whose lock is free is dead*, by the
database's own judgement: no clock of any relay is consulted. :func:`held_keys` asks
``pg_locks`` which keys live sessions hold; the shared module
:mod:`relay.store.relays` turns that into the list of live relays and reclaims the
in-flight messages of dead ones.

The keys are 60-bit numbers, so they never meet the migrations' advisory lock
(:data:`relay.store.postgres.schema.MIGRATION_LOCK`, above 2**62).
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg

from relay.store.errors import StoreError
from relay.store.postgres.connection import connect, store_errors, translate

# pg_locks shows a bigint advisory key as (classid, objid) = (high, low) 32 bits, objsubid 1.
_HELD = (
    "SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND objsubid = 1"
)


def key_of(owner: str) -> int:
    """The advisory-lock key of the relay ``owner`` (a hex id): its first 15 hex digits."""
    digits = "".join(c for c in owner.lower() if c in "0123456789abcdef")[:15]
    return int(digits or "0", 16)


def held_keys(db: Any) -> set[int]:
    """The advisory keys live sessions hold in the store's database."""
    with store_errors(db.location):
        rows = db.raw.execute(_HELD).fetchall()
    return {(int(high) << 32) | int(low) for high, low in rows}


def database_now(db: Any) -> float:
    """The database server's clock, in epoch seconds (``clock_timestamp()``): what
    every relay's heartbeat is stamped with, so relays on hosts whose clocks differ
    still agree on ages."""
    with store_errors(db.location):
        row = db.raw.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    return float(row[0])


# This process's relays' locks, by owner: the heartbeat (on a store thread) keeps them.
_MINE: dict[str, PgMemberLock] = {}


def keep(owner: str) -> None:
    """Keep the lock of this process's relay ``owner`` (no-op for another process's)."""
    lock = _MINE.get(owner)
    if lock is not None:
        lock.keep()


class PgMemberLock:
    """A relay's lock on its own id (a :class:`relay.store.interfaces.RelayLock`):
    any number of relays hold one each. ``facts`` must name the relay's ``owner``."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._conn: psycopg.Connection[Any] | None = None
        self._facts: dict[str, Any] = {}
        self.key: int | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def acquire(self, facts: dict[str, Any]) -> None:
        key = key_of(str(facts["owner"]))
        try:
            conn = connect(self.location, application_name="smtpplus-relay")
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        except psycopg.Error as exc:
            raise translate(exc, self.location) from None
        if not got or not got[0]:  # only a relay with the same id: never a fresh one
            conn.close()
            raise StoreError(f"relay id {facts['owner']} is in use by another live relay — start it again (a new id)")
        self._conn, self.key = conn, key
        self._facts.update(facts)
        _MINE[str(facts["owner"])] = self

    def note(self, **facts: Any) -> None:
        # Readers learn about live relays from their heartbeat rows (relay.store.relays).
        self._facts.update(facts)

    def keep(self) -> None:
        """Still hold the lock: when its connection was lost (a server restart), take
        it again on a new one. A failure is the store's error (the next beat retries)."""
        conn = self._conn
        if conn is None or self.key is None:
            return
        try:
            conn.execute("SELECT 1")
            return
        except psycopg.Error:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        try:
            fresh = connect(self.location, application_name="smtpplus-relay")
            got = fresh.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        except psycopg.Error as exc:
            raise translate(exc, self.location) from None
        if not got or not got[0]:
            fresh.close()
            raise StoreError("this relay's lock is held by another session — restart the relay")
        self._conn = fresh

    def release(self) -> None:
        _MINE.pop(str(self._facts.get("owner")), None)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            with contextlib.suppress(psycopg.Error):
                conn.close()
