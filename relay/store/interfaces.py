"""Typed interfaces of the store: what callers may rely on, whatever the backend.

The operations — :class:`Queue`, :class:`Intake`, :class:`Counts`, :class:`Directory`,
:class:`Campaigns`, :class:`Verification`, :class:`ReadModel` (what console and CLI
read), :class:`Settings`, :class:`EventLog`, :class:`Subscriptions`,
:class:`Suppressions`, :class:`Lease`, :class:`DkimKeys`, :class:`Routing` — are the store's module functions, which
take the connection first (``get_setting(db, key)``). They are written once, in SQL
that every backend runs (:mod:`relay.store.connection`), so each module satisfies its
protocol as it is (mypy checks a module against a protocol) and callers keep importing
the modules. :class:`Backend` bundles them with what *is* per backend: opening,
transactions, change feeds, the relay lock, the integrity check, backup and error
translation (the SQLite one: :mod:`relay.store.sqlite.backend`; which backend a
``--db`` location names: :func:`relay.store.backend.backend_for`). The contract tests
(``tests/store_contract/``) run against every backend. Errors are the store's own
(:mod:`relay.store.errors`).

This module imports no driver.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from relay.store.changes import ChangeFeed, SyncChangeFeed

if TYPE_CHECKING:
    from relay.dkim import KeyPair, StoredKey
    from relay.dnscheck import DnsResult
    from relay.store.bridge import AsyncStore
    from relay.store.campaigns import CampaignInfo
    from relay.store.connection import Connection
    from relay.store.counts import CountFix
    from relay.store.directory import AuthRecord, IdentityInfo, ListInfo, MemberImport, UserInfo
    from relay.store.dkim import KeyInfo
    from relay.store.errors import StoreError
    from relay.store.events import Event, NewEvent
    from relay.store.intake import NewMessage, Queued
    from relay.store.lease import Acquired, RelayStatus
    from relay.store.queue import (
        ActionResult,
        DeliverySettings,
        MessageDetail,
        MessageRow,
        Pruned,
        QueueOverview,
        RoundRequest,
        RoundResult,
    )
    from relay.store.routing import DestinationRow, DestinationState, Route
    from relay.store.subscriptions import SubscriptionInfo
    from relay.store.suppressions import Suppression
    from relay.store.verification import CodeCheck, CodeInfo, SenderView, SystemSender
    from relay.store.views import CampaignRow, Lane, ListRow
    from relay.store.views import MessageDetail as ViewDetail
    from relay.unsubscribe import UnsubscribeSettings

__all__ = [
    "Backend",
    "Campaigns",
    "ChangeFeed",
    "CheckResult",
    "Counts",
    "DkimKeys",
    "Directory",
    "EventLog",
    "Intake",
    "Lease",
    "LockState",
    "Queue",
    "ReadModel",
    "RelayLock",
    "Routing",
    "Settings",
    "Subscriptions",
    "Suppressions",
    "SyncChangeFeed",
    "Verification",
]

Location = str | os.PathLike[str]  # what --db names: a file path (SQLite) or a URL


class Settings(Protocol):
    """Key/value settings (JSON values): runtime controls and relay-published facts."""

    def get_setting(self, db: Connection, key: str, default: Any = None) -> Any: ...

    def get_settings(self, db: Connection, keys: list[str] | None = None) -> dict[str, Any]: ...

    def set_setting(self, db: Connection, key: str, value: Any) -> None: ...

    def seed_setting(self, db: Connection, key: str, value: Any) -> bool:
        """Set ``key`` only when unset; True when it was set."""
        ...

    def delete_setting(self, db: Connection, key: str) -> None: ...


class EventLog(Protocol):
    """The event log: append, read one message's, page through newest first."""

    def record_event(self, db: Connection, event: NewEvent) -> int: ...

    def record_events(self, db: Connection, events: Iterable[NewEvent]) -> None: ...

    def events_for_message(self, db: Connection, message_id: int) -> list[Event]: ...

    def find_events(
        self,
        db: Connection,
        *,
        username: str | None = None,
        kind: str | None = None,
        kinds: Sequence[str] | None = None,
        reason: str | None = None,
        port: int | None = None,
        since: float | None = None,
        until: float | None = None,
        before_id: int | None = None,
        limit: int = 200,
    ) -> list[Event]: ...


