"""The PostgreSQL backend's connection edge: opening a store (migrations), the
connection adapter the store's operations run on, transactions, and the translation
of psycopg errors into the store's own (:mod:`relay.store.errors`).

The operations in :mod:`relay.store` are written once for both backends: ``?``
placeholders, rows read by name or position, ``RETURNING``, ``ON CONFLICT``, times
as epoch seconds, booleans as 0/1. :class:`PgConnection` makes a psycopg connection
answer them as ``sqlite3`` does: it rewrites ``?`` to ``%s`` (and a literal ``%`` to
``%%``), gives rows indexable by name and position (:class:`Row`), stays in
autocommit with explicit transactions, and raises only store errors — every psycopg
error is translated where it happens (:func:`translate`), so nothing outside this
package ever sees one. Its ``dialect`` is ``"postgresql"`` for the few queries that
must differ.

psycopg 3 rather than asyncpg: the store's operations are synchronous functions run
on a store thread (the same bridge as SQLite's), and psycopg has both a sync and an
async API, a pool (psycopg-pool) and LISTEN/NOTIFY on either; asyncpg is async only.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.adapt import Dumper, Loader
from psycopg.pq import TransactionStatus

from relay.store.connection import Result, Statement
from relay.store.errors import (
    AlreadyExists,
    Conflict,
    StoreBusy,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreUnavailable,
)
from relay.store.postgres import schema
from relay.store.postgres.location import database_name, masked, normalize, scrub

CONNECT_TIMEOUT = 10  # seconds to reach the server before "unavailable"
# A writer waits this long for a row lock before StoreBusy (SQLite: busy_timeout).
LOCK_TIMEOUT_MS = 10_000
# Every session of ours: durable commits (synchronous_commit=on: a COMMIT returns once
# the WAL is on disk, so a 250 after it is a promise kept — the server's default,
# stated in case it is not), a bounded wait for locks, and the change feed's
# notification sent by this adapter after a writing COMMIT (smtpplus.notify, read by
# the tables' notify trigger: see schema.NOTIFY_AFTER_COMMIT).
SESSION_OPTIONS = (
    f"-c synchronous_commit=on -c lock_timeout={LOCK_TIMEOUT_MS} -c {schema.NOTIFY_SETTING}={schema.NOTIFY_AFTER_COMMIT}"
)

__all__ = [
    "PgConnection",
    "configure",
    "lease_transaction",
    "Row",
    "connect",
    "open_store",
    "store_errors",
    "transaction",
    "translate",
]


# -- rows ------------------------------------------------------------------------


class Row(tuple):
    """A result row indexable by position and by column name, like ``sqlite3.Row``
    (names match case-insensitively; ``keys()`` lists them)."""

    __slots__ = ()
    _names: tuple[str, ...] = ()
    _index: dict[str, int] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            index = self._index.get(key)
            if index is None:
                index = self._index.get(key.lower())
                if index is None:
                    raise IndexError(f"no column named {key!r}")
            return tuple.__getitem__(self, index)
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    # One class per column list, made once: psycopg asks for a row factory on every
    # statement, and building a class each time was ~10% of a group commit's CPU.
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)
        index.setdefault(name.lower(), i)
    return type("Row", (Row,), {"__slots__": (), "_names": names, "_index": index})


_ROWS = (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.SINGLE_TUPLE)


def _row_factory(cursor: Any) -> Any:
    # The names straight from the result: ``cursor.description`` builds a Column object
    # per column for every result (measured: a tenth of a claim round's client CPU).
    result = cursor.pgresult
    if result is None or result.status not in _ROWS:  # a command's result, or a COPY's
        return tuple
    return _row_class(tuple(bytes(result.fname(i)).decode() for i in range(result.nfields)))


# -- types: what SQLite gives back, PostgreSQL gives back ----------------------------


class _BoolAsInteger(Dumper):
    """Python booleans go in as 0/1: the schema's flags are INTEGER, as in SQLite."""

    oid = psycopg.adapters.types["int4"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


class _NumericAsNumber(Loader):
    """``sum()`` of BIGINTs is NUMERIC: read it as int (or float), as SQLite does,
    never as Decimal."""

    def load(self, data: Any) -> Any:
        text = bytes(data).decode()
        try:
            return int(text)
        except ValueError:
            return float(text)


def configure(conn: psycopg.Connection[Any]) -> None:
    """Rows by name and position; booleans in as 0/1; NUMERIC out as int or float."""
    conn.row_factory = _row_factory
    conn.adapters.register_dumper(bool, _BoolAsInteger)
    conn.adapters.register_loader("numeric", _NumericAsNumber)


# -- placeholders ----------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str, named: bool = False) -> str:
    """``?`` placeholders as psycopg's ``%s`` (``named``: SQLite's ``:name`` as
    ``%(name)s``); a literal ``%`` doubled. Quoted text ('…', "…") and comments are
    left as they are."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in ("'", '"'):
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # doubled quote inside
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
            continue
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
            continue
        if ch == "?":
            out.append("%s")
        elif named and ch == ":" and i + 1 < n and (sql[i + 1].isalpha() or sql[i + 1] == "_"):
            end = i + 1
            while end < n and (sql[end].isalnum() or sql[end] == "_"):
                end += 1
            out.append(f"%({sql[i + 1 : end]})s")
            i = end
            continue
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def to_numbered(sql: str) -> str:
    """``?`` placeholders as ``$1``, ``$2``, … for ``PREPARE`` (a literal ``%`` doubled,
    as :func:`to_pyformat` does: the text goes through psycopg's formatting too)."""
    numbers = itertools.count(1)
    return re.sub(r"%%|%s", lambda m: "%%" if m.group() == "%%" else f"${next(numbers)}", to_pyformat(sql))


_BEGIN_WORDS = ("BEGIN IMMEDIATE", "BEGIN DEFERRED", "BEGIN EXCLUSIVE")
# Statements that change rows (their rowcount says how many): a transaction with one
# that changed something is announced on the change channel after its COMMIT.
_WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE", "COPY"})
_BEGINS = frozenset({"BEGIN", "START"})
_ENDS = frozenset({"COMMIT", "ROLLBACK", "END", "ABORT"})
_COMMITS = frozenset({"COMMIT", "END"})


def _first_word(sql: str) -> str:
    head = sql.lstrip()[:16].split(None, 1)
    return head[0].rstrip(";").upper() if head else ""


def _statement(sql: str) -> str:
    # SQLite's lock modes of BEGIN: PostgreSQL has row locks, a plain BEGIN is right.
    stripped = sql.strip().rstrip(";").upper()
    if stripped in _BEGIN_WORDS:
        return "BEGIN"
    return sql


# -- errors ----------------------------------------------------------------------

_UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03", "53300", "3D000", "28")
_BUSY_STATES = ("40001", "40P01", "55P03", "57014")
_FULL_STATES = ("53100", "53400")
_CORRUPT_STATES = ("XX001", "XX002")


def translate(exc: psycopg.Error, location: str | None = None) -> StoreError:
    """The store's own error for a psycopg one: one line, password masked.

    The kind decides what callers do: a relay answers ``452 4.3.1`` to
    :class:`StoreFull` and ``451 4.3.0`` to the other :class:`StoreUnavailable`
    (a refused connection, a server shutting down, a lock held too long)."""
    where = f"store {masked(location)}" if location else "store"
    state = exc.sqlstate or ""
    text = " ".join(str(exc).split())  # one line
    if location:
        text = scrub(text, location)
    if state.startswith(_CORRUPT_STATES):
        return StoreCorrupt(f"{where} is damaged ({text}) — stop using it and restore the latest pg_dump")
    if state.startswith(_FULL_STATES):
        return StoreFull(f"{where} is full ({text}) — free disk space on the database server")
    if state.startswith(_BUSY_STATES):
        return StoreBusy(f"{where} is busy ({text}) — another writer held it too long; try again")
    if state == "23505":
        return AlreadyExists(f"{where} refused the change: {text}")
    if state.startswith("23"):
        return Conflict(f"{where} refused the change: {text}")
    if state.startswith(_UNAVAILABLE_STATES) or isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return StoreUnavailable(
            f"{where} is unavailable ({text}) — check that the PostgreSQL server is running and --db is right"
        )
    return StoreUnavailable(f"store error: {text} — check --db and the database's permissions")


@contextlib.contextmanager
def store_errors(location: str | None = None) -> Iterator[None]:
    """Translate any psycopg error raised inside into the store's own."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, location) from None


# -- the connection adapter --------------------------------------------------------


_VERSIONS = itertools.count(1)
# Names of the statements batches prepare (PREPARE … / EXECUTE …): unique in the
# process, so a name is never prepared twice on one server session.
_PREPARED_NAMES = itertools.count(1)
# Command tags after which psycopg forgets its own prepared statements and sends
# DEALLOCATE ALL (psycopg's PrepareManager): ours may be gone too.
_DEALLOCATING = re.compile(r"^(?:DROP|ALTER|ROLLBACK|DISCARD ALL|DEALLOCATE ALL)\b")
# At most this many prepared per connection (texts with a list of n values differ
# per n): the ones after go unprepared.
MAX_PREPARED = 200


class PgConnection:
    """A psycopg connection that speaks the store's dialect-neutral SQL (see the
    module's doc). One per thread at a time, like a ``sqlite3`` connection.

    A connection the server dropped (a restart, a network cut) is replaced by the
    next statement outside a transaction: the call that met the drop got
    :class:`StoreUnavailable` (a relay answers ``451 4.3.0``), the next one works
    once the server answers. Inside a transaction it is not replaced — the work
    so far is gone, so the statement fails and the caller's transaction rolls back.
    """

    dialect = "postgresql"

    def __init__(
        self,
        raw: psycopg.Connection[Any],
        location: str,
        *,
        release: Callable[[psycopg.Connection[Any]], None] | None = None,
        reopen: Callable[[], psycopg.Connection[Any]] | None = None,
    ) -> None:
        self.raw = raw
        self.location = location
        self._release = release  # gives a pooled connection back instead of closing it
        self._reopen = reopen or (lambda: connect(location))
        self._held = True  # self.raw is ours to give back (not yet released)
        self._explicit = False  # inside a BEGIN … COMMIT/ROLLBACK of the caller's
        self._wrote = False  # the transaction under way changed rows: announce its COMMIT
        self.notified = 0  # change notifications this connection sent (tests, benchmarks)
        self.note = ""  # what its notifications say the commits wrote (see announcing)
        self.feeds: list[Any] = []  # change feeds listening for this connection
        self._listening: psycopg.Connection[Any] | None = None  # the raw one LISTENing
        self._version = 0
        # A lease transaction's opening (BEGIN, its synchronous_commit), held back to
        # go with its first statement; and whether its COMMIT skips the WAL flush.
        self._opening: list[str] = []
        self._relaxed = False
        # The batches' statements prepared on the server session (their text → name),
        # and the raw connection that session is.
        self._prepared: dict[str, str] = {}
        self._prepared_on: psycopg.Connection[Any] | None = None
        self._prepared_doubt = False  # psycopg may have deallocated them all since

    def __repr__(self) -> str:
        return f"<PgConnection {masked(self.location)}>"

    @property
    def backend_pid(self) -> int:
        return int(self.raw.info.backend_pid)

    @property
    def in_transaction(self) -> bool:
        if self._opening:
            return True
        if self._broken():
            return self._explicit  # a lost transaction is the caller's until it rolls back
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def _broken(self) -> bool:
        return bool(self.raw.closed) or self.raw.info.transaction_status == TransactionStatus.UNKNOWN

    def _replace(self) -> None:
        """A fresh connection for the dropped one (given back to the pool, which
        throws it away, or closed)."""
        if self._held:  # once: a failed reopen leaves the dropped one, already given back
            self._held = False
            with contextlib.suppress(psycopg.Error):
                if self._release is not None:
                    self._release(self.raw)
                else:
                    self.raw.close()
        self._prepared, self._prepared_on = {}, None  # a new session has none of the old one's
        try:
            self.raw = self._reopen()  # a pool's says "unavailable" within seconds (bridge.checkout)
        except psycopg.Error as exc:
            raise translate(exc, self.location) from None
        self._held = True

    def _ready(self, word: str) -> bool:
        """Before a statement: replace a dropped connection where that is safe.
        False when the statement has nothing left to do (a ROLLBACK of a lost
        transaction)."""
        if not self._broken():
            return True
        if self._explicit:
            if word in _ENDS:
                self._explicit = False
                self._replace()
                return False
            raise StoreUnavailable(
                f"store {masked(self.location)} is unavailable (the connection was lost in a transaction) "
                "— check that the PostgreSQL server is running; try again"
            )
        self._replace()
        return True

    def execute(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = (), /) -> psycopg.Cursor[Any]:
        word = _first_word(sql)
        if self._opening:
            if word in _ENDS:  # nothing was sent: nothing to end
                self._end()
                return self.raw.cursor()
            self._open()
        if not self._ready(word):
            return self.raw.execute("SELECT 1")
        try:
            if word in _COMMITS and self._wrote and self._explicit:
                cursor = self._commit_and_notify()
            elif not parameters:
                cursor = self.raw.execute(_statement(sql))
            elif isinstance(parameters, Mapping):
                cursor = self.raw.execute(to_pyformat(sql, named=True), dict(parameters))
            else:
                cursor = self.raw.execute(to_pyformat(sql), tuple(parameters))
            if word in _WRITES and cursor.rowcount != 0:
                self._changed()
        except psycopg.Error as exc:
            if word in _ENDS:
                self._end()
            raise translate(exc, self.location) from None
        if word in _BEGINS:
            self._explicit = True
            self._wrote = False
        elif word in _ENDS:
            self._end()
        if _DEALLOCATING.match(cursor.statusmessage or ""):
            self._prepared_doubt = True
        return cursor

    def _end(self) -> None:
        self._explicit = self._wrote = self._relaxed = False
        self._opening = []

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> psycopg.Cursor[Any]:
        if self._opening:
            self._open()
        self._ready("")
        cursor = self.raw.cursor()
        rows = [tuple(p) for p in seq_of_parameters]
        try:
            cursor.executemany(to_pyformat(sql), rows)
            if rows and _first_word(sql) in _WRITES and cursor.rowcount != 0:
                self._changed()
        except psycopg.Error as exc:
            raise translate(exc, self.location) from None
        return cursor

    def write(self, sql: str, parameters: Sequence[Any], /) -> list[Any]:
        """One writing statement in psycopg's own placeholders (``%s``; ``%b``: a
        parameter sent in binary format), its rows returned: outside a transaction it
        is a transaction of its own (one round trip), then announced (one more)."""
        if self._opening:
            self._open()
        self._ready("")
        try:
            rows = list(self.raw.execute(sql, tuple(parameters)).fetchall())
            self._changed()
        except psycopg.Error as exc:
            raise translate(exc, self.location) from None
        return rows

    # -- the change feed's notifications ---------------------------------------------
    #
    # A NOTIFY inside the writing transaction makes its COMMIT take PostgreSQL's
    # database-wide notify lock and hold it through the WAL flush: every notifying
    # commit of every relay then waits for the one before (measured with two relays:
    # Lock:object waits on COMMIT). So this adapter's sessions (smtpplus.notify, see
    # SESSION_OPTIONS) are not announced by the tables' trigger: the adapter sends the
    # notification itself right after a COMMIT that changed rows (or after a write
    # outside a transaction), in a transaction of its own that changes nothing durable
    # and so need not wait for a flush. Listeners still hear of a commit before the
    # writer's call returns, stamped with this connection's pid as before.

    def _changed(self) -> None:
        if self._explicit and self.raw.info.transaction_status != TransactionStatus.IDLE:
            self._wrote = True  # told after its COMMIT
        else:
            self._notify()

    def _notify(self) -> None:
        # The write is committed whatever happens here: a notification lost with a
        # dropped connection must not turn it into an error (listeners that lose
        # theirs fall back to polling; the next statement replaces this connection).
        # Sent straight through libpq (one simple-protocol round trip, no rows, the
        # GIL released while it waits): psycopg's cursor machinery around a
        # one-row SELECT cost more CPU than the round trip itself, once per commit.
        with contextlib.suppress(psycopg.Error):
            pgconn = self.raw.pgconn
            result = pgconn.exec_(schema.notify_now(pgconn.backend_pid, self.note))
            if result.status == psycopg.pq.ExecStatus.COMMAND_OK:
                self.notified += 1

    @contextlib.contextmanager
    def announcing(self, note: str) -> Iterator[None]:
        """The commits made inside are announced with ``note`` (relay.store.changes.INTAKE:
        they wrote new mail only; BEAT: a heartbeat only). The caller vouches for what
        its work writes."""
        before, self.note = self.note, note
        try:
            yield
        finally:
            self.note = before

    def _commit_and_notify(self) -> psycopg.Cursor[Any]:
        """COMMIT, then (once it succeeded) the notification. Two plain round trips:
        measured cheaper in CPU than psycopg's pipeline mode sending both at once.
        A lease transaction's COMMIT does not wait for the WAL flush, so it holds the
        notify lock only for a moment: its notification goes inside it, in the same
        round trip."""
        if self._relaxed and self.raw.info.transaction_status == TransactionStatus.INTRANS:
            cursor = self.raw.execute(f"{schema.NOTIFY_IN_TRANSACTION}; COMMIT")
            cursor.nextset()
            self._end()
            self.notified += 1
            return cursor
        cursor = self.raw.execute("COMMIT")
        self._end()
        if cursor.statusmessage == "COMMIT":  # not a failed transaction's ROLLBACK
            self._notify()
        return cursor

    # -- lease transactions and batches ------------------------------------------------

    def begin_lease(self) -> None:
        """Open a lease transaction (see ``dialect.lease_transaction``): its BEGIN
        and ``SET LOCAL synchronous_commit = off`` go with its first statement."""
        self._opening = ["BEGIN", "SET LOCAL synchronous_commit = off"]
        self._explicit, self._wrote, self._relaxed = True, False, True

    def _open(self) -> None:
        """Send the held-back opening on its own (the next statement is not a batch)."""
        opening, self._opening = self._opening, []
        if self._broken():  # nothing of the transaction was sent yet: a fresh connection
            self._replace()
        try:
            self.raw.execute("; ".join(opening))
        except psycopg.Error as exc:
            self._end()
            raise translate(exc, self.location) from None

    def _recheck_prepared(self) -> None:
        """Keep only the prepared statements the session still has: after a ROLLBACK
        (or a DROP, an ALTER) psycopg sends DEALLOCATE ALL when it had prepared any of
        its own. One round trip, only after such a command."""
        try:
            live = {
                row[0] for row in self.raw.execute(
                    "SELECT name FROM pg_prepared_statements WHERE name LIKE 'smtpplus\\_b%'"
                ).fetchall()
            }
        except psycopg.Error as exc:
            raise translate(exc, self.location) from None
        self._prepared = {sql: name for sql, name in self._prepared.items() if name in live}

    def batch(self, statements: Sequence[Statement], *, commit: bool = False) -> list[Result]:
        """``statements`` in one round trip: one simple-protocol query of them all,
        their values bound here (psycopg's client-side binding), with the held-back
        opening of the transaction before them and, with ``commit``, its COMMIT
        after them. Each statement's rows and row count, in order."""
        opening, self._opening = self._opening, []
        if opening and self._broken():
            self._replace()
        elif not opening:
            self._ready("")
        if self._prepared_on is not self.raw:  # a new server session: nothing prepared there
            self._prepared, self._prepared_on = {}, self.raw
        elif self._prepared_doubt and self._prepared:
            self._recheck_prepared()
        self._prepared_doubt = False
        parts = list(opening)
        values: list[Any] = []
        kept: list[int] = []  # which parts answer a statement (not an opening, PREPARE, ending)
        fresh: list[str] = []
        for sql, parameters in statements:
            name = self._prepared.get(sql)
            if name is None and len(self._prepared) < MAX_PREPARED:
                # Planned once per session, as psycopg's own prepared statements: a
                # statement of the simple protocol is planned anew each time.
                name = self._prepared[sql] = f"smtpplus_b{next(_PREPARED_NAMES)}"
                fresh.append(sql)
                parts.append(f"PREPARE {name} AS {to_numbered(sql)}")
            kept.append(len(parts))
            if name is None:
                parts.append(to_pyformat(sql))
            else:
                parts.append(f"EXECUTE {name}({', '.join(['%s'] * len(parameters))})" if parameters else f"EXECUTE {name}")
            values.extend(parameters)
        writes = any(_first_word(sql) in _WRITES for sql, _ in statements)
        ending: list[str] = []
        if commit and self._explicit:
            if self._relaxed and (self._wrote or writes):
                ending = [schema.NOTIFY_IN_TRANSACTION, "COMMIT"]
            else:
                ending = ["COMMIT"]
        cursor = psycopg.ClientCursor(self.raw)
        results: list[Result] = []
        status = ""
        try:
            cursor.execute("; ".join(parts + ending), values)
            answering = set(kept)
            for index in range(len(parts) + len(ending)):
                if index and not cursor.nextset():
                    break
                if index in answering:
                    result = cursor.pgresult
                    rows = list(cursor.fetchall()) if result is not None and result.status in _ROWS else []
                    results.append(Result(rows, cursor.rowcount))
                status = cursor.statusmessage or ""
                if _DEALLOCATING.match(status):
                    self._prepared_doubt = True
        except psycopg.Error as exc:
            for sql in fresh:  # prepared or not, they are prepared anew (new names) next time
                self._prepared.pop(sql, None)
            if exc.sqlstate == "26000":  # one of ours is gone all the same: prepare them all anew
                self._prepared = {}
            if ending:
                self._end()
            raise translate(exc, self.location) from None
        finally:
            cursor.close()
        changed = any(
            _first_word(sql) in _WRITES and result.rowcount != 0
            for (sql, _), result in zip(statements, results, strict=True)
        )
        if not ending:
            if changed:
                self._changed()
            return results
        notify = (changed or self._wrote) and not self._relaxed and status == "COMMIT"
        if self._relaxed and (self._wrote or writes):
            self.notified += 1
        self._end()
        if notify:
            self._notify()
        return results

    def data_version(self) -> int:
        """A number that changes when another connection has committed since the
        last call (SQLite's ``PRAGMA data_version``): this connection LISTENs to the
        store's change channel from its first call on, and each call reads what has
        arrived (one round trip). Call it outside a transaction: PostgreSQL delivers
        notifications between transactions."""
        if self._listening is not self.raw:
            return self._listen()
        self.execute("SELECT 1")  # what was committed before this is delivered by now
        if self._listening is not self.raw:  # the connection was replaced meanwhile
            return self._listen()
        try:
            others = any(n.pid != self.backend_pid for n in self.raw.notifies(timeout=0))
        except psycopg.Error as exc:
            raise translate(exc, self.location) from None
        if others:
            self._version = next(_VERSIONS)
        return self._version

    def _listen(self) -> int:
        self.execute(f"LISTEN {schema.NOTIFY_CHANNEL}")
        self._listening = self.raw
        self._version = next(_VERSIONS)  # never seen before: a (re)start counts as a change
        return self._version

    def commit(self) -> None:
        if self.in_transaction:
            self.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.execute("ROLLBACK")

    def close(self) -> None:
        feeds, self.feeds = self.feeds, []
        for feed in feeds:
            feed.close()
        release, self._release = self._release, None
        held, self._held = self._held, False
        with contextlib.suppress(psycopg.Error):
            if release is not None and held:
                release(self.raw)  # the pool rolls back, or drops a broken one
            else:
                self.raw.close()

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def lease_transaction(db: PgConnection) -> Iterator[PgConnection]:
    """One transaction of the delivery engine's round: its COMMIT does not wait for
    the WAL flush (``synchronous_commit = off`` for it alone), and its BEGIN goes with
    its first statement. Why losing its last commits in a server crash loses no
    mail: ``relay.store.queue.dispatch_round``. Nested use joins the outer one."""
    if db.in_transaction:
        yield db
        return
    db.begin_lease()
    try:
        yield db
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(StoreError):
                db.execute("ROLLBACK")
        raise
    else:
        if db.in_transaction:  # a batch may have committed it already
            db.execute("COMMIT")


@contextlib.contextmanager
def transaction(db: PgConnection, *, immediate: bool = True) -> Iterator[PgConnection]:
    """One transaction (``immediate`` is SQLite's lock mode: PostgreSQL locks rows as
    it writes them). Nested use joins the outer one. Errors are already the store's
    own (the adapter translates each statement's)."""
    if db.in_transaction:
        yield db
        return
    db.execute("BEGIN")
    try:
        yield db
    except BaseException:
        if db.in_transaction:  # on a dropped connection this only forgets the transaction
            with contextlib.suppress(StoreError):
                db.execute("ROLLBACK")
        raise
    else:
        db.execute("COMMIT")


# -- opening -----------------------------------------------------------------------


def connect(location: str, *, application_name: str = "smtpplus") -> psycopg.Connection[Any]:
    """A raw psycopg connection to ``location`` in autocommit mode, with the store's
    session settings (durable commits, a bounded wait for locks). Driver errors pass
    through: callers translate them."""
    conn = psycopg.connect(
        location,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT,
        application_name=application_name,
        options=SESSION_OPTIONS,
    )
    configure(conn)
    return conn


def open_store(location: str | os.PathLike[str], *, create: bool = True, migrate_to: int | None = None) -> PgConnection:
    """Open (and create the schema of, or upgrade) the PostgreSQL store at
    ``location``. ``create=False`` refuses a database without the schema: a
    mistyped --db is then one line, never a new store somewhere unexpected."""
    location = normalize(location)
    shown = masked(location)
    try:
        raw = connect(location)
    except psycopg.Error as exc:
        text = " ".join(scrub(str(exc), location).split())
        if "does not exist" in text and "database" in text:
            name = database_name(location) or "the database"
            raise StoreError(
                f"no store at {shown} (database {name!r} does not exist) — check --db / $SMTPPLUS_DB, "
                f"or create it: createdb {name}"
            ) from None
        raise translate(exc, location) from None
    try:
        if not create and schema.current_version(raw) == 0:
            raise StoreError(f"no store at {shown} (the database has no smtpplus schema) — check --db / $SMTPPLUS_DB")
        schema.migrate(raw, target=migrate_to)
    except psycopg.Error as exc:
        raw.close()
        raise translate(exc, location) from None
    except BaseException:
        raw.close()
        raise
    return PgConnection(raw, location)
