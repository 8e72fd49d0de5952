"""The queue manager: the scheduler loop, flights, connection reuse and counters.

:class:`DeliveryEngine` is run by :class:`relay.service.RelayService` (or directly,
by tests and benchmarks). It keeps one long-lived store connection and, in a loop,
asks :func:`relay.store.queue.dispatch_round` to record finished attempts and claim
as many messages as the shared bandwidth allows right now — strict priority, FIFO
within a priority, under lease. Each claimed message goes out on a next-hop
connection (aiosmtplib; reused for consecutive messages); its outcome is recorded
in the next round, in the same transaction as the next claims.

Runtime controls (paused, rate, parallel, next hop, STARTTLS mode, AUTH) are store
settings; the loop notices changes from any process through the store's change feed
(:mod:`relay.store.changes`) within a fraction of a second. Campaign expansion and retention run beside the loop
on the same store connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.bounce import FailedRecipient, bounce_message, wants_report
from relay.config import server_name_warning
from relay.delivery.destinations import DestinationTable, destination_share, group_by_destination
from relay.delivery.hop import (
    HopConnection,
    HopFailure,
    NextHop,
    ReplyObserver,
    canonical_address,
    is_own_address,
)
from relay.delivery.outcome import (
    NO_DSN,
    AttemptResult,
    RetryPolicy,
    all_deferred,
    all_failed,
    merge,
    outcome_detail,
    settle,
)
from relay.dkim import DkimSigner
from relay.domains import parse_public_addresses
from relay.policy import PolicyError
from relay.reasons import EventKind, Reason
from relay.scheduler import HopBackoff, StarvationShare, TokenBucket
from relay.store import AsyncStore, Connection, StoreError
from relay.store import relays as relays_module
from relay.store.backend import backend_for
from relay.store.claim_floors import ClaimFloors
from relay.store.dkim import active_keys
from relay.store.events import NewEvent
from relay.store.intake import NewMessage, RecipientDsn
from relay.store.postgres.location import is_postgres, store_location
from relay.store.queue import (
    Claimed,
    DeliverySettings,
    Outcome,
    RecipientResult,
    RoundRequest,
    RoundResult,
    delivery_settings,
    dispatch_round,
    prune,
    publish_status,
    reclaim_owner,
)
from relay.store.routing import route_map
from relay.store.settings import Keys, get_setting
from relay.store.verification import system_sender_choice

log = logging.getLogger("smtpplus.delivery")
_OUTCOME_KIND = {"sent": EventKind.SENT, "deferred": EventKind.DEFERRED, "failed": EventKind.FAILED}

IDLE_POLL = 0.05  # seconds between two looks at the change feed while idle (SQLite: a cheap PRAGMA)
# PostgreSQL: after a delivery finishes while others are still under way, the next
# round waits this long at most for them, so one round (a dozen round trips and a
# commit's WAL flush) settles several outcomes and claims for several free slots,
# rather than one round per message (measured: one per message with two relays).
# SQLite's rounds are in-process and cheap: they run at once as before.
GATHER_OUTCOMES = 0.005
FULL_ROUND_EVERY = 1.0  # a full round (deferred mail, scheduled mail) at least this often
IDLE_CONNECTION_TTL = 10.0  # an unused next-hop connection is closed after this
PRUNE_EVERY = 3600.0
ROUTES_REFRESH = 1.0  # MX delivery: the routes table is read again at most this often
MX_IDLE_CONNECTIONS = 100  # MX delivery: idle connections kept, all destinations together


class DeliveryConfig(Protocol):
    """What the engine reads from :class:`relay.config.RelayConfig` (all optional)."""

    retry_base: float
    retry_max: float
    queue_lifetime: float
    message_lease: float
    connect_timeout: float
    command_timeout: float
    retention_days: float
    recipients_per_transaction: int


_DEFAULTS: dict[str, float] = {
    "retry_base": 60.0,
    "retry_max": 3600.0,
    "queue_lifetime": 5 * 86400.0,
    "message_lease": 300.0,
    "connect_timeout": 30.0,
    "command_timeout": 60.0,
    "retention_days": 30.0,
    "recipients_per_transaction": 50,
    "mx_port": 25,
    "max_connections_per_destination": 10,
}
SENDER_REFRESH = 5.0  # seconds between reads of the system sender setting


def _setting(config: Any, name: str) -> float:
    value = getattr(config, name, None)
    return float(_DEFAULTS[name] if value is None else value)


def _server_name(config: Any) -> str:
    resolve = getattr(config, "resolved_server_name", None)
    if callable(resolve):
        with contextlib.suppress(Exception):
            return str(resolve())
    return str(getattr(config, "server_name", "") or socket.gethostname() or "localhost")


# ---------------------------------------------------------------------------
# The engine


@dataclass(slots=True)
class EngineCounters:
    """Running totals for tests, benchmarks and logs."""

    dispatched: int = 0
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    bounced: int = 0
    hop_failures: int = 0
    rounds: int = 0
    held_back_looks: int = 0  # commits met while delivery is held back: a look at the controls, no round
    held_back_skips: int = 0  # of those, new mail only (the feed said so): not even that look
    reclaimed: int = 0
    connections_opened: int = 0
    scheduler_restarts: int = 0  # the rounds started again after a failure outside a round


@dataclass(slots=True)
class _Flight:
    message: Claimed
    task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.time)


class DeliveryEngine:
    """Scheduler + next-hop delivery, run by :class:`relay.service.RelayService`.

    ``owner`` is the relay's lease owner id; ``reclaim_from`` names a dead relay whose
    in-flight messages are reclaimed at once on takeover; ``own_addresses`` are the
    relay's listening (host, port) pairs, refused as next hop. ``config`` is any
    object with the delivery fields of :class:`relay.config.RelayConfig` (missing
    ones take their defaults).
    """

    def __init__(
        self,
        store_path: str | os.PathLike[str],
        config: Any,
        *,
        owner: str,
        reclaim_from: str | None = None,
        own_addresses: list[tuple[str, int]] | None = None,
    ) -> None:
        self.store_path = store_location(store_path)  # a URL stays text: pathlib would drop a slash of ///db
        self.config = config
        self.owner = owner
        self.reclaim_from = reclaim_from
        self.own_addresses = list(own_addresses or [])
        self._own_checked: dict[tuple[str, int], bool] = {}  # (host, port) -> one of ours?
        self.retry_base = _setting(config, "retry_base")
        self.retry_max = _setting(config, "retry_max")
        self.queue_lifetime = _setting(config, "queue_lifetime")
        self.lease_seconds = _setting(config, "message_lease")
        self.connect_timeout = _setting(config, "connect_timeout")
        self.command_timeout = _setting(config, "command_timeout")
        self.retention = _setting(config, "retention_days") * 86400.0
        self.recipients_per_transaction = int(_setting(config, "recipients_per_transaction"))
        self.server_name = _server_name(config)
        self.system_sender: str | None = None  # From: of bounces (the system sender setting)
        self.counters = EngineCounters()
        self.settings = DeliverySettings()
        self._public: tuple[str, ...] = ()  # settings.public_address, parsed when it changes
        self._stored_settings: DeliverySettings | None = None  # as the last round read them
        # PostgreSQL: the live relays sharing the store's limits (relay.store.relays).
        self.relays = 1
        self._many = is_postgres(self.store_path)
        self.hop: NextHop | None = None
        self.hop_is_self = False
        self.status: tuple[str, str] = ("starting", "")
        self._store = AsyncStore(self.store_path)
        self._changes = backend_for(self.store_path).async_change_feed(self._store)
        self._floors = ClaimFloors()  # where claims start per priority (PostgreSQL)
        self._other_news = 0  # the change feed's count of news that was not only new mail
        self._dkim = DkimSigner(lambda: self._store.run(active_keys))
        self._rng = random.Random()
        self._bucket = TokenBucket(0.0, time.monotonic())
        self._hop_backoff = HopBackoff(min(self.retry_base, 5.0), min(self.retry_max, 60.0))
        # MX delivery (the next hop setting "mx"): routes, the resolver, destinations,
        # claimed messages waiting for their destination's share, idle connections per host.
        self.mx = False
        self.mx_refused: str | None = None  # why MX delivery cannot start (no dotted server name)
        self._routes: dict[str, tuple[str, int]] = {}
        self._routes_read = 0.0
        self._resolver: Any = None
        self.dns_timeout = 5.0  # each MX lookup (relay.mx.DEFAULT_TIMEOUT; tests shorten it)
        self._destinations = DestinationTable(min(self.retry_base, 5.0), min(self.retry_max, 60.0))
        self._waiting: list[Claimed] = []
        self._mx_idle: dict[NextHop, list[HopConnection]] = {}
        self._starvation = StarvationShare()
        self._flights: dict[int, _Flight] = {}
        self._outcomes: list[Outcome] = []
        self._events: list[NewEvent] = []
        self._idle: list[HopConnection] = []
        self._wake = asyncio.Event()
        self._campaign_wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()  # idle connections being closed
        self._stopping = False
        self._started = False
        # Told each event once committed (sent/deferred/failed, attempts, the engine's
        # own) and each batch of outcomes: the relay's log and metrics.
        self.observers: list[Callable[[list[NewEvent]], None]] = []
        self.outcome_observers: list[Callable[[list[Outcome]], None]] = []
        # Told (command, reply class) for every reply a next hop gives, or its absence
        # (relay.delivery.hop.REPLY_CLASSES): the metrics' next-hop reply classes.
        self.reply_observers: list[ReplyObserver] = []

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, take over a dead relay's in-flight mail, start the loops."""
        if self._started:
            return
        self._started = True
        await self._store.open()
        warning = server_name_warning(self.server_name)
        if warning is not None:
            log.warning("smtpplus: %s", warning)
            self._event(EventKind.RELAY, Reason.SERVER_NAME_UNDOTTED, warning)
        await self._refresh_system_sender()
        if self.reclaim_from and self.reclaim_from != self.owner:
            self.counters.reclaimed += await self._store.run(reclaim_owner, self.reclaim_from)
        from relay.campaigns import CampaignRunner

        runner = CampaignRunner(self._store, server_name=self.server_name, notify=self.notify, stopping=lambda: self._stopping)
        self._campaigns = runner
        self._tasks = [
            asyncio.create_task(self._run(), name="delivery-scheduler"),
            asyncio.create_task(runner.run(self._campaign_wake), name="delivery-campaigns"),
            asyncio.create_task(self._maintain(), name="delivery-retention"),
            asyncio.create_task(self._follow_system_sender(), name="delivery-system-sender"),
        ]

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let deliveries under way finish (bounded), record their
        outcomes, give back anything unfinished, close connections and the store."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
        self._campaign_wake.set()
        limit = grace if grace is not None else min(10.0, self.command_timeout + 1)
        scheduler, others = self._tasks[0], self._tasks[1:]
        # The scheduler finishes its round (what it claimed is launched and awaited below).
        _done, still = await asyncio.wait([scheduler], timeout=5)
        for task in [*still, *others]:
            task.cancel()
        pending = [f.task for f in self._flights.values() if f.task is not None]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=limit)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=2)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            self._flights.clear()
            request = RoundRequest(self.owner, self.lease_seconds, 0, None, self._take_outcomes(), force=True)
            for destination in self._destinations.known.values():  # nothing of ours is in flight now
                destination.in_flight, destination.changed = 0, True
            request.destinations = self._destinations.take_changes()
            request.events = self._take_events()
            final = await self._store.run(_final_round, request)
            self._tell(request, final)
            await self._store.run(publish_status, "stopped", "")
        except StoreError as exc:
            log.warning("delivery: could not record the last outcomes: %s", exc)
        idle, self._idle = self._idle, []
        idle += [conn for conns in self._mx_idle.values() for conn in conns]
        self._mx_idle.clear()
        await asyncio.gather(*(conn.close() for conn in idle), *self._closing, return_exceptions=True)
        await self._store.close()

    def notify(self) -> None:
        """New mail is in the store (called by the relay after its commit): look now."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    # -- the scheduler loop -----------------------------------------------------

    async def _run(self) -> None:
        """The scheduler: rounds until the engine stops. Whatever fails in them (the
        store gone in a call outside a round's own retry, a defect) is logged and the
        rounds start again a second later: this task ending would leave a relay that
        answers 250 to mail it never delivers."""
        follow = getattr(self._changes, "follow", None)
        if follow is not None:  # PostgreSQL: notifications read as they arrive, a look costs no round trip
            follow()
        while not self._stopping:
            try:
                await self._rounds()
            except StoreError as exc:
                log.warning("delivery: store unavailable, rounds start again in 1 s: %s", exc)
            except Exception as exc:
                log.exception("delivery: the scheduler failed; it starts again in 1 s")
                self._event(EventKind.RELAY, Reason.INTERNAL_ERROR, f"delivery scheduler failed ({type(exc).__name__}); started again")
            else:
                return
            self.counters.scheduler_restarts += 1
            await self._sleep_stopping(1.0)

    async def _rounds(self) -> None:
        force = True
        backlog = True
        next_due: float | None = None
        last_full = 0.0
        last_renew = time.time()
        last_reclaim = 0.0
        while not self._stopping:
            now = time.time()
            mono = time.monotonic()
            budget = self._budget(mono)
            renew: list[int] = []
            if (self._flights or self._waiting) and now - last_renew >= self.lease_seconds / 3:
                renew = list(self._flights) + [m.id for m in self._waiting]
                last_renew = now
            reclaim = now - last_reclaim >= max(0.5, min(5.0, self.lease_seconds / 2))
            if reclaim:
                last_reclaim = now
                if self._many:
                    try:
                        self.relays = await self._store.run(relays_module.live_count)
                    except StoreError as exc:  # an outage: the last count stands until the store answers
                        log.warning("delivery: cannot count the live relays: %s", exc)
            promote = next_due is not None and now >= next_due
            full = force or (backlog and budget > 0) or now - last_full >= FULL_ROUND_EVERY
            request = RoundRequest(
                owner=self.owner,
                lease_seconds=self.lease_seconds,
                budget=budget,
                hop=self._hop_name(),
                outcomes=self._take_outcomes(),
                renew=renew,
                reclaim_expired=reclaim,
                promote_due=promote or full,
                oldest_lower=self._starvation.due(budget) if budget else False,
                force=full,
                skip_destinations=self._destinations.blocked(now, self._share(), self._waiting) if self.mx else [],
                versioned=False,  # the change feed says when another process wrote
                destinations=self._destinations.take_changes(),
                floors=self._floors,
                # No ``now``: the store reads the clock under the write lock, where
                # it decides what is ready (a time read here could be stale by then).
            )
            events = request.events = self._take_events()
            other_news = getattr(self._changes, "other_news", 0)
            if other_news != self._other_news:
                # Another process changed more than new mail (an operator's retry or
                # release, another relay's reclaim): it may have made older mail ready
                # under the claim's floors. Counted as the feed reads it, so a busy
                # engine whose rounds never look at the feed hears it too (within about
                # a second: the follower reads again after a look or RECONNECT).
                self._other_news = other_news
                self._floors.forget()
            if self.mx and full and now - self._routes_read >= ROUTES_REFRESH:
                await self._read_routes(now)
            if request.idle and (self._slots_full() or not await self._changed() or await self._still_held_back()):
                # Nothing to write and nobody committed: no round (one cheap look).
                # PostgreSQL, every slot busy: nothing another process wrote could
                # start a delivery now, so its commits wait (unread) for the round
                # the next finished delivery brings (with two relays, each one's
                # commits otherwise cost the other a round each: measured).
                self.counters.rounds += 1
                await self._sleep(self._idle_wait(next_due, budget, last_full), news=True)
                continue
            try:
                result = await self._store.run(dispatch_round, request)
            except StoreError as exc:
                log.warning("delivery: store round failed, retrying: %s", exc)
                self._outcomes[:0] = request.outcomes
                self._events[:0] = events
                for state in request.destinations:
                    self._destinations.get(state.domain).changed = True
                await self._sleep(1.0)
                continue
            self.counters.rounds += 1
            self._tell(request, result)
            last_full = now if full else last_full
            force = False
            self.counters.reclaimed += result.reclaimed
            self._stored_settings = result.settings or self._stored_settings
            settings = relays_module.shared_settings(result.settings, self.relays) if result.settings else None
            if settings is not None and (settings != self.settings or self.status[0] == "starting"):
                force = await self._apply_settings(settings)
            if result.next_due_checked:
                next_due = result.next_due
            self._launch(result.claimed)
            await self._reap_idle()
            # More may be ready than this round could take (no tokens, no free
            # connection, or a full claim): look again without waiting for a commit.
            backlog = len(result.claimed) == budget and not self._held_back()
            await self._publish_status()
            if (backlog and budget > 0) or force:
                # New settings (a resume, a next hop) get their round now: the
                # notification that brought them has been read, no news will wake us.
                await asyncio.sleep(0)
                continue
            await self._sleep(self._idle_wait(next_due, budget, last_full), news=True)

    async def _changed(self) -> bool:
        """Whether another process committed since the last look; on a store error,
        yes (the round that follows meets the error and retries as rounds do)."""
        try:
            return await self._changes.changed()
        except StoreError:
            return True

    async def _still_held_back(self) -> bool:
        """Delivery is paused (or has no next hop) and the controls are as the last
        round read them: a commit meanwhile (new mail, on a busy relay one per group
        commit) cannot start a delivery, so one look at the controls instead of a
        round. Any change to them gets its round."""
        if not self._held_back() or self._stored_settings is None:
            return False
        if getattr(self._changes, "intake_only", False):
            # The feed says those commits wrote new mail only (PostgreSQL: every
            # relay's group commits): the controls are as they were, no look.
            self.counters.held_back_looks += 1
            self.counters.held_back_skips += 1
            return True
        try:
            unchanged = await self._store.run(delivery_settings) == self._stored_settings
        except StoreError:
            return False
        self.counters.held_back_looks += unchanged
        return unchanged

    def _slots_full(self) -> bool:
        return self._many and not self._stopping and len(self._flights) >= max(1, self.settings.parallel)

    def _held_back(self) -> bool:
        """Delivery waits for a control to change (a commit will say so)."""
        return self._hop_name() is None or self.settings.paused

    def _hop_name(self) -> str | None:
        """What the engine delivers to, as the next hop setting says it (None: nothing)."""
        if self.mx:
            return None if self.mx_refused else "mx"
        return self.hop.address if self.hop is not None and not self.hop_is_self else None

    def _share(self) -> int:
        per_destination = int(_setting(self.config, "max_connections_per_destination"))
        return destination_share(relays_module.share(per_destination, self.relays), self.settings.parallel)

    def _budget(self, mono: float) -> int:
        if self._stopping or self._hop_name() is None or self.settings.paused:
            return 0
        free = self.settings.parallel - len(self._flights)
        if free <= 0:
            return 0
        if self.mx:  # destinations back off one by one, not the whole hop
            return max(0, min(free, self._bucket.available(mono)))
        return max(0, min(free, self._bucket.available(mono), self._hop_backoff.allowed(time.time(), len(self._flights))))

    def _idle_wait(self, next_due: float | None, budget: int, last_full: float = 0.0) -> float:
        now = time.time()
        wait = self._quiet_wait(now - last_full)
        if next_due is not None:
            wait = min(wait, max(0.0, next_due - now))
        if self._hop_backoff.down:
            wait = min(wait, max(0.01, self._hop_backoff.retry_at - now))
        if budget == 0 and self.settings.rate and len(self._flights) < self.settings.parallel:
            wait = min(wait, max(0.001, self._bucket.wait_for_one(time.monotonic())))
        return wait

    def _quiet_wait(self, since_full: float = 0.0) -> float:
        """How long an idle engine sleeps: IDLE_POLL, then it looks at the feed. Where
        the feed itself says when something arrived (PostgreSQL, listening) and no
        delivery is under way, up to the next periodic duty instead (the next full
        round, counted from the last one; a look for expired leases): news wakes it
        (see _sleep)."""
        if getattr(self._changes, "arrived", None) is None or not getattr(self._changes, "listening", False):
            return IDLE_POLL
        if self._flights or self._waiting:
            return IDLE_POLL
        duty = min(FULL_ROUND_EVERY - since_full, max(0.5, min(5.0, self.lease_seconds / 2)))
        return max(IDLE_POLL, duty)

    async def _sleep(self, seconds: float, *, news: bool = False) -> None:
        """Until woken or ``seconds``; with ``news``, the feed's news wakes it too,
        but not before IDLE_POLL (an idle engine's looks stay that far apart: on a
        busy store every relay's commits are news)."""
        if not self._wake.is_set():
            first = min(seconds, IDLE_POLL) if news else seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), first)
            if seconds > first and not self._wake.is_set():
                await self._until_news(seconds - first)
        self._wake.clear()
        if self._many and self._outcomes:
            await self._gather_outcomes()

    async def _until_news(self, seconds: float) -> None:
        arrived = getattr(self._changes, "arrived", None)
        if arrived is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)
            return
        if arrived.is_set():
            return
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(arrived.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _gather_outcomes(self) -> None:
        """PostgreSQL: wait (GATHER_OUTCOMES at most) until every delivery still under
        way has finished too, so the next round settles them together."""
        deadline = time.monotonic() + GATHER_OUTCOMES
        while self._flights and not self._stopping and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)
            self._wake.clear()

    def _take_outcomes(self) -> list[Outcome]:
        outcomes, self._outcomes = self._outcomes, []
        return outcomes

    def _take_events(self) -> list[NewEvent]:
        events, self._events = self._events, []
        return events

    async def _apply_settings(self, settings: DeliverySettings) -> bool:
        """Follow new runtime controls; True when the next round should run at once."""
        before = self.settings
        self.settings = settings
        if settings.public_address != before.public_address:
            self._public = _public_addresses(settings.public_address)
        self._bucket.set_rate(settings.rate, time.monotonic())
        self._starvation.set_share(settings.starvation_share)
        if settings.hop_key != before.hop_key or self.status[0] == "starting":
            await self._close_idle()
            if settings.mx:
                await self._enter_mx()
                return True
            self.mx = False
            # Claimed for MX delivery, still waiting for their destination's share: they
            # go the new way (or, without a next hop, back to the queue at once).
            waiting, self._waiting = self._waiting, []
            self._outcomes += [
                self._temporary(m, Reason.NO_NEXT_HOP, "delivery mode changed before this attempt", hop_wide=False)
                for m in waiting
            ]
            try:
                hop = NextHop.from_settings(settings)
            except StoreError as exc:
                log.warning("delivery: ignoring next hop setting: %s", exc)
                hop = None
            self.hop = hop
            self.hop_is_self = False
            self._hop_backoff.succeeded()
            for conn in self._idle:
                await conn.close()
            self._idle.clear()
            if hop is None:
                self._event(EventKind.RELAY, Reason.NO_NEXT_HOP, "no next hop set: delivery waits — set one with `smtpplus queue next-hop HOST:PORT`")
            elif await is_own_address(hop.host, hop.port, self.own_addresses):
                self.hop_is_self = True
                self._event(
                    EventKind.RELAY, Reason.NEXT_HOP_SELF,
                    f"next hop {hop.address} is this relay's own listening address: refused, delivery waits",
                )
        return True

    async def _publish_status(self) -> None:
        if self.settings.paused:
            status = ("paused", "delivery paused by an operator")
        elif self.mx and self.mx_refused:
            status = ("no server name", self.mx_refused)
        elif self.mx:
            down = sum(d.backing_off(time.time()) for d in self._destinations.known.values())
            status = ("running", "to each domain's MX hosts" + (f" ({down} destination(s) backing off)" if down else ""))
        elif self.hop is None:
            status = ("no next hop", "set one with `smtpplus queue next-hop HOST:PORT`")
        elif self.hop_is_self:
            status = ("next hop is this relay", f"{self.hop.address} is one of this relay's own listening addresses")
        elif self._hop_backoff.down:
            status = ("next hop down", f"{self._hop_backoff.reason}; next try in {max(0.0, self._hop_backoff.retry_at - time.time()):.0f} s")
        else:
            status = ("running", f"to {self.hop.address}")
        # Republished when the state or the hop changes ("running" to a new next hop is
        # news); not for the hop-down countdown, which would write every round.
        if status[0] != self.status[0] or (status[0] != "next hop down" and status[1] != self.status[1]):
            self.status = status
            events = self._take_events()
            try:
                await self._store.run(publish_status, status[0], status[1], events=events)
            except StoreError as exc:
                self._events[:0] = events
                log.warning("delivery: cannot publish status: %s", exc)
            else:
                self._observe(self.observers, events)

    def _tell(self, request: RoundRequest, result: RoundResult) -> None:
        """What the round just committed, as the store recorded it."""
        if not (self.observers or self.outcome_observers) or result.skipped:
            return
        events = list(request.events)
        events += [
            NewEvent(
                _OUTCOME_KIND[o.state], o.reason, username=o.message.username, list_id=o.message.list_id,
                message_id=o.message.id, queue_id=o.message.queue_id, detail=o.detail or o.reply,
            )
            for o in request.outcomes
        ]
        events += [
            NewEvent(
                EventKind.DELIVERY, Reason.DELIVERY_ATTEMPT, username=m.username, list_id=m.list_id,
                message_id=m.id, queue_id=m.queue_id,
                detail=f"attempt {m.attempts} to {request.hop}, priority {m.priority}, {len(m.recipients)} recipient(s)",
            )
            for m in result.claimed
        ]
        self._observe(self.observers, events)
        self._observe(self.outcome_observers, request.outcomes)

    @staticmethod
    def _observe(observers: list[Callable[[Any], None]], items: list[Any]) -> None:
        if not items:
            return
        for observer in observers:
            try:
                observer(items)
            except Exception:  # a log or a metric must never stop delivery
                log.exception("delivery: event observer failed")

    def _heard(self, command: str, reply_class: str) -> None:
        for observer in self.reply_observers:
            try:
                observer(command, reply_class)
            except Exception:  # a metric must never stop delivery
                log.exception("delivery: reply observer failed")

    def _event(self, kind: EventKind, reason: Reason, detail: str) -> None:
        self._events.append(NewEvent(kind, reason, detail=detail, at=time.time()))

    # -- deliveries ---------------------------------------------------------------

    def _launch(self, claimed: list[Claimed]) -> None:
        if not claimed:
            return
        self._bucket.take(len(claimed), time.monotonic())
        self.counters.dispatched += len(claimed)
        if self.mx:
            self._waiting.extend(claimed)
            self._waiting.sort(key=lambda m: (m.priority, m.id))
            self._launch_waiting()
            return
        self._launch_to_hop(claimed)

    def _launch_to_hop(self, claimed: list[Claimed]) -> None:
        hop = self.hop
        for message in claimed:
            if hop is None:  # cannot happen: claims need a hop; give it back at once
                self._outcomes.append(self._temporary(message, Reason.NO_NEXT_HOP, "no next hop", hop_wide=False))
                continue
            flight = _Flight(message)
            self._flights[message.id] = flight
            # The connection is taken now, not when the task first runs, so the idle
            # pool and the in-flight count always add up to the connections open.
            conn = self._connection(hop)
            flight.task = asyncio.create_task(self._deliver(message, hop, conn), name=f"deliver-{message.queue_id}")

    async def _reap_idle(self) -> None:
        if self._mx_idle:
            cutoff = time.monotonic() - IDLE_CONNECTION_TTL
            for hop, conns in list(self._mx_idle.items()):
                keep = [c for c in conns if c.last_used >= cutoff and c.connected]
                for conn in conns:
                    if conn not in keep:
                        await conn.close()
                if keep:
                    self._mx_idle[hop] = keep
                else:
                    del self._mx_idle[hop]
        if not self._idle:
            return
        cutoff = time.monotonic() - IDLE_CONNECTION_TTL
        keep = [c for c in self._idle if c.last_used >= cutoff and c.connected]
        for conn in self._idle:
            if conn not in keep:
                await conn.close()
        self._idle = keep

    def _connection(self, hop: NextHop) -> HopConnection:
        while self._idle:
            conn = self._idle.pop()
            if conn.hop == hop and conn.connected:
                return conn
            # Keep a reference until it ends: the loop holds tasks only weakly, so an
            # unreferenced close could be collected mid-way and never finish.
            closing = asyncio.create_task(conn.close(), name="close-idle-connection")
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        self.counters.connections_opened += 1
        return HopConnection(
            hop, connect_timeout=self.connect_timeout, command_timeout=self.command_timeout,
            local_hostname=self.server_name, recipients_per_transaction=self.recipients_per_transaction,
            signer=self._dkim, on_reply=self._heard,
        )

    async def _deliver(self, message: Claimed, hop: NextHop, conn: HopConnection) -> None:
        try:
            try:
                result = await conn.deliver(message)
            except HopFailure as exc:
                result = all_deferred(message, exc.reason, exc.reply, hop_failure=True)
            except asyncio.CancelledError:
                await conn.close()
                raise
            except Exception as exc:  # a bug must not lose the message: retry later
                log.exception("delivery: unexpected error delivering %s", message.queue_id)
                await conn.close()
                result = all_deferred(message, Reason.DEFERRED_CONNECT, f"internal error: {type(exc).__name__}")
            self._record(message, result, hop)
            keep = (
                conn.connected and not self._stopping and self.hop == hop
                and len(self._idle) + len(self._flights) <= self.settings.parallel
            )
            if keep:
                self._idle.append(conn)
            else:
                await conn.close()
        finally:
            self._flights.pop(message.id, None)
            self._wake.set()

    def _record(self, message: Claimed, result: AttemptResult, hop: NextHop) -> None:
        now = time.time()
        if result.hop_failure:
            self.counters.hop_failures += 1
            was_down = self._hop_backoff.down
            if was_down and now < self._hop_backoff.retry_at:
                retry_at = self._hop_backoff.retry_at  # a parallel attempt failing the same way
            else:
                retry_at = self._hop_backoff.failed(now, result.reply, self._rng)
            if not was_down:
                self._event(
                    EventKind.RELAY, Reason.NEXT_HOP_DOWN,
                    f"next hop {hop.address} unusable ({result.reply}); backing off, next try in {retry_at - now:.1f} s",
                )
        elif self._hop_backoff.succeeded():
            self._event(EventKind.RELAY, Reason.NEXT_HOP_UP, f"next hop {hop.address} answers again")
        for reason, detail in result.notes:
            self._message_event(message, reason, detail, now)
        self._outcomes.append(self._outcome(message, result, hop, now, destination_class="smarthost"))

    def _message_event(self, m: Claimed, reason: Reason, detail: str, at: float) -> None:
        self._events.append(
            NewEvent(
                EventKind.DELIVERY, reason, username=m.username, list_id=m.list_id,
                message_id=m.id, queue_id=m.queue_id, at=at, detail=detail,
            )
        )

    def _temporary(self, message: Claimed, reason: Reason, reply: str, *, hop_wide: bool) -> Outcome:
        result = all_deferred(message, reason, reply, hop_failure=hop_wide)
        return self._outcome(message, result, self.hop, time.time())

    def _outcome(
        self, m: Claimed, result: AttemptResult, hop: NextHop | None, now: float, *, target: str | None = None,
        destination_class: str = "none",
    ) -> Outcome:
        """Turn one attempt into the message's new state (:func:`settle`), with a
        bounce for the failed recipients, and count it."""
        retry = RetryPolicy(self.retry_base, self.retry_max, self.queue_lifetime)
        settled = settle(m, result, now=now, retry=retry, rng=self._rng)
        relayed = [r for r in settled.sent if r.address in result.relayed]
        bounce = self._report(m, settled.failed, relayed, hop, now)
        if settled.state == "sent":
            self.counters.delivered += 1
        elif settled.state == "deferred":
            self.counters.deferred += 1
        else:
            self.counters.failed += 1
        detail = outcome_detail(m, settled, target or (hop.address if hop else "-"), now)
        return Outcome(
            m, settled.state, settled.reason, settled.reply, settled.recipients, settled.next_attempt_at, bounce, detail,
            destination_class,
        )

    def _report(
        self, m: Claimed, failed: list[RecipientResult], relayed: list[RecipientResult], hop: NextHop | None, now: float
    ) -> NewMessage | None:
        """The DSN for this attempt (RFC 3461/3464), or None: failures the sender's
        NOTIFY asks for (all, without NOTIFY), "relayed" reports for NOTIFY=SUCCESS
        recipients handed to a hop without DSN; nothing at all for a null sender."""
        def dsn(address: str) -> RecipientDsn:
            return m.recipient_dsn.get(address) or NO_DSN

        reported = [
            FailedRecipient(r.address, r.reply, remote=r.remote, orcpt=dsn(r.address).orcpt)
            for r in failed if wants_report(dsn(r.address).notify, "failed")
        ]
        reported += [
            FailedRecipient(r.address, r.reply, action="relayed", orcpt=dsn(r.address).orcpt)
            for r in relayed if wants_report(dsn(r.address).notify, "relayed")
        ]
        silent = [r.address for r in failed if not wants_report(dsn(r.address).notify, "failed")]
        if not m.mail_from:
            if failed:
                self._message_event(m, Reason.BOUNCE_SUPPRESSED, "no bounce: the message has a null reverse path (MAIL FROM:<>)", now)
            return None
        if silent:
            self._message_event(
                m, Reason.BOUNCE_SUPPRESSED,
                f"no bounce for {len(silent)} failed recipient(s): their NOTIFY does not ask for failures", now,
            )
        if not reported:
            return None
        if any(r.action == "relayed" for r in reported):
            relayed_count = sum(r.action == "relayed" for r in reported)
            self._message_event(
                m, Reason.DSN_RELAYED,
                f"{relayed_count} recipient(s) relayed to a next hop without DSN: \"relayed\" report to the sender", now,
            )
        self.counters.bounced += 1
        return bounce_message(
            original=m.data, original_sender=m.mail_from, failed=reported,
            queue_id=m.queue_id, arrival=m.created_at, reporting_mta=self.server_name,
            next_hop=hop.host if hop else None, now=now, ret=m.dsn_ret, envid=m.dsn_envid,
            sender=self.system_sender,
        )

    # -- MX delivery ------------------------------------------------------------------

    async def _enter_mx(self) -> None:
        """Switch to MX delivery: refuse without a dotted server name (MX hosts judge the
        relay by its EHLO name), else get a resolver and the routes."""
        self.mx = True
        self.hop = None
        self.hop_is_self = False
        self._hop_backoff.succeeded()
        if server_name_warning(self.server_name) is not None:
            self.mx_refused = (
                f"MX delivery needs a dotted server name: set server_name (e.g. relay.example.com), not {self.server_name!r}"
            )
            self._event(EventKind.RELAY, Reason.MX_NEEDS_SERVER_NAME, self.mx_refused)
            return
        self.mx_refused = None
        from relay.mx import resolver_for

        try:
            setting = await self._store.run(get_setting, Keys.DNS_RESOLVER)
            self._resolver = resolver_for(setting, os.environ, timeout=self.dns_timeout)
        except (StoreError, ValueError) as exc:
            self.mx_refused = f"no DNS resolver for MX delivery: {exc}"
            self._event(EventKind.RELAY, Reason.DEFERRED_DNS, self.mx_refused)
            return
        await self._read_routes(time.time())

    async def _read_routes(self, now: float) -> None:
        self._routes_read = now
        try:
            self._routes = await self._store.run(route_map)
        except StoreError as exc:  # keep the last ones
            log.warning("delivery: cannot read routes: %s", exc)

    async def _close_idle(self) -> None:
        idle = self._idle + [conn for conns in self._mx_idle.values() for conn in conns]
        self._idle, self._mx_idle = [], {}
        for conn in idle:
            await conn.close()

    def _launch_waiting(self) -> None:
        """Start the claimed messages (strict priority) whose destinations have room; the
        others keep their lease and wait for a delivery to the same destination to end.
        A message whose destinations all back off starts too: it is deferred at once."""
        now = time.time()
        share = self._share()
        still: list[Claimed] = []
        for message in self._waiting:
            if self._stopping or len(self._flights) >= self.settings.parallel:
                still.append(message)
                continue
            domains = list(group_by_destination(message.recipients))
            backing_off = all(self._destinations.get(d).backing_off(now) for d in domains)
            if not backing_off and not self._destinations.has_room(domains, now, share):
                still.append(message)
                continue
            flight = _Flight(message)
            self._flights[message.id] = flight
            self._destinations.start(domains)
            flight.task = asyncio.create_task(self._deliver_mx(message, domains), name=f"deliver-{message.queue_id}")
        self._waiting = still

    async def _deliver_mx(self, message: Claimed, domains: list[str]) -> None:
        """One attempt: one transaction per destination, all at once; one outcome."""
        try:
            groups = group_by_destination(message.recipients)
            # By route or by MX, as _hops_for will decide for each destination now.
            classes = {"route" if domain in self._routes else "mx" for domain in groups}
            try:
                parts = await asyncio.gather(*(self._deliver_destination(message, d, rcpts) for d, rcpts in groups.items()))
                result = merge(message, [part for part, _target in parts])
                target = ", ".join(target for _part, target in parts)
            except Exception as exc:  # a bug must not lose the message: retry later
                log.exception("delivery: unexpected error delivering %s", message.queue_id)
                result = all_deferred(message, Reason.DEFERRED_CONNECT, f"internal error: {type(exc).__name__}")
                target = ", ".join(groups)
            now = time.time()
            for reason, detail in result.notes:
                self._message_event(message, reason, detail, now)
            self._outcomes.append(self._outcome(
                message, result, None, now, target=target, destination_class=classes.pop() if len(classes) == 1 else "mixed",
            ))
        finally:
            self._destinations.finish(domains)
            self._flights.pop(message.id, None)
            if not self._stopping:
                self._launch_waiting()
            self._wake.set()

    async def _deliver_destination(self, message: Claimed, domain: str, rcpts: list[str]) -> tuple[AttemptResult, str]:
        """One transaction for one destination: its route, else its MX hosts in order
        (a host that fails as a whole, or defers every recipient, passes to the next)."""
        part = dataclasses.replace(message, recipients=rcpts)
        now = time.time()
        dest = self._destinations.get(domain)
        if dest.backing_off(now):
            reply = f"451 4.4.1 {domain} is backing off after failures ({dest.backoff.reason}); not tried"
            return all_deferred(part, Reason.DEFERRED_DESTINATION, reply), domain
        hops, failure = await self._hops_for(domain)
        if failure is not None:
            if failure.permanent:
                code = 556 if failure.enhanced == "5.1.10" else 550
                reply = f"{code} {failure.enhanced} {failure.message}"
                self._destinations.answered(domain, reply, now)
                return all_failed(part, failure.reason, reply), domain
            reply = f"451 {failure.enhanced} {failure.message}"
            self._destination_failed(domain, reply, now)
            return all_deferred(part, failure.reason, reply, hop_failure=True), domain
        result: AttemptResult | None = None
        target = domain
        for n, hop in enumerate(hops):
            target = f"{domain} via {hop.tls_name or hop.host} {hop.address}"
            conn = self._mx_connection(hop)
            try:
                result = await conn.deliver(part)
            except HopFailure as exc:
                result = all_deferred(part, exc.reason, exc.reply, hop_failure=True)
            except asyncio.CancelledError:
                await conn.close()
                raise
            self._release_mx_connection(conn)
            if not all(r.state == "deferred" for r in result.recipients):
                break
            if n + 1 < len(hops):
                self._message_event(
                    message, Reason.MX_HOST_FAILED, f"{target}: {result.reply}; trying the next host", time.time(),
                )
        assert result is not None
        now = time.time()
        if all(r.state == "deferred" for r in result.recipients):
            self._destination_failed(domain, result.reply, now)
        elif self._destinations.answered(domain, result.reply, now):
            self._event(EventKind.RELAY, Reason.DESTINATION_UP, f"destination {domain} answers again")
        return result, target

    async def _hops_for(self, domain: str) -> tuple[list[NextHop], Any]:
        """The hosts to try for a destination, in order, or why there are none (a
        relay.mx.RouteFailure). Never AUTH to an MX or a route: no user, no password."""
        tls = self.settings.next_hop_tls
        cafile = self.settings.next_hop_cafile
        from relay.mx import RouteFailure

        routed = self._routes.get(domain)
        if routed is not None:
            if await self._is_self(routed[0], routed[1]):
                # As a smarthost that is this relay: an operator's mistake, so the mail
                # waits (deferred, the destination backs off) until the route is fixed.
                return [], RouteFailure(
                    domain, f"route for {domain} goes to {routed[0]}:{routed[1]}, this relay's own listening "
                    f"address: refused, mail waits — fix it with `smtpplus routes rm {domain}`",
                    permanent=False, enhanced="4.4.6", reason=Reason.ROUTE_SELF,
                )
            return [NextHop(routed[0], routed[1], tls, cafile=cafile)], None
        try:
            route = await self._resolver.route(domain)
        except RouteFailure as failure:
            return [], failure
        port = int(_setting(self.config, "mx_port"))
        hosts = list(route.hosts)
        for host in route.hosts:
            if any([canonical_address(address) in self._public or await self._is_self(address, port) for address in host.addresses]):
                # Postfix's rule: this relay is one of the domain's MX hosts (one of its
                # listeners, or its public address behind NAT), so only better-preference
                # hosts may take the mail; none left is a loop (5.4.6).
                hosts = [h for h in hosts if h.preference < host.preference]
                if not hosts:
                    return [], RouteFailure(
                        domain, f"mail for {domain} loops back to myself ({host.name} is this relay)",
                        permanent=True, enhanced="5.4.6", reason=Reason.FAILED_MX_LOOP,
                    )
                break
        hops = [
            NextHop(address, port, tls, cafile=cafile, tls_name=host.name)
            for host in hosts for address in host.addresses
        ]
        return hops, None

    async def _is_self(self, host: str, port: int) -> bool:
        """Whether HOST:PORT is one of this relay's own listeners (remembered: MX hosts
        are addresses and the relay's listeners do not change while it runs)."""
        if not self.own_addresses:
            return False
        known = self._own_checked.get((host, port))
        if known is None:
            known = self._own_checked[(host, port)] = await is_own_address(host, port, self.own_addresses)
        return known

    def _destination_failed(self, domain: str, reply: str, now: float) -> None:
        was_up, retry_at = self._destinations.failed(domain, reply, now, self._rng)
        self.counters.hop_failures += 1
        if was_up:
            self._event(
                EventKind.RELAY, Reason.DESTINATION_DOWN,
                f"destination {domain} unusable ({reply}); backing off, next try in {retry_at - now:.1f} s",
            )

    def _mx_connection(self, hop: NextHop) -> HopConnection:
        pool = self._mx_idle.get(hop, [])
        while pool:
            conn = pool.pop()
            if conn.connected:
                return conn
        self.counters.connections_opened += 1
        return HopConnection(
            hop, connect_timeout=self.connect_timeout, command_timeout=self.command_timeout,
            local_hostname=self.server_name, recipients_per_transaction=self.recipients_per_transaction,
            signer=self._dkim,  # signed per destination's transaction, as per smarthost attempt
            on_reply=self._heard,
        )

    def _release_mx_connection(self, conn: HopConnection) -> None:
        # Many destinations share the connections: keep more idle ones than ``parallel``
        # (closed after IDLE_CONNECTION_TTL unused), or each message to a destination
        # not delivered to a moment ago would pay for a new connection and EHLO.
        idle = sum(len(conns) for conns in self._mx_idle.values())
        if conn.connected and not self._stopping and self.mx and idle < max(MX_IDLE_CONNECTIONS, self.settings.parallel):
            self._mx_idle.setdefault(conn.hop, []).append(conn)
            return
        closing = asyncio.create_task(conn.close(), name="close-mx-connection")
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    # -- system sender ----------------------------------------------------------------

    async def _refresh_system_sender(self) -> None:
        try:
            choice = await self._store.run(system_sender_choice)
        except Exception as exc:  # a bad setting or a busy store: keep the last one
            log.warning("delivery: cannot read the system sender: %s", exc)
            return
        self.system_sender = choice.address

    async def _follow_system_sender(self) -> None:
        while not self._stopping:
            await self._sleep_stopping(SENDER_REFRESH)
            if not self._stopping:
                await self._refresh_system_sender()

    # -- retention ------------------------------------------------------------------

    async def _maintain(self) -> None:
        await self._sleep_stopping(5.0)
        while not self._stopping:
            try:
                pruned = await self._store.run(prune, before=time.time() - self.retention)
                if pruned.messages or pruned.events:
                    log.info("retention: pruned %d message(s) and %d event(s)", pruned.messages, pruned.events)
            except StoreError as exc:
                log.warning("retention: prune failed: %s", exc)
            await self._sleep_stopping(PRUNE_EVERY)

    async def _sleep_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)


def _final_round(db: Connection, request: RoundRequest) -> RoundResult:
    """Record the last outcomes, then give back whatever this engine still holds."""
    from relay.store.queue import release_claims

    result = dispatch_round(db, request)
    release_claims(db, request.owner)
    return result


def _public_addresses(setting: str | None) -> tuple[str, ...]:
    """The relay's public addresses (the CLI checked them when it stored them)."""
    try:
        return parse_public_addresses(setting or "")
    except PolicyError as exc:
        log.warning("delivery: ignoring the public address setting: %s", exc)
        return ()