class Queue(Protocol):
    """The delivery queue: the engine's dispatch rounds and reclaims, the operators'
    actions (hold, release, retry, delete), listings, runtime delivery settings, pruning."""

    def delivery_settings(self, db: Connection) -> DeliverySettings: ...

    def set_paused(self, db: Connection, paused: bool) -> bool: ...

    def set_rate(self, db: Connection, rate: float) -> None: ...

    def set_parallel(self, db: Connection, parallel: int) -> None: ...

    def set_starvation_share(self, db: Connection, share: float | str) -> float: ...

    def set_next_hop(
        self,
        db: Connection,
        hop: str | None,
        *,
        tls: str | None = None,
        user: str | None = None,
        password: str | None = None,
        cafile: str | None = None,
    ) -> str | None: ...

    def publish_status(
        self,
        db: Connection,
        state: str,
        detail: str = '',
        *,
        events: Sequence[NewEvent] = (),
        now: float | None = None,
    ) -> None: ...

    def dispatch_round(self, db: Connection, req: RoundRequest) -> RoundResult: ...

    def reclaim_owner(self, db: Connection, owner: str, *, now: float | None = None) -> int: ...

    def release_claims(self, db: Connection, owner: str, *, now: float | None = None) -> int: ...

    def reclaim_expired(self, db: Connection, *, now: float | None = None) -> int: ...

    def queue_ids_in(self, db: Connection, states: Sequence[str]) -> list[str]: ...

    def hold(
        self,
        db: Connection,
        refs: Iterable[str],
        *,
        now: float | None = None,
        skip_unknown: bool = False,
    ) -> list[ActionResult]: ...

    def release(
        self,
        db: Connection,
        refs: Iterable[str],
        *,
        now: float | None = None,
        skip_unknown: bool = False,
    ) -> list[ActionResult]: ...

    def retry(
        self,
        db: Connection,
        refs: Iterable[str],
        *,
        now: float | None = None,
        skip_unknown: bool = False,
    ) -> list[ActionResult]: ...

    def delete(
        self,
        db: Connection,
        refs: Iterable[str],
        *,
        now: float | None = None,
        skip_unknown: bool = False,
    ) -> list[ActionResult]: ...

    def list_messages(
        self,
        db: Connection,
        *,
        state: str | None = None,
        priority: int | None = None,
        limit: int = 50,
        after: tuple[int, int] | None = None,
        campaign_id: int | None = None,
    ) -> list[MessageRow]: ...

    def message_detail(self, db: Connection, ref: str) -> MessageDetail: ...

    def read_message(
        self,
        db: Connection,
        *,
        message_id: int | None = None,
        queue_id: str | None = None,
        max_recipients: int | None = None,
    ) -> MessageDetail | None: ...

    def queue_overview(self, db: Connection, *, now: float | None = None) -> QueueOverview: ...

    def prune(self, db: Connection, *, before: float, batch: int = 2000) -> Pruned: ...


class Intake(Protocol):
    """Accepting mail into the queue (SMTP intake, campaigns, verification codes)."""

    def insert_messages(
        self,
        db: Connection,
        messages: Sequence[NewMessage],
        *,
        now: float | None = None,
    ) -> list[Queued]: ...

    def count_messages(self, db: Connection, origin: str | None = None) -> int: ...


