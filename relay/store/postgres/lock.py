"""One relay per PostgreSQL store: a session-level advisory lock.

The relay holds ``pg_try_advisory_lock(RELAY_LOCK)`` on a connection of its own from
start to stop; the server lets go of it the instant that connection ends (the relay's
process died, or the network between them did). Who holds it (pid, host) is written
to the setting ``relay.lock`` for readers; :func:`lock_state` asks ``pg_locks``
whether a live session holds it. Advisory locks belong to one database, which is
the store.

Several relays on one store (each with a lock on its own id) are the next step of
issue 15; this keeps today's rule, one relay per store, on PostgreSQL too.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import psycopg

from relay.store.errors import RelayAlreadyRunning
from relay.store.interfaces import LockState
from relay.store.postgres.connection import connect, store_errors, translate
from relay.store.postgres.location import masked

RELAY_LOCK = 0x736D7470706C7572 & 0x7FFFFFFFFFFFFFFF  # "smtpplur": any fixed bigint of ours
FACTS_KEY = "relay.lock"

# pg_locks shows a bigint advisory key as (classid, objid) = (high, low) 32 bits, objsubid 1.
_HELD = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = %s AND objid = %s AND objsubid = 1)"
)
_KEY = ((RELAY_LOCK >> 32) & 0xFFFFFFFF, RELAY_LOCK & 0xFFFFFFFF)


class PgRelayLock:
    """The relay's advisory lock on a PostgreSQL store (a
    :class:`relay.store.interfaces.RelayLock`)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._conn: psycopg.Connection[Any] | None = None
        self._facts: dict[str, Any] = {}

    @property
    def held(self) -> bool:
        return self._conn is not None

    def acquire(self, facts: dict[str, Any]) -> None:
        try:
            conn = connect(self.location, application_name="smtpplus-relay-lock")
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,)).fetchone()
        except psycopg.Error as exc:
            raise translate(exc, self.location) from None
        if not got or not got[0]:
            holder = _read_facts(conn)
            conn.close()
            raise RelayAlreadyRunning(
                f"a relay is already running on this store (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, listening on {holder.get('listen_host', '?')}; it holds "
                f"the store's advisory lock in {masked(self.location)}) — stop it first, or use another --db",
                owner=str(holder.get("owner") or ""),
                pid=holder.get("pid"),
                host=holder.get("host"),
                age=0.0,
            )
        self._conn = conn
        self.note(**facts)

    def note(self, **facts: Any) -> None:
        """Write who holds the lock (or why it stopped) for readers. Best effort."""
        if self._conn is None:
            return
        self._facts.update(facts)
        with contextlib.suppress(psycopg.Error):
            self._conn.execute(
                "INSERT INTO settings(key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (FACTS_KEY, json.dumps(self._facts)),
            )

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (RELAY_LOCK,))
            with contextlib.suppress(psycopg.Error):
                conn.close()


def _read_facts(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    with contextlib.suppress(psycopg.Error, ValueError, TypeError):
        row = conn.execute("SELECT value FROM settings WHERE key = %s", (FACTS_KEY,)).fetchone()
        value = json.loads(row[0]) if row else {}
        return value if isinstance(value, dict) else {}
    return {}


def lock_state(db: Any) -> LockState:
    """Whether a live session holds the relay lock of the store ``db`` is open on."""
    with store_errors(db.location):
        held = db.raw.execute(_HELD, _KEY).fetchone()[0]
    return LockState(bool(held), _read_facts(db.raw))
