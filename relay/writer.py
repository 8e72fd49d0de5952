"""The relay's one store writer: group commit of accepted messages and events.

``StoreWriter(store)`` owns a task that collects every enqueue that is ready, writes
them in one transaction (``relay.store.intake.insert_messages`` plus the pending
events via ``relay.store.events.record_events``) with one thread hand-off, and only
then resolves each caller's future. While one commit runs, the next batch gathers,
so concurrent sessions share the cost of a commit.

``await writer.enqueue(message) -> Queued`` returns once the message is durable, or
raises :class:`WriteFailed` carrying the SMTP reply (``452 4.3.1`` for no space,
``451 4.3.0`` otherwise) and the reason code. ``writer.record(event)`` queues an event
for the next commit (fire and forget). ``await writer.flush()`` waits until all of it
is committed. ``batches``/``messages_written`` count commits.

``observers`` (callables) are told every event once it is committed — the session
events and an ``accepted`` event per message, as the store recorded them — for the
relay's log and metrics (see :mod:`relay.logs`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable, Sequence

from relay.reasons import EventKind, Reason
from relay.store import AsyncStore, Connection, transaction
from relay.store.changes import announced_as_intake
from relay.store.errors import StoreFull
from relay.store.events import NewEvent, record_events
from relay.store.intake import NewMessage, Queued, insert_messages

log = logging.getLogger("smtpplus.relay")

REPLY_NO_SPACE = "452 4.3.1 Insufficient system storage, try again later"
REPLY_TEMPORARY = "451 4.3.0 Temporary failure, try again later"
MAX_BATCH = 512
# A message this big is committed on its own: its session can then free its spooled
# data (a mapped file the store reads once) as soon as it is durable, instead of 32
# big messages staying mapped until one commit of them all ends.
BIG_MESSAGE = 1024 * 1024


class WriteFailed(Exception):
    """The store did not take the message: nothing of it was written."""

    def __init__(self, reply: str, reason: Reason) -> None:
        super().__init__(reply)
        self.reply = reply
        self.reason = reason


def classify(exc: BaseException) -> WriteFailed:
    """The client-visible reply for a store failure (never its text)."""
    if isinstance(exc, StoreFull):
        return WriteFailed(REPLY_NO_SPACE, Reason.STORE_FULL)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return WriteFailed(REPLY_NO_SPACE, Reason.STORE_FULL)
    return WriteFailed(REPLY_TEMPORARY, Reason.STORE_UNAVAILABLE)


def commit_batch(db: Connection, messages: Sequence[NewMessage], events: Sequence[NewEvent]) -> list[Queued]:
    """One transaction: the messages (bodies, recipients, queued events) and the events.
    Announced as new mail only (a paused engine of any relay skips its look at the
    controls for it)."""
    with announced_as_intake(db):
        if not events:
            # insert_messages is one transaction by itself (PostgreSQL: one statement).
            return insert_messages(db, messages) if messages else []
        with transaction(db):
            queued = insert_messages(db, messages) if messages else []
            record_events(db, events)
        return queued


def _batch_size(pending: Sequence[tuple[NewMessage, object]]) -> int:
    """How many of the pending messages go into the next commit: up to MAX_BATCH,
    stopping before a big one; a big one alone."""
    count = 0
    for message, _ in pending[:MAX_BATCH]:
        if len(message.data) > BIG_MESSAGE:
            return count or 1
        count += 1
    return count


def _retrieve(future: asyncio.Future[Queued]) -> None:
    # The session may be gone (shielded wait cancelled): mark the outcome as seen.
    if not future.cancelled():
        future.exception()


class StoreWriter:
    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self._pending: list[tuple[NewMessage, asyncio.Future[Queued]]] = []
        self._events: list[NewEvent] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._writing = False
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.messages_written = 0
        self.failures = 0
        self.observers: list[Callable[[list[NewEvent]], None]] = []
        self.commit_observers: list[Callable[[float, int], None]] = []  # (seconds, messages) per commit

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="smtpplus-writer")

    async def enqueue(self, message: NewMessage) -> Queued:
        if self._closing and self._task is None:
            raise WriteFailed(REPLY_TEMPORARY, Reason.STORE_UNAVAILABLE)
        future: asyncio.Future[Queued] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._pending.append((message, future))
        self._wake.set()
        # Shielded: a client that disconnects now leaves the commit whole (all or nothing).
        return await asyncio.shield(future)

    def record(self, event: NewEvent) -> None:
        self._events.append(event)
        self._wake.set()

    @property
    def idle(self) -> bool:
        return not self._pending and not self._events and not self._writing

    async def flush(self) -> None:
        """Wait until everything handed over so far is committed (or failed)."""
        while not self.idle:
            self._idle.clear()
            self._wake.set()
            await self._idle.wait()

    async def close(self) -> None:
        """Write what is pending, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending or self._events:
                self._writing = True
                try:
                    await self._write_some()
                finally:
                    self._writing = False
            self._idle.set()
            if self._closing:
                return

    async def _write_some(self) -> None:
        take = _batch_size(self._pending)
        batch, self._pending = self._pending[:take], self._pending[take:]
        events, self._events = self._events, []
        started = time.perf_counter()
        try:
            queued = await self._store.run(commit_batch, [m for m, _ in batch], events)
        except Exception as exc:  # the store failed: answer every waiting session
            self.failures += 1
            log.error("store write failed (%d message(s), %d event(s)): %s", len(batch), len(events), exc)
            if len(batch) > 1:
                # One bad message must not sink the others: retry them one by one.
                for item in batch:
                    await self._write_one(item)
            else:
                failed = classify(exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failed)
            return
        self.batches += 1
        self.messages_written += len(queued)
        self._timed(time.perf_counter() - started, len(queued))
        self._tell([*events, *(accepted_event(m, q) for (m, _), q in zip(batch, queued, strict=True))])
        for (_, future), result in zip(batch, queued, strict=True):
            if not future.done():
                future.set_result(result)

    async def _write_one(self, item: tuple[NewMessage, asyncio.Future[Queued]]) -> None:
        message, future = item
        started = time.perf_counter()
        try:
            queued = await self._store.run(commit_batch, [message], [])
        except Exception as exc:
            if not future.done():
                future.set_exception(classify(exc))
            return
        self.batches += 1
        self.messages_written += 1
        self._timed(time.perf_counter() - started, 1)
        self._tell([accepted_event(message, queued[0])])
        if not future.done():
            future.set_result(queued[0])

    def _timed(self, seconds: float, messages: int) -> None:
        for observer in self.commit_observers:
            try:
                observer(seconds, messages)
            except Exception:  # a metric must never fail a commit already made
                log.exception("commit observer failed")

    def _tell(self, events: list[NewEvent]) -> None:
        for observer in self.observers:
            try:
                observer(events)
            except Exception:  # a log or a metric must never fail a commit already made
                log.exception("event observer failed")


def accepted_event(message: NewMessage, queued: Queued) -> NewEvent:
    """The ``accepted`` event :func:`relay.store.intake.insert_messages` recorded."""
    return NewEvent(
        kind=EventKind.QUEUED,
        reason=Reason.ACCEPTED,
        username=message.username,
        list_id=message.list_id,
        client=message.client,
        port=message.port,
        message_id=queued.message_id,
        queue_id=queued.queue_id,
        detail=f"{message.origin} from {message.mail_from or '<>'} to {len(message.recipients)} recipient(s), "
        f"priority {message.priority}",
    )