class Counts(Protocol):
    """The maintained per-state/priority and per-list counts (kept in the same
    transaction as each state change), and their check and repair."""

    def state_counts(self, db: Connection) -> dict[tuple[str, int], int]: ...

    def list_queued(self, db: Connection) -> dict[int, int]: ...

    def oldest_waiting(self, db: Connection, priority: int) -> float | None: ...

    def ready_since(self, db: Connection, now: float) -> float | None: ...

    def differences(self, db: Connection) -> list[CountFix]:
        """Where the counts differ from a full recount (empty: they match)."""
        ...

    def recount(self, db: Connection) -> list[CountFix]:
        """Repair the counts from a full recount; returns what was fixed."""
        ...


class Directory(Protocol):
    """Lists, members, users (passwords as argon2id hashes), sender identities and rules."""

    def create_list(self, db: Connection, name: str, description: str = '') -> ListInfo: ...

    def get_list(self, db: Connection, name: str) -> ListInfo: ...

    def all_lists(self, db: Connection) -> list[ListInfo]: ...

    def edit_list(
        self,
        db: Connection,
        name: str,
        *,
        description: str | None = None,
        new_name: str | None = None,
    ) -> ListInfo: ...

    def delete_list(self, db: Connection, name: str) -> None: ...

    def import_members(self, db: Connection, list_name: str, members: Iterable[tuple[str, str]]) -> tuple[int, int]: ...

    def import_member_stream(
        self,
        db: Connection,
        list_name: str,
        members: Iterable[tuple[str, str]],
    ) -> MemberImport: ...

    def list_members(
        self,
        db: Connection,
        list_name: str,
        *,
        after: str = '',
        limit: int = 1000,
    ) -> list[tuple[str, str]]: ...

    def ensure_identity(self, db: Connection, value: str) -> int: ...

    def get_identity(self, db: Connection, value: str) -> IdentityInfo: ...

    def all_identities(self, db: Connection, *, state: str | None = None) -> list[IdentityInfo]: ...

    def identity_states(self, db: Connection, values: Iterable[str]) -> dict[str, str]: ...

    def identity_users(self, db: Connection, identity_id: int) -> list[str]: ...

    def mark_verified(self, db: Connection, identity_id: int, method: str, reason: str | None = None) -> bool: ...

    def approve_identities(
        self,
        db: Connection,
        values: Iterable[str],
        reason: str,
    ) -> list[tuple[IdentityInfo, bool]]: ...

    def get_user(self, db: Connection, username: str) -> UserInfo: ...

    def all_users(self, db: Connection, list_name: str | None = None) -> list[UserInfo]: ...

    def create_user(
        self,
        db: Connection,
        *,
        list_name: str,
        password_hash: str,
        username: str | None = None,
        priority: int = 3,
        note: str = '',
        domains: list[str] | None = None,
        senders: list[str] | None = None,
        active: bool = False,
    ) -> UserInfo: ...

    def edit_user(
        self,
        db: Connection,
        username: str,
        *,
        priority: int | None = None,
        note: str | None = None,
        domains: list[str] | None = None,
        senders: list[str] | None = None,
    ) -> UserInfo: ...

    def set_active(self, db: Connection, username: str, active: bool) -> UserInfo: ...

    def set_password_hash(self, db: Connection, username: str, password_hash: str) -> None: ...

    def delete_user(self, db: Connection, username: str) -> None: ...

    def auth_record(self, db: Connection, username: str) -> AuthRecord | None: ...

    def auth_version(self, db: Connection, username: str) -> int | None: ...


