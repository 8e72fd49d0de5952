"""The PostgreSQL change feed: LISTEN/NOTIFY behind the store's two feed protocols
(:class:`relay.store.changes.SyncChangeFeed` and ``ChangeFeed``).

Every commit that changed rows is announced on ``smtpplus_changes``, stamped with the
writer's backend pid: by smtpplus's own connections right after their COMMIT
(:class:`relay.store.postgres.connection.PgConnection`), by any other client through
the tables' statement trigger (see :mod:`relay.store.postgres.schema`). A feed listens on a connection
of its own and ignores notifications from the connection it watches for (its own
commits do not count, as with SQLite's ``data_version``).

``changed()`` asks the listening connection for what has arrived, after one round
trip (``SELECT 1``): PostgreSQL signals listeners before the writer's COMMIT
returns, so a commit that finished before the call is seen by it.

If the listening connection drops (a server restart, a network cut), the feed falls
back to polling: ``changed()`` says yes once every :data:`FALLBACK_POLL` seconds, so
its reader runs a full look that often, and it reconnects at most every
:data:`RECONNECT` seconds; the first answer after a reconnect is yes (something may
have been missed meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import psycopg

from relay.store.changes import BEAT, INTAKE
from relay.store.postgres.connection import PgConnection, connect, translate
from relay.store.postgres.location import normalize
from relay.store.postgres.schema import NOTIFY_CHANNEL

if TYPE_CHECKING:
    from relay.store.bridge import AsyncStore

FALLBACK_POLL = 1.0  # seconds between two "yes" answers while not listening
RECONNECT = 1.0  # seconds between two attempts to listen again
LISTEN = f"LISTEN {NOTIFY_CHANNEL}"


class _Fallback:
    """What a feed answers while it cannot listen: yes once per FALLBACK_POLL."""

    def __init__(self) -> None:
        self.last_yes = 0.0
        self.last_attempt = -RECONNECT

    def tick(self) -> bool:
        now = time.monotonic()
        if now - self.last_yes >= FALLBACK_POLL:
            self.last_yes = now
            return True
        return False

    def may_reconnect(self) -> bool:
        now = time.monotonic()
        if now - self.last_attempt >= RECONNECT:
            self.last_attempt = now
            return True
        return False

    def left(self) -> float:
        return max(0.0, FALLBACK_POLL - (time.monotonic() - self.last_yes))


class NotifyFeed:
    """Synchronous (the console's watcher thread): commits by other connections than
    ``db``, from LISTEN on a connection of the feed's own."""

    def __init__(self, db: PgConnection, *, poll: float | None = None) -> None:
        self._location = db.location
        self._db = db  # its pid changes when it replaces a dropped connection
        self._listener: psycopg.Connection[Any] | None = None
        self._fallback = _Fallback()
        self._started = False
        self._missed = False  # reconnected: something may have been missed
        db.feeds.append(self)  # closing the connection closes its feed

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def _listen(self) -> psycopg.Connection[Any] | None:
        if self._listener is not None:
            return self._listener
        if not self._fallback.may_reconnect():
            return None
        try:
            conn = connect(self._location, application_name="smtpplus-listen")
            conn.execute(LISTEN)
        except psycopg.Error:
            return None
        self._listener = conn
        self._missed = self._started
        return conn

    def _drop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(psycopg.Error):
                listener.close()

    def _others(self, listener: psycopg.Connection[Any], timeout: float) -> bool:
        return any(n.pid != self._db.backend_pid for n in listener.notifies(timeout=timeout))

    def changed(self) -> bool:
        if not self._started:
            self._listen()
            self._started = True
            return True
        listener = self._listen()
        if listener is None:
            return self._fallback.tick()
        try:
            listener.execute("SELECT 1")  # one round trip: what arrived before it is in
            seen = self._others(listener, 0.0)
        except psycopg.Error:
            self._drop()
            return True
        missed, self._missed = self._missed, False
        return seen or missed

    def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        if self.changed():
            return True
        while (left := deadline - time.monotonic()) > 0:
            listener = self._listen()
            if listener is None:
                time.sleep(min(left, self._fallback.left() or RECONNECT))
                if self._fallback.tick():
                    return True
                continue
            try:
                for notice in listener.notifies(timeout=min(left, RECONNECT)):
                    if notice.pid != self._db.backend_pid:
                        return True
            except psycopg.Error:
                self._drop()
                return True
            if self._missed:
                self._missed = False
                return True
        return False

    def close(self) -> None:
        self._drop()


def _backend_pid(db: Any) -> int:
    return int(db.backend_pid)


_QUIET = (" " + INTAKE, " " + BEAT)


def _quiet(notice: Any) -> bool:
    """The notification says its commit wrote new mail only, or a heartbeat only
    (schema.notify_now): nothing an engine waits for or keeps floors over."""
    return bool(notice.payload.endswith(_QUIET))


class AsyncNotifyFeed:
    """Async (the delivery engine): commits by other connections than the async
    store's own, from LISTEN on an async connection of the feed's own (on the event
    loop: no thread).

    ``intake_only``: the last ``changed()`` that said yes saw only commits that wrote
    new mail or a heartbeat (schema.notify_now) — a paused engine needs no look at its
    controls. ``other_news`` counts the rest as the follower reads it (an engine's
    claim floors): at once while the reader looks, else within RECONNECT.

    ``follow()`` (the engine, which asks every 50 ms while idle): a task reads the
    notifications as they arrive (it waits on the socket with the loop, no polling),
    and ``changed()`` answers from what it has read — no round trip per look. Such a
    look sees a commit once its notification has reached this process (PostgreSQL
    sends it before the writer's COMMIT returns); without ``follow()``, one round trip
    makes sure a commit that finished before the call is seen by it.
    """

    def __init__(self, store: AsyncStore, *, poll: float | None = None) -> None:
        self._store = store
        self._location = normalize(getattr(store, "url", None) or getattr(store, "location", None) or store.path)
        feeds = getattr(store, "feeds", None)
        if feeds is not None:
            feeds.append(self)  # closing the store closes its feed
        self._listener: psycopg.AsyncConnection[Any] | None = None
        self._fallback = _Fallback()
        self._started = False
        self._missed = False
        self.intake_only = False
        self._follower: asyncio.Task[None] | None = None
        self._news = False  # follow(): something arrived since the last look
        self._news_other = False  # … and not all of it was new mail
        # Counts news that was not only new mail (or may have been anything: a drop, a
        # poll), as the follower reads it: the engine forgets its claim floors on it
        # even in the rounds that do not look at the feed (the follower reads again
        # after a look, or after RECONNECT without one).
        self.other_news = 0
        self._arrived = asyncio.Event()
        self._look_waiter: asyncio.Future[None] | None = None  # the follower's, until the reader looks

    @property
    def listening(self) -> bool:
        return self._listener is not None

    @property
    def arrived(self) -> asyncio.Event | None:
        """follow(): set when something arrived since the last look (None: not following)."""
        return self._arrived if self._follower is not None else None

    def follow(self) -> None:
        """Read notifications as they arrive from now on (call on the loop)."""
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow(), name="smtpplus-change-feed")

    def _heard(self, *, intake: bool) -> None:
        self._news = True
        self._news_other = self._news_other or not intake
        self.other_news += not intake
        self._arrived.set()

    async def _follow(self) -> None:
        while True:
            listener = await self._listen()
            if listener is None:  # cannot listen: yes once per FALLBACK_POLL, as changed() says
                await asyncio.sleep(self._fallback.left() or RECONNECT)
                if self._fallback.tick():
                    self._heard(intake=False)
                continue
            if self._missed:  # reconnected: something may have been missed
                self._missed = False
                self._heard(intake=False)
            if self._news:
                # Nothing more to tell until the reader looks: meanwhile what arrives
                # waits in the socket, read at once afterwards (on a busy store one
                # wake-up per look, not one per notification).
                waiter = self._look_waiter = asyncio.get_running_loop().create_future()
                await asyncio.wait({waiter}, timeout=RECONNECT)
                self._look_waiter = None
            try:
                own = await self._own_pid()
                # Back after what one read brought (or RECONNECT seconds): the store's
                # pid may have changed.
                async for notice in listener.notifies(timeout=RECONNECT, stop_after=1):
                    if notice.pid != own:
                        self._heard(intake=_quiet(notice))
            except psycopg.Error:
                await self._drop()
                self._heard(intake=False)
            except Exception:  # the store's pid unknown (its server away, say): look again soon
                self._heard(intake=False)
                await asyncio.sleep(RECONNECT)

    def _look(self) -> bool:
        """follow(): what arrived since the last look."""
        news, other = self._news, self._news_other
        self._news = self._news_other = False
        self._arrived.clear()
        waiter = self._look_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.intake_only = news and not other
        return news

    async def _listen(self) -> psycopg.AsyncConnection[Any] | None:
        # The following feed only reads from this connection: without TCP keepalives a
        # silently dead one (a network cut, a NAT that forgot it) would pass for a quiet
        # store for the OS's 2 hours; libpq's keepalives below notice it in about 25 s.
        if self._listener is not None:
            return self._listener
        if not self._fallback.may_reconnect():
            return None
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._location, autocommit=True, connect_timeout=10, application_name="smtpplus-listen",
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
            )
            await conn.execute(LISTEN)
        except psycopg.Error:
            return None
        self._listener = conn
        self._missed = self._started
        return conn

    async def _drop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(psycopg.Error):
                await listener.close()

    async def changed(self) -> bool:
        self.intake_only = False
        if not self._started:
            if self._follower is None:
                await self._listen()
            self._started = True
            return True
        if self._follower is not None:
            return self._look()
        listener = await self._listen()
        if listener is None:
            ticked = self._fallback.tick()
            self.other_news += ticked
            return ticked
        try:
            own = await self._own_pid()
            await listener.execute("SELECT 1")
            seen = other = False
            async for notice in listener.notifies(timeout=0.0):
                if notice.pid != own:
                    seen = True
                    other = other or not _quiet(notice)
        except psycopg.Error:
            await self._drop()
            self.other_news += 1
            return True
        missed, self._missed = self._missed, False
        self.other_news += other or missed
        self.intake_only = seen and not other and not missed
        return seen or missed

    async def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        if await self.changed():
            return True
        if self._follower is not None:
            arrival = asyncio.ensure_future(self._arrived.wait())
            try:
                await asyncio.wait({arrival}, timeout=seconds)
            finally:
                arrival.cancel()
            return self._look()
        own = await self._own_pid()
        while (left := deadline - time.monotonic()) > 0:
            listener = await self._listen()
            if listener is None:
                await asyncio.sleep(min(left, self._fallback.left() or RECONNECT))
                if self._fallback.tick():
                    return True
                continue
            try:
                async for notice in listener.notifies(timeout=min(left, RECONNECT)):
                    if notice.pid != own:
                        return True
            except psycopg.Error:
                await self._drop()
                return True
            if self._missed:
                self._missed = False
                return True
        return False

    async def _own_pid(self) -> int:
        """The backend pid of the store's connection (it changes when the store
        reconnects): its commits are not news."""
        pid = getattr(self._store, "backend_pid", None)
        if isinstance(pid, int) and pid:
            return pid
        return await self._store.run(_backend_pid)

    async def close(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
        # Closed before the follower is awaited: psycopg answers a cancelled wait on
        # the connection by trying to cancel a query there (seconds).
        await self._drop()
        if follower is not None:
            await asyncio.wait({follower}, timeout=5)


__all__ = ["FALLBACK_POLL", "RECONNECT", "AsyncNotifyFeed", "NotifyFeed", "translate"]