class Campaigns(Protocol):
    """Campaigns: scheduled mailings to a list, expanded into the queue in batches."""

    def get_campaign(self, db: Connection, campaign_id: int) -> CampaignInfo: ...

    def list_campaigns(self, db: Connection, *, limit: int = 200) -> list[CampaignInfo]: ...

    def insert_campaign(
        self,
        db: Connection,
        target: ListInfo,
        *,
        subject: str,
        template: bytes,
        mail_from: str,
        scheduled_at: float,
        priority: int,
        now: float,
    ) -> CampaignInfo: ...

    def pause_campaign(self, db: Connection, campaign_id: int, *, now: float | None = None) -> CampaignInfo: ...

    def resume_campaign(self, db: Connection, campaign_id: int, *, now: float | None = None) -> CampaignInfo: ...

    def cancel_campaign(self, db: Connection, campaign_id: int, *, now: float | None = None) -> CampaignInfo: ...

    def start_due_campaigns(self, db: Connection, *, now: float | None = None) -> list[int]: ...

    def next_scheduled_at(self, db: Connection) -> float | None: ...

    def expandable_campaigns(self, db: Connection) -> list[int]: ...

    def expand_batch(
        self,
        db: Connection,
        campaign_id: int,
        *,
        batch: int = ...,
        server_name: str = 'localhost',
        now: float | None = None,
    ) -> int: ...

    def finish_campaigns(self, db: Connection, *, now: float | None = None) -> list[int]: ...


class Verification(Protocol):
    """Sender verification: codes, DNS checks, manual approval, the system sender."""

    def sender_views(self, db: Connection, *, state: str | None = None) -> list[SenderView]: ...

    def sender_view(self, db: Connection, value: str) -> SenderView: ...

    def code_info(self, db: Connection, identity_id: int) -> CodeInfo | None: ...

    def system_sender_choice(self, db: Connection) -> SystemSender: ...

    def system_sender(self, db: Connection) -> str: ...

    def queue_code(
        self,
        db: Connection,
        address: str,
        *,
        code_hash: str,
        expires_at: float,
        message: NewMessage,
        detail: str,
        now: float,
    ) -> tuple[IdentityInfo, Queued]: ...

    def confirm_code(self, db: Connection, address: str, code: str, *, now: float | None = None) -> CodeCheck: ...

    def pending_address(self, db: Connection, address: str) -> IdentityInfo: ...

    def record_dns_check(
        self,
        db: Connection,
        domain: str,
        result: DnsResult,
        *,
        now: float | None = None,
    ) -> IdentityInfo: ...

    def approve(self, db: Connection, values: Iterable[str], reason: str) -> list[tuple[IdentityInfo, bool]]: ...


class ReadModel(Protocol):
    """What the console and the CLI read: lanes, the queue page, a message, lists, campaigns."""

    def priority_lanes(self, db: Connection) -> list[Lane]: ...

    def delivery_rate(self, db: Connection, *, now: float | None = None, window: float = 10.0) -> float: ...

    def queue_page(
        self,
        db: Connection,
        state: str = 'queued',
        *,
        after: tuple[int, int] | None = None,
        limit: int = 50,
    ) -> list[MessageRow]: ...

    def message_detail(
        self,
        db: Connection,
        message_id: int | None = None,
        *,
        queue_id: str | None = None,
        max_recipients: int = 200,
    ) -> ViewDetail | None: ...

    def list_rows(self, db: Connection, *, since: float) -> list[ListRow]: ...

    def campaign_rows(self, db: Connection, *, limit: int = 50) -> list[CampaignRow]: ...


class Subscriptions(Protocol):
    """Per-list unsubscribe settings and members' subscriptions (RFC 8058 tokens name them)."""

    def list_settings(self, db: Connection, list_id: int) -> UnsubscribeSettings: ...

    def set_list_settings(self, db: Connection, list_id: int, settings: UnsubscribeSettings) -> None: ...

    def batch_subscriptions(
        self,
        db: Connection,
        list_id: int,
        addresses: Sequence[str],
    ) -> dict[str, tuple[int, bool]]: ...

    def get_subscription(self, db: Connection, subscription_id: int) -> SubscriptionInfo: ...

    def mark_unsubscribed(
        self,
        db: Connection,
        info: SubscriptionInfo,
        *,
        via: str,
        now: float | None = None,
    ) -> tuple[bool, int]: ...

    def remove_unsent_campaign_mail(self, db: Connection, address: str, *, list_id: int | None = None) -> int: ...

    def unsubscribed_counts(self, db: Connection) -> dict[int, int]: ...


class Suppressions(Protocol):
    """Addresses no campaign mails again (operator entries, 5.1.x hard bounces)."""

    def list_suppressions(self, db: Connection, *, limit: int | None = None) -> list[Suppression]: ...

    def suppressed_among(self, db: Connection, addresses: Sequence[str]) -> set[str]: ...

    def suppressed_per_list(self, db: Connection) -> dict[int, int]: ...

    def add_suppression(
        self,
        db: Connection,
        address: str,
        *,
        detail: str = "",
        now: float | None = None,
    ) -> tuple[Suppression, int]: ...

    def remove_suppression(self, db: Connection, address: str, *, now: float | None = None) -> Suppression: ...

    def suppress_hard_bounces(
        self,
        db: Connection,
        failed: Iterable[tuple[str, str]],
        *,
        list_id: int | None,
        queue_id: str,
        message_id: int,
        now: float,
    ) -> list[NewEvent]: ...


class Lease(Protocol):
    """One relay per store: the lease a relay takes, refreshes and releases, and its status."""

    def acquire_lease(
        self,
        db: Connection,
        owner: str,
        pid: int,
        host: str,
        listen_host: str,
        stale_after: float = ...,
        *,
        now: float | None = None,
        locked: bool = False,
    ) -> Acquired: ...

    def heartbeat(self, db: Connection, owner: str, *, now: float | None = None) -> bool: ...

    def mark_listening(self, db: Connection, owner: str, *, now: float | None = None) -> None: ...

    def release(self, db: Connection, owner: str, *, now: float | None = None) -> None: ...

    def relay_status(self, db: Connection, stale_after: float = ..., *, now: float | None = None) -> RelayStatus: ...


class DkimKeys(Protocol):
    """DKIM keys per domain and selector: one active key per domain, rotation (a
    pending key activated once published, or at once), removal."""

    def list_keys(self, db: Connection, domain: str | None = None) -> list[KeyInfo]: ...

    def get_key(self, db: Connection, domain: str, selector: str) -> KeyInfo: ...

    def active_key(self, db: Connection, domain: str) -> KeyInfo | None: ...

    def selectors(self, db: Connection, domain: str) -> list[str]: ...

    def active_keys(self, db: Connection) -> list[StoredKey]: ...

    def add_key(
        self,
        db: Connection,
        domain: str,
        selector: str,
        pair: KeyPair,
        *,
        now: float | None = None,
    ) -> KeyInfo: ...

    def rotate_key(
        self,
        db: Connection,
        domain: str,
        selector: str,
        pair: KeyPair,
        *,
        now: float | None = None,
    ) -> tuple[KeyInfo, KeyInfo]: ...

    def pending_key(self, db: Connection, domain: str) -> KeyInfo | None: ...

    def stage_key(
        self,
        db: Connection,
        domain: str,
        selector: str,
        pair: KeyPair,
        *,
        now: float | None = None,
    ) -> tuple[KeyInfo, KeyInfo]: ...

    def activate_key(
        self, db: Connection, domain: str, selector: str, *, public_key: str | None = None, now: float | None = None
    ) -> tuple[KeyInfo, KeyInfo | None]: ...

    def remove_key(self, db: Connection, domain: str, selector: str, *, now: float | None = None) -> KeyInfo: ...


class Routing(Protocol):
    """Per-domain routes for MX delivery, and the destinations the engine publishes."""

    def add_route(self, db: Connection, domain: str, host: str, port: int, *, now: float | None = None) -> Route: ...

    def remove_route(self, db: Connection, domain: str) -> Route: ...

    def list_routes(self, db: Connection) -> list[Route]: ...

    def route_map(self, db: Connection) -> dict[str, tuple[str, int]]: ...

    def record_destinations(self, db: Connection, states: Sequence[DestinationState], now: float) -> None: ...

    def destination_rows(self, db: Connection, *, limit: int = 1000) -> list[DestinationRow]: ...


@dataclass(frozen=True, slots=True)
class LockState:
    """What a probe of the relay lock found (PostgreSQL: whether any relay holds its
    own, and the oldest live relay's facts)."""

    held: bool | None  # None: no lock to probe (never served by a relay that locks)
    facts: dict[str, Any] = field(default_factory=dict)  # what the holder wrote: pid, host, state


class RelayLock(Protocol):
    """A relay's lock: held by the relay from start to stop, dropped by the operating
    system (or the server) the instant its process dies. One per store on SQLite; on
    PostgreSQL each relay holds one on its own id (relay.store.postgres.relays)."""

    @property
    def held(self) -> bool: ...

    def acquire(self, facts: dict[str, Any]) -> None:
        """Take it or raise: :class:`relay.store.errors.RelayAlreadyRunning` naming the
        holder (SQLite), a :class:`relay.store.errors.StoreError` when the relay's own id
        is in use (PostgreSQL)."""
        ...

    def note(self, **facts: Any) -> None:
        """Tell readers about the holder (pid, host) or why it stopped (best effort)."""
        ...

    def release(self) -> None: ...


@dataclass(frozen=True, slots=True)
class CheckResult:
    store: str
    ok: bool
    pages: int
    bytes: int
    seconds: float
    problems: list[str] = field(default_factory=list)  # the check's lines (at most 100)


class Backend(Protocol):
    """One store backend: the driver-specific entry points, and the operations."""

    name: str

    # The operations: the shared modules of relay.store (properties, so a backend
    # imports them only when asked).
    @property
    def settings(self) -> Settings: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def queue(self) -> Queue: ...

    @property
    def intake(self) -> Intake: ...

    @property
    def counts(self) -> Counts: ...

    @property
    def directory(self) -> Directory: ...

    @property
    def campaigns(self) -> Campaigns: ...

    @property
    def verification(self) -> Verification: ...

    @property
    def read_model(self) -> ReadModel: ...

    @property
    def subscriptions(self) -> Subscriptions: ...

    @property
    def suppressions(self) -> Suppressions: ...

    @property
    def lease(self) -> Lease: ...

    @property
    def dkim(self) -> DkimKeys: ...

    @property
    def routing(self) -> Routing: ...

    def handles(self, location: Location) -> bool:
        """Whether ``location`` names a store of this backend."""
        ...

    def open(self, location: Location, *, create: bool = True, **options: Any) -> Connection:
        """A synchronous connection (created and migrated when ``create``)."""
        ...

    def schema_version(self, db: Connection) -> int:
        """The store's schema version (:data:`relay.store.migrations.SCHEMA_VERSION`
        once :meth:`open` migrated it)."""
        ...

    def transaction(self, db: Connection, *, immediate: bool = True) -> AbstractContextManager[Connection]:
        """One write transaction (nested use joins the outer one); a driver error
        leaving the outermost one comes out as the store's own."""
        ...

    def async_store(self, location: Location) -> AsyncStore:
        """The async bridge (not yet open: ``await store.open()`` or ``async with``)."""
        ...

    def change_feed(self, db: Connection) -> SyncChangeFeed: ...

    def async_change_feed(self, store: AsyncStore) -> ChangeFeed: ...

    def store_error_for(self, exc: BaseException, location: Location | None = None) -> StoreError | None:
        """``exc`` as the store's own error, or None when it is not this backend's."""
        ...

    def backup(self, db: Connection, target: Location) -> None:
        """A consistent copy of the live store at ``target``."""
        ...

    def check(self, location: Location, progress: Callable[[float, int], None] | None = None, *, every: float = 1.0) -> CheckResult:
        """The store's integrity check, with ``progress(seconds, pages)`` now and then."""
        ...

    def relay_lock(self, location: Location) -> RelayLock: ...

    def lock_state(self, db: Connection) -> LockState:
        """Whether a live relay holds the lock of the store ``db`` is open on."""
        ...
