"""The sending queue: claims under lease, delivery outcomes, operator actions,
listings, reclaiming and retention.

Claims are leases, never in-process locks: a claim is one atomic
``UPDATE … WHERE id IN (SELECT … ORDER BY priority, id LIMIT n) RETURNING …`` that
moves messages from ``queued`` to ``sending`` with ``lease_owner``/``lease_until``.
On PostgreSQL the inner select becomes ``… FOR UPDATE SKIP LOCKED``; nothing here
relies on state only one process can see.

Public API for the relay's engine: :func:`dispatch_round` (one unit of scheduler
work per call), :func:`reclaim_owner`, :func:`prune`, :func:`publish_status`.
For operators (CLI, console): :func:`hold`, :func:`release`, :func:`retry`,
:func:`delete`, :func:`set_paused`, :func:`set_rate`, :func:`set_parallel`,
:func:`set_starvation_share`, :func:`set_next_hop`, :func:`list_messages`, :func:`message_detail`,
:func:`queue_overview`, :func:`delivery_settings`.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.reasons import EventKind, Reason
from relay.store.claim_floors import ClaimFloors
from relay.store.connection import Connection, Row, Statement, dialect_of, transaction
from relay.store.counts import PRIORITIES, oldest_waiting, state_counts
from relay.store.errors import InvalidInput, NotFound
from relay.store.events import (
    Event,
    NewEvent,
    event_statements,
    events_for_message,
    record_event,
    record_events,
)
from relay.store.intake import NewMessage, RecipientDsn, insert_messages
from relay.store.lease import relay_status
from relay.store.routing import DestinationState, destination_statements
from relay.store.settings import Keys, get_settings, set_setting, settings_from, settings_query
from relay.store.suppressions import suppress_hard_bounces

ACTIVE_STATES = ("queued", "sending", "deferred", "held")
FINISHED_STATES = ("sent", "failed")
ALL_STATES = ACTIVE_STATES + FINISHED_STATES
TLS_MODES = ("required", "opportunistic", "off")

MX_MODE = "mx"  # the next hop setting's value for MX routing (no host, no port)
DEFAULT_PARALLEL = 4
HEADER_BYTES = 64 * 1024  # what `queue show` reads of a body for its headers (as the console)
MAX_PARALLEL = 256


# ---------------------------------------------------------------------------
# Runtime controls


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """The runtime controls the engine follows live (all from the store's settings)."""

    paused: bool = False
    rate: float = 0.0  # messages per second; 0 = unlimited
    parallel: int = DEFAULT_PARALLEL
    next_hop: str | None = None  # "host:port"
    next_hop_tls: str = "opportunistic"
    next_hop_user: str | None = None
    next_hop_password: str | None = None
    next_hop_cafile: str | None = None
    starvation_share: float = 0.0
    # "IP[,IP]": the relay's addresses as receiving servers see them (``domains settings
    # --public-address``; behind NAT, not its own interfaces): an MX host there is this
    # relay (Postfix's proxy_interfaces). The engine parses it (relay.domains).
    public_address: str | None = None

    @property
    def mx(self) -> bool:
        """Delivery to each recipient domain's MX hosts (``queue next-hop mx``)."""
        return self.next_hop == MX_MODE

    @property
    def hop_key(self) -> tuple[Any, ...]:
        """Everything that identifies one next-hop connection setup."""
        return (self.next_hop, self.next_hop_tls, self.next_hop_user, self.next_hop_password, self.next_hop_cafile)


_SETTING_KEYS = [
    Keys.PAUSED, Keys.RATE, Keys.PARALLEL, Keys.NEXT_HOP, Keys.NEXT_HOP_TLS, Keys.NEXT_HOP_USER,
    Keys.NEXT_HOP_PASSWORD, Keys.NEXT_HOP_CAFILE, Keys.STARVATION_SHARE, Keys.PUBLIC_ADDRESS,
]


def delivery_settings(db: Connection) -> DeliverySettings:
    """The current runtime controls, with defaults for those never set."""
    return _settings_of(get_settings(db, _SETTING_KEYS))


def _settings_of(raw: dict[str, Any]) -> DeliverySettings:

    def num(key: str, default: float) -> float:
        try:
            return float(raw.get(key, default) if raw.get(key) is not None else default)
        except (TypeError, ValueError):
            return default

    tls = raw.get(Keys.NEXT_HOP_TLS) or "opportunistic"
    return DeliverySettings(
        paused=bool(raw.get(Keys.PAUSED, False)),
        rate=max(0.0, num(Keys.RATE, 0.0)),
        parallel=max(1, min(MAX_PARALLEL, int(num(Keys.PARALLEL, DEFAULT_PARALLEL)))),
        next_hop=raw.get(Keys.NEXT_HOP) or None,
        next_hop_tls=tls if tls in TLS_MODES else "opportunistic",
        next_hop_user=raw.get(Keys.NEXT_HOP_USER) or None,
        next_hop_password=raw.get(Keys.NEXT_HOP_PASSWORD) or None,
        next_hop_cafile=raw.get(Keys.NEXT_HOP_CAFILE) or None,
        starvation_share=min(MAX_STARVATION_SHARE, max(0.0, num(Keys.STARVATION_SHARE, 0.0))),
        public_address=raw.get(Keys.PUBLIC_ADDRESS) or None,
    )


def parse_next_hop(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); a precise error otherwise."""
    value = text.strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)", value) or re.fullmatch(r"([^\s:\[\]]+):(\d+)", value)
    if not match:
        raise InvalidInput(f"next hop {text!r} is not HOST:PORT — e.g. 127.0.0.1:8025 or smarthost.example:25")
    port = int(match.group(2))
    if not 1 <= port <= 65535:
        raise InvalidInput(f"next hop port {port} is out of range 1-65535")
    return match.group(1), port


def _operator_event(db: Connection, reason: Reason, detail: str, **kw: Any) -> None:
    record_event(db, NewEvent(EventKind.OPERATOR, reason, detail=detail, **kw))


def set_paused(db: Connection, paused: bool) -> bool:
    """Pause or resume all delivery (deliveries under way finish). Returns the
    previous value. Recorded as an operator event."""
    with transaction(db):
        before = bool(get_settings(db, [Keys.PAUSED]).get(Keys.PAUSED, False))
        set_setting(db, Keys.PAUSED, bool(paused))
        _operator_event(
            db, Reason.DELIVERY_PAUSED if paused else Reason.DELIVERY_RESUMED,
            "delivery paused" if paused else "delivery resumed",
        )
    return before


def set_rate(db: Connection, rate: float) -> None:
    """Shared delivery rate in messages per second (0 = unlimited)."""
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise InvalidInput(f"rate {rate!r} is not a number — give messages per second, 0 for unlimited") from None
    if not value >= 0 or value != value or value == float("inf"):
        raise InvalidInput(f"rate {rate!r} must be 0 (unlimited) or a positive number of messages per second")
    with transaction(db):
        set_setting(db, Keys.RATE, value)
        _operator_event(db, Reason.SETTING_CHANGED, f"rate set to {_fmt_rate(value)}")


def parse_parallel(parallel: int | str) -> int:
    """A count of next-hop connections, 1 to :data:`MAX_PARALLEL`; a precise error otherwise."""
    try:
        value = int(str(parallel).strip())
    except ValueError:
        raise InvalidInput(f"parallel {parallel!r} is not a whole number — give 1 to {MAX_PARALLEL}") from None
    if not 1 <= value <= MAX_PARALLEL:
        raise InvalidInput(f"parallel must be from 1 to {MAX_PARALLEL}, not {value}")
    return value


def set_parallel(db: Connection, parallel: int) -> None:
    """Maximum parallel next-hop connections (1–256)."""
    value = parse_parallel(parallel)
    with transaction(db):
        set_setting(db, Keys.PARALLEL, value)
        _operator_event(db, Reason.SETTING_CHANGED, f"parallel connections set to {value}")


MAX_STARVATION_SHARE = 0.5


def parse_starvation_share(share: float | str) -> float:
    """A share of the bandwidth, 0 (off) to :data:`MAX_STARVATION_SHARE`; a precise error otherwise."""
    try:
        value = float(str(share).strip())
    except ValueError:
        raise InvalidInput(
            f"starvation share {share!r} is not a number — give 0 (off) to {MAX_STARVATION_SHARE:g}, e.g. 0.05"
        ) from None
    if not 0 <= value <= MAX_STARVATION_SHARE:  # also refuses nan
        raise InvalidInput(
            f"starvation share must be from 0 (off) to {MAX_STARVATION_SHARE:g} (a fraction of the bandwidth), not {share}"
        )
    return value


def describe_starvation_share(share: float) -> str:
    """How operators read the share: ``off`` or ``0.05 (1 dispatch in 20 …)``."""
    if not share:
        return "off (strict priority)"
    return f"{share:g} (1 dispatch in {1 / share:.3g} goes to the oldest lower-priority message)"


def set_starvation_share(db: Connection, share: float | str) -> float:
    """Share of the bandwidth reserved for the oldest lower-priority message
    (0 = off, the default; at most 0.5). Recorded as an operator event; returns the value."""
    value = parse_starvation_share(share)
    with transaction(db):
        set_setting(db, Keys.STARVATION_SHARE, value)
        _operator_event(db, Reason.SETTING_CHANGED, f"starvation share set to {describe_starvation_share(value)}")
    return value


def set_next_hop(
    db: Connection,
    hop: str | None,
    *,
    tls: str | None = None,
    user: str | None = None,
    password: str | None = None,
    cafile: str | None = None,
) -> str | None:
    """Set (``hop="host:port"``) or clear (``hop=None``) the next hop, optionally with
    its STARTTLS mode (required | opportunistic | off), AUTH and trusted CA file.
    Returns the normalized hop. The password is stored as a setting and never
    echoed in events."""
    normalized: str | None = None
    if hop is not None and hop.strip().lower() == MX_MODE:
        normalized = MX_MODE
    elif hop is not None:
        host, port = parse_next_hop(hop)
        normalized = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls is not None and tls not in TLS_MODES:
        raise InvalidInput(f"TLS mode {tls!r} is not one of {', '.join(TLS_MODES)}")
    with transaction(db):
        set_setting(db, Keys.NEXT_HOP, normalized)
        parts = [
            "delivery to each domain's MX hosts" if normalized == MX_MODE
            else f"next hop set to {normalized}" if normalized else "next hop cleared"
        ]
        if tls is not None:
            set_setting(db, Keys.NEXT_HOP_TLS, tls)
            parts.append(f"STARTTLS {tls}")
        if user is not None:
            set_setting(db, Keys.NEXT_HOP_USER, user or None)
            parts.append(f"AUTH as {user}" if user else "no AUTH")
        if password is not None:
            set_setting(db, Keys.NEXT_HOP_PASSWORD, password or None)
        if cafile is not None:
            set_setting(db, Keys.NEXT_HOP_CAFILE, cafile or None)
            parts.append(f"CA file {cafile}" if cafile else "system CAs")
        _operator_event(db, Reason.SETTING_CHANGED, ", ".join(parts))
    return normalized


def publish_status(
    db: Connection, state: str, detail: str = "", *, events: Sequence[NewEvent] = (), now: float | None = None
) -> None:
    """The engine's own state for consoles and ``status`` ("running", "paused",
    "no next hop", "next hop is this relay", "next hop down", "stopped"), with the
    events that explain it."""
    with transaction(db):
        if events:
            record_events(db, events)
        set_setting(db, Keys.STATUS, {"state": state, "detail": detail, "at": time.time() if now is None else now})


def _fmt_rate(value: float) -> str:
    return "unlimited" if value == 0 else f"{value:g} msg/s"


# ---------------------------------------------------------------------------
# The scheduler's unit of work


@dataclass(slots=True)
class Claimed:
    """A message leased for one delivery attempt, with what the attempt needs."""

    id: int
    queue_id: str
    origin: str
    campaign_id: int | None
    list_id: int | None
    username: str | None
    mail_from: str
    priority: int
    attempts: int  # including this one
    created_at: float
    recipients: list[str] = field(default_factory=list)  # still to deliver
    data: bytes = b""
    delivered_before: int = 0  # recipients an earlier attempt delivered
    # What the client declared (relay.store.intake.NewMessage): passed on, honoured in bounces.
    mail_auth: str | None = None
    body_type: str | None = None
    smtputf8: bool = False
    size_declared: int | None = None
    dsn_ret: str | None = None
    dsn_envid: str | None = None
    recipient_dsn: dict[str, RecipientDsn] = field(default_factory=dict)  # only recipients with NOTIFY/ORCPT


@dataclass(frozen=True, slots=True)
class RecipientResult:
    address: str
    state: str  # 'sent' | 'deferred' | 'failed'
    reply: str
    # A server judged this recipient (its RCPT or DATA reply). False: the relay's own
    # verdict (DNS: null MX, no such domain) or a refused MAIL FROM — never a hard
    # bounce for the suppression list (docs/production.md, "Hard bounces").
    judged: bool = True
    # The reply is one the next hop sent (RFC 3464 ``smtp`` diagnostic); False: text the
    # relay made itself (a refusal before sending, DNS, a lost connection, backing off).
    # Held in memory only, from the attempt to its bounce: not stored.
    remote: bool = True


@dataclass(slots=True)
class Outcome:
    """The result of one attempt, as the engine decided it."""

    message: Claimed
    state: str  # the message's new state: 'sent' | 'deferred' | 'failed'
    reason: Reason
    reply: str
    recipients: list[RecipientResult] = field(default_factory=list)
    next_attempt_at: float | None = None  # for 'deferred'
    bounce: NewMessage | None = None  # a DSN to queue with a final failure
    detail: str = ""
    # Where the attempt went, for the metrics (not stored): smarthost | mx | route | mixed
    # (MX delivery, some destinations by route) | none (given back before any attempt).
    destination_class: str = "none"


@dataclass(slots=True)
class RoundRequest:
    owner: str
    lease_seconds: float
    budget: int  # how many messages the engine can start now
    hop: str | None  # the hop the engine delivers to; claims only while it matches the setting
    outcomes: list[Outcome] = field(default_factory=list)
    renew: list[int] = field(default_factory=list)  # in-flight ids whose lease to extend
    reclaim_expired: bool = False
    promote_due: bool = False
    oldest_lower: bool = False  # spend one claim on the oldest lower-priority message
    events: list[NewEvent] = field(default_factory=list)  # the engine's own (next hop down, …)
    seen_version: int | None = None
    # False: the caller needs no ``RoundResult.version`` (the engine follows its change
    # feed instead: on PostgreSQL the version costs a round trip per round).
    versioned: bool = True
    force: bool = False
    # MX delivery: destinations that cannot take a delivery now (backing off, or at
    # their connection share); a message whose pending recipients are all in them is
    # passed over, so it never holds back one that can go. And the engine's view of
    # the destinations that changed, for ``queue destinations``.
    skip_destinations: list[str] = field(default_factory=list)
    destinations: list[DestinationState] = field(default_factory=list)
    # None (the engine): the clock is read under the write lock, where readiness is
    # decided. A fixed time is for tests that need one.
    now: float | None = None
    # Where the claim starts per priority (relay.store.claim_floors), kept by the
    # caller from round to round; used where the dialect wants them (PostgreSQL).
    floors: ClaimFloors | None = None

    @property
    def idle(self) -> bool:
        """Nothing to write and nothing forced: only a change by another process
        (the change feed, or ``seen_version``) makes such a round worth running."""
        return not (
            self.outcomes or self.events or self.renew or self.reclaim_expired or self.promote_due or self.force
            or self.destinations
        )


@dataclass(slots=True)
class RoundResult:
    version: int | None  # the dialect's data_version (None: it has none to give)
    skipped: bool
    settings: DeliverySettings | None = None
    claimed: list[Claimed] = field(default_factory=list)
    next_due: float | None = None  # earliest next attempt among deferred messages
    next_due_checked: bool = False  # next_due was looked up this round (None = nothing deferred)
    reclaimed: int = 0


class _Again(Exception):
    """The round's claim started at floors its own housekeeping went under: the
    messages (priority, id) it made ready again (the floors are lowered already)."""

    def __init__(self, ready: list[tuple[int, int]]) -> None:
        super().__init__("again")
        self.ready = ready


def dispatch_round(db: Connection, req: RoundRequest) -> RoundResult:
    """One scheduler step in one transaction: record finished attempts, extend
    leases, reclaim expired ones, make due deferred mail ready, then claim up to
    ``req.budget`` messages in strict (priority, id) order — unless delivery is
    paused or the next hop setting no longer matches ``req.hop``.

    Returns quickly without a transaction when nothing changed since
    ``req.seen_version`` and the engine has nothing to write (``force`` overrides).

    The transaction is a lease transaction (``Dialect.lease_transaction``): on
    PostgreSQL its COMMIT does not wait for the WAL flush, so a server crash may lose
    the last rounds' commits (never a part of one: the database comes back as it was
    a moment before). No mail is lost with them: every message acknowledged with 250
    was committed durably by intake before, and a round only moves it between
    states. A lost claim leaves the message ready (or its earlier lease expires and
    it is reclaimed): it is delivered again, at least once as always. A lost "sent"
    outcome puts a delivered message back in flight: delivered twice, as after a
    relay killed between its delivery and its outcome. A lost "deferred" or "failed"
    outcome (with its bounce, in the same transaction) is retried and decided
    again. Any later durable commit (intake's, an operator's) flushes the rounds
    before it too. Intake and operator actions keep durable commits.

    Statements go in batches (``Dialect.batch``: on PostgreSQL a batch is one round
    trip): the reads and writes the round can send before it knows anything, the
    claim, what the claimed messages need, and the round's events with its COMMIT.

    With ``req.floors`` (and a dialect that wants them) the claim starts each
    priority at its floor (``relay.store.claim_floors``). Mail the round's own
    housekeeping made ready again (a due retry, an expired lease) lowers the floors;
    when the claim already ran from above it, it may have passed it over: the round is
    rolled back and runs again from the lowered floors (after three tries, from the
    front of every priority).
    """
    # Not inside a caller's transaction: running the round again needs its own to roll back.
    floors = req.floors if req.floors is not None and dialect_of(db).claim_floors() and not db.in_transaction else None
    for _ in range(3):
        if floors is None:
            break
        try:
            return _dispatch_round(db, req, floors)
        except _Again:
            pass  # the floors are lowered: once more
    return _dispatch_round(db, req, None)


def _dispatch_round(db: Connection, req: RoundRequest, floors: ClaimFloors | None) -> RoundResult:
    version = dialect_of(db).data_version(db) if req.versioned or req.seen_version is not None else None
    if req.idle and req.seen_version is not None and version == req.seen_version:
        return RoundResult(version=version, skipped=True)
    result = RoundResult(version=version, skipped=False)
    dialect = dialect_of(db)
    with dialect.lease_transaction(db):
        # "Ready" is decided here, so the clock is read here: once the write lock is
        # held, every commit before this one is visible, and each committed message
        # was stamped (next_attempt_at) before its commit, so before this moment. A
        # clock read earlier (when the caller planned the round, before waiting for
        # the lock) would pass over mail committed meanwhile and let lower-priority
        # mail start first.
        now = time.time() if req.now is None else req.now
        clock = time.monotonic()
        start = floors.floors(clock) if floors is not None else {}
        # Outcomes and renewals go before the housekeeping (a lease settled or renewed
        # is not reclaimed); without them it goes in the first batch…
        early = not req.outcomes and not req.renew
        # …and so does the claim, when nothing else it waits for is to come: it then
        # checks the controls itself (_CONTROLS), since they are read in the same batch.
        eager = early and req.budget > 0 and bool(req.hop) and not req.oldest_lower
        reclaim = [_reclaim_statement(_EXPIRED, (now,), now)] if req.reclaim_expired else []
        first: list[Statement] = [settings_query(_SETTING_KEYS), (_CAMPAIGNS_TO_FOLLOW, ())]
        first += event_statements(req.events)
        settled_at = len(first)
        first += [_settle_statement(req.owner, o, now) for o in req.outcomes]
        first += destination_statements(req.destinations, now)
        first += _renew_statements(req.owner, req.renew, now + req.lease_seconds)
        reclaim_at = claim_at = promote_at = None  # where their answers are (in the first batch, then the second)
        if early:
            reclaim_at = len(first) if reclaim else None
            first += reclaim
            if req.promote_due:
                promote_at = len(first)
                first.append(_promote_statement(now, returning=floors is not None))
            elif eager:  # promoted as a claiming round would (below): when the controls allow a claim
                promote_at = len(first)
                first.append(_promote_statement(now, _controls(req.hop), returning=floors is not None))
            if eager:
                claim_at = len(first)
                first.append(_claim_statement(db, req, req.budget, now, _controls(req.hop), start))
        answers = dialect.batch(db, first)
        stored = {row[0]: row[1] for row in answers[0].rows}
        settings = _settings_of(settings_from(answers[0].rows))
        result.settings = settings
        campaigns = answers[1].rows
        owned = [answers[settled_at + n].rowcount == 1 for n in range(len(req.outcomes))]
        then, settled_events = _settled(db, req.outcomes, owned, now)
        budget = req.budget
        if settings.paused or not settings.next_hop or settings.next_hop != req.hop:
            budget = 0
        if claim_at is not None and (answers[claim_at].rows or _controls_allow(stored, req.hop)):
            # The claim ran with the controls as its own statement saw them (an
            # operator's change between two statements of a batch counts as before or
            # after the round, as it would between two rounds).
            budget = req.budget
        else:
            claim_at = None  # the controls' stored form is not the claim's: claimed below, as before
        # Deferred mail whose time has come is ready too: promote it in the claiming
        # transaction (one range scan of the deferred index), so a due higher-priority
        # retry is never passed over for lower-priority mail.
        promote = req.promote_due or budget > 0
        promoted = (early and req.promote_due) or claim_at is not None
        late = list(then)
        if reclaim and not early:
            reclaim_at = len(answers) + len(late)
            late += reclaim
        if promote and not promoted:
            promote_at = len(answers) + len(late)
            late.append(_promote_statement(now, returning=floors is not None))
        # The claim goes with them where it needs no reads of its own first.
        if budget > 0 and claim_at is None and not req.oldest_lower:
            claim_at = len(answers) + len(late)
            late.append(_claim_statement(db, req, budget, now, floors=start))
        if late:
            answers += dialect.batch(db, late)
        reclaimed = answers[reclaim_at].rows if reclaim_at is not None else []
        result.reclaimed = len(reclaimed)
        if floors is not None:
            # Mail this round made ready again: no floor stays above it. If the claim
            # already ran from above it, it may have passed it over: the round is rolled
            # back (nothing of it was committed) and runs again from the lowered floors.
            ready = [(int(r[4]), int(r[0])) for r in reclaimed]
            ready += [(int(r[0]), int(r[1])) for r in answers[promote_at].rows] if promote_at is not None else []
            floors.lower(ready)
            if claim_at is not None and any(i < start.get(priority, 0) for priority, i in ready):
                raise _Again(ready)
        if claim_at is not None:
            result.claimed = _claimed(db, req, answers[claim_at].rows)
        elif budget > 0:
            result.claimed = _claim(db, req, budget, now)
        if floors is not None and claim_at is not None and not req.skip_destinations:
            floors.claimed(clock, ((c.priority, c.id) for c in result.claimed))
        last = event_statements(settled_events)
        last += event_statements(_reclaim_events(reclaimed, now, "lease expired"))
        last += event_statements(_attempt_events(result.claimed, req.hop, now))
        last += _follow_campaigns(db, campaigns, result.claimed, budget, now)
        next_due = promote or any(o.state == "deferred" for o in req.outcomes) or req.force
        if next_due:
            last.append(("SELECT min(next_attempt_at) FROM messages WHERE state = 'deferred'", ()))
        # Nothing follows in the transaction: its COMMIT may go with them.
        answers = dialect.batch(db, last, commit=True)
        if next_due:
            result.next_due = answers[-1].rows[0][0]
            result.next_due_checked = True
    return result


_EXPIRED = "state = 'sending' AND lease_until < ?"
_CAMPAIGNS_TO_FOLLOW = (
    "SELECT id, priority, state, list_id FROM campaigns "
    "WHERE state = 'sending' OR (state = 'paused' AND paused_reason = 'priority')"
)


def _promote_statement(now: float, controls: Statement = ("", ()), *, returning: bool = False) -> Statement:
    # ``returning``: the caller keeps claim floors; what is made ready lowers them.
    return (
        f"UPDATE messages SET state = 'queued', updated_at = ? WHERE state = 'deferred' AND next_attempt_at <= ?{controls[0]}"
        + (" RETURNING priority, id" if returning else ""),
        (now, now, *controls[1]),
    )


def _controls(hop: str | None) -> Statement:
    """A claim's extra condition when it goes in one batch with the read of the
    controls: delivery not paused and the next hop setting still ``hop`` — stricter
    than :func:`_settings_of` reads them (a value it also reads as "not paused" but
    not stored as ``false`` fails it: then the round claims after the read, as
    before; :func:`_controls_allow` tells)."""
    return (
        " AND NOT EXISTS (SELECT 1 FROM settings WHERE key = ? AND value <> 'false')"
        " AND EXISTS (SELECT 1 FROM settings WHERE key = ? AND value = ?)",
        (Keys.PAUSED, Keys.NEXT_HOP, json.dumps(hop)),
    )


def _controls_allow(stored: dict[str, Any], hop: str | None) -> bool:
    """What :func:`_controls` says of the settings' stored values (``stored``: key → JSON text)."""
    return stored.get(Keys.PAUSED, "false") == "false" and stored.get(Keys.NEXT_HOP) == json.dumps(hop)


_CLAIM_RETURNING = (
    "RETURNING id, queue_id, origin, campaign_id, list_id, username, mail_from, priority, attempts, created_at, "
    "mail_auth, body_type, smtputf8, size_declared, dsn_ret, dsn_envid"
)


def _claim(db: Connection, req: RoundRequest, budget: int, now: float) -> list[Claimed]:
    lease_until = now + req.lease_seconds
    rows: list[Row] = []
    if req.oldest_lower:
        oldest = _oldest_lower_ready(db, now)
        if oldest is not None:
            rows += db.execute(
                "UPDATE messages SET state = 'sending', lease_owner = ?, lease_until = ?, "
                "attempts = attempts + 1, updated_at = ? WHERE id = ? AND state = 'queued' "
                + _CLAIM_RETURNING,
                (req.owner, lease_until, now, oldest),
            ).fetchall()
            budget -= len(rows)
    if budget > 0:
        rows += db.execute(*_claim_statement(db, req, budget, now)).fetchall()
    return _claimed(db, req, rows)


def _claim_statement(
    db: Connection, req: RoundRequest, budget: int, now: float, controls: Statement = ("", ()),
    floors: dict[int, int] | None = None,
) -> Statement:
    """The claim of up to ``budget`` ready messages in (priority, id) order; with
    ``floors`` (priority → first id to look at), each priority read from its floor."""
    if floors:
        return _claim_from_floors(db, req, budget, now, controls, floors)
    skip, skip_args = _skip_destinations(req.skip_destinations)
    # Where locks are per row (PostgreSQL), the inner SELECT skips rows another
    # relay process is claiming right now (the dialect's FOR UPDATE SKIP LOCKED).
    # The LIMIT is written out, not a parameter: PostgreSQL plans a prepared statement
    # once (a generic plan) only when that plan is as cheap as one for the values, and
    # with an unknown LIMIT it guesses a tenth of the queue and picks a hash join over
    # every message (measured, 1,000,000 queued: 290 ms); with the number in the text
    # the generic plan is the index walk, and the claim is not planned anew each round.
    picked = (
        f"SELECT id FROM messages WHERE state = 'queued' AND next_attempt_at <= ?{skip}{controls[0]} "
        f"ORDER BY priority, id LIMIT {int(budget)}{dialect_of(db).skip_locked()}"
    )
    return _claim_update(db, picked), (req.owner, now + req.lease_seconds, now, now, *skip_args, *controls[1])


def _claim_update(db: Connection, picked: str) -> str:
    """The claim of the ids ``picked`` selects (its parameters after the lease's
    owner, end and the time); where a read is a round trip (PostgreSQL), the claim
    brings what the attempts need."""
    claim = (
        "UPDATE messages SET state = 'sending', lease_owner = ?, lease_until = ?, "
        f"attempts = attempts + 1, updated_at = ? WHERE id IN ({picked}) " + _CLAIM_RETURNING
    )
    return dialect_of(db).claim_reads(claim) or claim


def _claim_from_floors(
    db: Connection, req: RoundRequest, budget: int, now: float, controls: Statement, floors: dict[int, int]
) -> Statement:
    """The claim as one index descent per priority, each from its floor: the
    priorities in order, the next one read only while the ones before gave fewer than
    ``budget`` (UNION ALL under a LIMIT reads its parts in order and stops; a data-
    modifying statement never runs them in parallel). Every priority is in the text,
    a priority without a floor from 0: one statement text per budget, prepared once.
    A branch names its priority as a literal and orders by (priority, id), so that
    the generic plan walks the dispatch index (state, priority, id) from (queued, p,
    floor) — ordered by id alone it walked the primary key. The time and the controls
    are bound once (``args``), not once per priority."""
    skip, skip_args = _skip_destinations(req.skip_destinations)
    limit = int(budget)
    parts = [f"args AS (SELECT CAST(? AS DOUBLE PRECISION) AS now, TRUE{controls[0]} AS go)"]
    values: list[Any] = [req.owner, now + req.lease_seconds, now, now, *controls[1]]
    for priority in PRIORITIES:
        parts.append(
            f"p{priority} AS (SELECT id FROM messages WHERE state = 'queued' AND (priority, id) >= ({priority}, ?) "
            f"AND (priority, id) < ({priority + 1}, 0) AND next_attempt_at <= (SELECT now FROM args) "
            f"AND (SELECT go FROM args){skip} ORDER BY priority, id LIMIT {limit}{dialect_of(db).skip_locked()})"
        )
        values += [floors.get(priority, 0), *skip_args]
    branches = " UNION ALL ".join(f"SELECT id FROM p{priority}" for priority in PRIORITIES)
    picked = f"WITH {', '.join(parts)} SELECT id FROM ({branches}) AS picked LIMIT {limit}"
    return _claim_update(db, picked), tuple(values)


_CLAIM_COLUMNS = 16  # what _CLAIM_RETURNING gives; claim_reads' rows have five more


def _claimed(db: Connection, req: RoundRequest, rows: list[Row]) -> list[Claimed]:
    """The claimed messages with what their attempts need: from the claim's own rows
    (``Dialect.claim_reads``), or else read in one batch."""
    if not rows:
        return []
    by_id = {
        r[0]: Claimed(
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
            mail_auth=r[10], body_type=r[11], smtputf8=bool(r[12]), size_declared=r[13], dsn_ret=r[14], dsn_envid=r[15],
        )
        for r in rows
    }
    bare = []
    for r in rows:
        if len(r) == _CLAIM_COLUMNS:
            bare.append(r[0])
            continue
        m = by_id[r[0]]
        data, addresses, notifies, orcpts, delivered = r[_CLAIM_COLUMNS:]
        m.data = bytes(data) if data is not None else b""
        for address, notify, orcpt in zip(addresses or [], notifies or [], orcpts or [], strict=True):
            m.recipients.append(address)
            if notify is not None or orcpt is not None:
                m.recipient_dsn[address] = RecipientDsn(notify, orcpt)
        m.delivered_before = int(delivered)
    if bare:
        _read_details(db, {i: by_id[i] for i in bare})
    # The oldest-lower pick (if any) goes first: it was chosen to run now.
    claimed = sorted(by_id.values(), key=lambda m: (m.priority, m.id))
    if req.oldest_lower and rows and rows[0][0] in by_id:
        first = by_id[rows[0][0]]
        claimed.remove(first)
        claimed.insert(0, first)
    return claimed


def _read_details(db: Connection, by_id: dict[int, Claimed]) -> None:
    marks = ",".join("?" * len(by_id))
    ids = list(by_id)
    retried = [i for i, m in by_id.items() if m.attempts > 1]
    # What the attempts need, in one batch: bodies, recipients still to deliver, and
    # for retries how many recipients an earlier attempt delivered.
    details: list[Statement] = [
        (f"SELECT message_id, data FROM message_bodies WHERE message_id IN ({marks})", ids),
        (
            f"SELECT message_id, address, dsn_notify, dsn_orcpt FROM recipients WHERE message_id IN ({marks}) "
            "AND state IN ('queued', 'deferred') ORDER BY message_id, address",
            ids,
        ),
    ]
    if retried:
        details.append((
            f"SELECT message_id, count(*) FROM recipients WHERE message_id IN ({','.join('?' * len(retried))}) "
            "AND state = 'sent' GROUP BY message_id",
            retried,
        ))
    answers = dialect_of(db).batch(db, details)
    for message_id, data in answers[0].rows:
        by_id[message_id].data = bytes(data)
    for message_id, address, notify, orcpt in answers[1].rows:
        by_id[message_id].recipients.append(address)
        if notify is not None or orcpt is not None:
            by_id[message_id].recipient_dsn[address] = RecipientDsn(notify, orcpt)
    if retried:
        for message_id, n in answers[2].rows:
            by_id[message_id].delivered_before = n


def _attempt_events(claimed: Sequence[Claimed], hop: str | None, now: float) -> list[NewEvent]:
    return [
        NewEvent(
            EventKind.DELIVERY, Reason.DELIVERY_ATTEMPT, username=m.username, list_id=m.list_id,
            message_id=m.id, queue_id=m.queue_id, at=now,
            detail=f"attempt {m.attempts} to {hop}, priority {m.priority}, "
            f"{len(m.recipients)} recipient(s)" + (f", campaign {m.campaign_id}" if m.campaign_id else ""),
        )
        for m in claimed
    ]


def _skip_destinations(domains: Sequence[str]) -> tuple[str, list[str]]:
    """The claim's extra condition when some destinations cannot take mail now: the
    message still has a recipient to deliver elsewhere (empty when none are blocked,
    so smarthost delivery's claim is the plain index walk it always was)."""
    if not domains:
        return "", []
    marks = ",".join("?" * len(domains))
    return (
        " AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = messages.id "
        f"AND r.state IN ('queued', 'deferred') AND coalesce(r.domain, '') NOT IN ({marks}))",
        list(domains),
    )


def _oldest_lower_ready(db: Connection, now: float) -> int | None:
    """The oldest ready message below the highest ready priority (one seek per priority)."""
    heads: list[tuple[int, int]] = []
    for priority in range(1, 6):
        row = db.execute(
            "SELECT id FROM messages WHERE state = 'queued' AND priority = ? AND next_attempt_at <= ? "
            "ORDER BY id LIMIT 1",
            (priority, now),
        ).fetchone()
        if row is not None:
            heads.append((priority, row[0]))
    if len(heads) < 2:
        return None
    return min(message_id for _priority, message_id in heads[1:])


def _renew_statements(owner: str, ids: Sequence[int], until: float) -> list[Statement]:
    return [("UPDATE messages SET lease_until = ? WHERE id = ? AND state = 'sending' AND lease_owner = ?", (until, i, owner))
            for i in ids]


_OUTCOME_EVENT = {"sent": EventKind.SENT, "deferred": EventKind.DEFERRED, "failed": EventKind.FAILED}


def _settle_statement(owner: str, o: Outcome, now: float) -> Statement:
    """The message's new state after an attempt: one row changed when the outcome
    counts (a "sent" always does; the others only while the lease is still ``owner``'s)."""
    m = o.message
    reply = o.reply[:1000]
    if o.state == "sent":
        # Delivered is delivered, even if the lease was lost meanwhile: never send twice on purpose.
        return (
            "UPDATE messages SET state = 'sent', lease_owner = NULL, lease_until = NULL, last_reply = ?, "
            "finished_at = ?, updated_at = ? WHERE id = ? AND state != 'sent'",
            (reply, now, now, m.id),
        )
    if o.state == "deferred":
        return (
            "UPDATE messages SET state = 'deferred', lease_owner = NULL, lease_until = NULL, last_reply = ?, "
            "next_attempt_at = ?, updated_at = ? WHERE id = ? AND state = 'sending' AND lease_owner = ?",
            (reply, o.next_attempt_at if o.next_attempt_at is not None else now, now, m.id, owner),
        )
    return (
        "UPDATE messages SET state = 'failed', lease_owner = NULL, lease_until = NULL, last_reply = ?, "
        "finished_at = ?, updated_at = ? WHERE id = ? AND state = 'sending' AND lease_owner = ?",
        (reply, now, now, m.id, owner),
    )


def _settled(
    db: Connection, outcomes: Sequence[Outcome], owned: Sequence[bool], now: float
) -> tuple[list[Statement], list[NewEvent]]:
    """After :func:`_settle_statement` of each outcome (``owned``: it changed its
    row): the recipients' states (statements for the next batch) and the events, in
    order; hard bounces suppressed and bounce notices queued here (rare: one at a time)."""
    statements: list[Statement] = []
    events: list[NewEvent] = []
    for o, mine in zip(outcomes, owned, strict=True):
        m = o.message
        reply = o.reply[:1000]
        if o.recipients and (mine or o.state == "sent"):
            statements += [
                ("UPDATE recipients SET state = ?, last_reply = ? WHERE message_id = ? AND address = ?",
                 (r.state, r.reply[:1000], m.id, r.address))
                for r in o.recipients
            ]
        failed = [(r.address, r.reply) for r in o.recipients if r.state == "failed" and r.judged]
        suppressed: list[NewEvent] = []
        if failed and (mine or o.state == "sent"):
            # A server's 5.1.x refusal: the address does not exist; campaigns skip it from now on.
            suppressed = suppress_hard_bounces(db, failed, list_id=m.list_id, queue_id=m.queue_id, message_id=m.id, now=now)
        detail = o.detail or reply
        if not mine and o.state != "sent":
            detail += " (lease lost: another attempt owns the message now)"
        events.append(
            NewEvent(
                _OUTCOME_EVENT[o.state], o.reason, username=m.username, list_id=m.list_id,
                message_id=m.id, queue_id=m.queue_id, at=now, detail=detail[:2000],
            )
        )
        events += suppressed
        if o.bounce is not None and mine and m.mail_from:
            # The notice belongs to the user whose message failed: filtering events by
            # that user finds the notice's own delivery attempts too.
            o.bounce.username = o.bounce.username or m.username
            queued = insert_messages(db, [o.bounce], now=now)
            events.append(
                NewEvent(
                    EventKind.BOUNCE, Reason.BOUNCE_QUEUED, username=m.username, list_id=m.list_id,
                    message_id=m.id, queue_id=m.queue_id, at=now,
                    detail=f"delivery status notification {queued[0].queue_id} to {m.mail_from}",
                )
            )
    return statements, events


def _reclaim(db: Connection, where: str, args: tuple[Any, ...], now: float, why: str) -> int:
    rows = db.execute(*_reclaim_statement(where, args, now)).fetchall()
    record_events(db, _reclaim_events(rows, now, why))
    return len(rows)


def _reclaim_statement(where: str, args: tuple[Any, ...], now: float) -> Statement:
    return (
        "UPDATE messages SET state = 'queued', lease_owner = NULL, lease_until = NULL, updated_at = ? "
        f"WHERE {where} RETURNING id, queue_id, username, list_id, priority",
        (now, *args),
    )


def _reclaim_events(rows: Sequence[Row], now: float, why: str) -> list[NewEvent]:
    return [
        NewEvent(
            EventKind.DELIVERY, Reason.LEASE_RECLAIMED, username=r[2], list_id=r[3],
            message_id=r[0], queue_id=r[1], at=now, detail=f"back in the queue: {why}",
        )
        for r in rows
    ]


def reclaim_owner(db: Connection, owner: str, *, now: float | None = None) -> int:
    """Put a dead relay's in-flight messages back in the queue at once (takeover)."""
    stamp = time.time() if now is None else now
    with transaction(db):
        return _reclaim(
            db, "state = 'sending' AND lease_owner = ?", (owner,), stamp, f"relay {owner} died (takeover)"
        )


def release_claims(db: Connection, owner: str, *, now: float | None = None) -> int:
    """Give back every message this owner still holds (a clean stop)."""
    stamp = time.time() if now is None else now
    with transaction(db):
        return _reclaim(
            db, "state = 'sending' AND lease_owner = ?", (owner,), stamp,
            "the relay stopped before this attempt finished",
        )


def reclaim_expired(db: Connection, *, now: float | None = None) -> int:
    """Put messages whose lease ran out back in the queue."""
    stamp = time.time() if now is None else now
    with transaction(db):
        return _reclaim(db, _EXPIRED, (stamp,), stamp, "lease expired")


# ---------------------------------------------------------------------------
# Campaign preemption (decided where the claims are made, so events line up)


def _follow_campaigns(
    db: Connection, campaigns: Sequence[Row], claimed: Sequence[Claimed], budget: int, now: float
) -> list[Statement]:
    """A sending campaign is paused ("priority traffic") when a higher-priority
    message is dispatched while it still has ready messages, and resumes when the
    bandwidth comes back to its priority (or nothing is ready at all). ``campaigns``:
    those sending or paused for priority (read at the start of the round). Returns
    the writes (state changes, events) for the round's last batch."""
    if not claimed and budget == 0:
        return []
    writes: list[Statement] = []
    events: list[NewEvent] = []
    top = min((m.priority for m in claimed), default=None)
    for campaign_id, priority, state, list_id in campaigns:
        preempted = top is not None and top < priority
        progress = any(m.priority >= priority for m in claimed) or not claimed
        if state == "sending" and preempted:
            ready = db.execute(
                "SELECT 1 FROM messages WHERE state = 'queued' AND priority = ? AND campaign_id = ? LIMIT 1",
                (priority, campaign_id),
            ).fetchone()
            if ready is not None:
                first = next(m for m in claimed if m.priority == top)
                writes.append(
                    ("UPDATE campaigns SET state = 'paused', paused_reason = 'priority' WHERE id = ?", (campaign_id,))
                )
                events.append(
                    NewEvent(
                        EventKind.CAMPAIGN, Reason.CAMPAIGN_PAUSED_PRIORITY, list_id=list_id, at=now,
                        detail=f"campaign {campaign_id} paused: priority traffic "
                        f"(priority {first.priority} message {first.queue_id} ready)",
                    )
                )
                state = "paused"
        if state == "paused" and progress:
            writes.append(("UPDATE campaigns SET state = 'sending', paused_reason = NULL WHERE id = ?", (campaign_id,)))
            events.append(
                NewEvent(
                    EventKind.CAMPAIGN, Reason.CAMPAIGN_RESUMED, list_id=list_id, at=now,
                    detail=f"campaign {campaign_id} resumed: no higher-priority mail ready",
                )
            )
    return writes + event_statements(events)


# ---------------------------------------------------------------------------
# Operator actions on messages


@dataclass(frozen=True, slots=True)
class ActionResult:
    queue_id: str
    before: str
    after: str | None  # None: left as it was (see ``note``), or deleted for rm
    note: str = ""
    found: bool = True  # False: no such message (only with ``skip_unknown``)


#: What ``ALL`` means for each operator action (as postsuper's ``ALL``): the messages
#: the action applies to. A message being sent right now is never among them.
ALL_TARGETS: dict[str, tuple[str, ...]] = {
    "hold": ("queued", "deferred"),
    "release": ("held",),
    "retry": ("deferred", "held", "failed"),
    "delete": ("queued", "deferred", "held", "failed"),
}


def queue_ids_in(db: Connection, states: Sequence[str]) -> list[str]:
    """Queue ids of every message in ``states``, in dispatch order (for ``ALL``)."""
    marks = ",".join("?" * len(states))
    rows = db.execute(f"SELECT queue_id FROM messages WHERE state IN ({marks}) ORDER BY priority, id", tuple(states))
    return [r[0] for r in rows]


def _resolve(db: Connection, refs: Iterable[str], *, skip_unknown: bool = False) -> list[Row | str]:
    """Messages by queue id (case-insensitive) or ``#<number>``, in the order given.

    An unknown reference is a NotFound naming every unknown one; with
    ``skip_unknown`` it stays in the list as its text, for the caller to report."""
    rows: list[Row | str] = []
    missing: list[str] = []
    for ref in refs:
        text = str(ref).strip()
        if text.startswith("#") and text[1:].isdigit():
            row = db.execute(_DETAIL_SELECT + " WHERE id = ?", (int(text[1:]),)).fetchone()
        else:
            row = db.execute(_DETAIL_SELECT + " WHERE queue_id = ?", (text.upper(),)).fetchone()
        if row is None:
            missing.append(text)
            rows.append(text)
        else:
            rows.append(row)
    if missing and not skip_unknown:
        raise NotFound(f"no message with queue id {', '.join(missing)} — see `smtpplus queue ls`")
    return rows


def _unknown(ref: str) -> ActionResult:
    return ActionResult(ref, "", None, "no such message", found=False)


def _apply(
    db: Connection,
    refs: Iterable[str],
    reason: Reason,
    decide: Any,
    verb: str,
    now: float | None,
    skip_unknown: bool = False,
) -> list[ActionResult]:
    stamp = time.time() if now is None else now
    results: list[ActionResult] = []
    with transaction(db):
        for row in _resolve(db, refs, skip_unknown=skip_unknown):
            if isinstance(row, str):
                results.append(_unknown(row))
                continue
            after, sql, note = decide(row)
            if sql is None:
                results.append(ActionResult(row["queue_id"], row["state"], None, note))
                continue
            db.execute(sql, {"now": stamp, "id": row["id"]})
            results.append(ActionResult(row["queue_id"], row["state"], after, note))
            record_event(
                db,
                NewEvent(
                    EventKind.OPERATOR, reason, username=row["username"], list_id=row["list_id"],
                    message_id=row["id"], queue_id=row["queue_id"], at=stamp,
                    detail=f"{verb} by an operator ({row['state']} → {after or 'deleted'})",
                ),
            )
    return results


def hold(
    db: Connection, refs: Iterable[str], *, now: float | None = None, skip_unknown: bool = False
) -> list[ActionResult]:
    """Hold queued or deferred messages: nothing delivers them until released.
    A message being sent right now, or already finished, is left as it is."""

    def decide(row: Row) -> tuple[str | None, str | None, str]:
        if row["state"] in ("queued", "deferred"):
            return "held", "UPDATE messages SET state = 'held', updated_at = :now WHERE id = :id", ""
        if row["state"] == "held":
            return None, None, "already held"
        if row["state"] == "sending":
            return None, None, "being sent right now — hold it after this attempt"
        return None, None, f"already {row['state']}"

    return _apply(db, refs, Reason.MESSAGE_HELD, decide, "held", now, skip_unknown)


def release(
    db: Connection, refs: Iterable[str], *, now: float | None = None, skip_unknown: bool = False
) -> list[ActionResult]:
    """Release held messages back into the queue (ready at once)."""

    def decide(row: Row) -> tuple[str | None, str | None, str]:
        if row["state"] == "held":
            return "queued", "UPDATE messages SET state = 'queued', next_attempt_at = :now, updated_at = :now WHERE id = :id", ""
        return None, None, f"not held (it is {row['state']})"

    return _apply(db, refs, Reason.MESSAGE_RELEASED, decide, "released", now, skip_unknown)


def retry(
    db: Connection, refs: Iterable[str], *, now: float | None = None, skip_unknown: bool = False
) -> list[ActionResult]:
    """Retry now: deferred, held or failed messages become ready at once (a failed
    message's failed recipients are tried again)."""

    def decide(row: Row) -> tuple[str | None, str | None, str]:
        if row["state"] in ("deferred", "held", "queued"):
            return "queued", "UPDATE messages SET state = 'queued', next_attempt_at = :now, updated_at = :now WHERE id = :id", ""
        if row["state"] == "failed":
            db.execute("UPDATE recipients SET state = 'queued' WHERE message_id = ? AND state = 'failed'", (row["id"],))
            return (
                "queued",
                "UPDATE messages SET state = 'queued', next_attempt_at = :now, updated_at = :now, "
                "finished_at = NULL WHERE id = :id",
                "",
            )
        if row["state"] == "sending":
            return None, None, "being sent right now"
        return None, None, "already sent"

    return _apply(db, refs, Reason.MESSAGE_RETRY, decide, "retry requested", now, skip_unknown)


def delete(
    db: Connection, refs: Iterable[str], *, now: float | None = None, skip_unknown: bool = False
) -> list[ActionResult]:
    """Delete messages (body and recipients too). One being sent right now may still
    reach the next hop; the deletion is recorded as an operator event."""

    stamp = time.time() if now is None else now
    results: list[ActionResult] = []
    with transaction(db):
        for row in _resolve(db, refs, skip_unknown=skip_unknown):
            if isinstance(row, str):
                results.append(_unknown(row))
                continue
            note = "was being sent: this attempt may still deliver it" if row["state"] == "sending" else ""
            db.execute("DELETE FROM messages WHERE id = ?", (row["id"],))
            results.append(ActionResult(row["queue_id"], row["state"], None, note))
            record_event(
                db,
                NewEvent(
                    EventKind.OPERATOR, Reason.MESSAGE_DELETED, username=row["username"],
                    list_id=row["list_id"], message_id=row["id"], queue_id=row["queue_id"], at=stamp,
                    detail=f"deleted by an operator (was {row['state']})",
                ),
            )
    return results


# ---------------------------------------------------------------------------
# Listings


_MESSAGE_COLUMNS = (
    "id, queue_id, list_id, list_name, user_id, username, origin, campaign_id, mail_from, header_from, "
    "subject, size, header_priority, user_priority, priority, state, attempts, next_attempt_at, "
    "lease_owner, lease_until, last_reply, client, port, created_at, updated_at, finished_at"
)
_DETAIL_SELECT = f"SELECT {_MESSAGE_COLUMNS} FROM messages"


@dataclass(frozen=True, slots=True)
class MessageRow:
    """One message as the queue listing shows it (no body)."""

    id: int
    queue_id: str
    list_id: int | None
    list_name: str | None
    user_id: int | None
    username: str | None
    origin: str
    campaign_id: int | None
    mail_from: str
    header_from: str
    subject: str
    size: int
    header_priority: int
    user_priority: int
    priority: int
    state: str
    attempts: int
    next_attempt_at: float
    lease_owner: str | None
    lease_until: float | None
    last_reply: str | None
    client: str | None
    port: int | None
    created_at: float
    updated_at: float
    finished_at: float | None
    recipients: int = 0

    @property
    def dispatch_key(self) -> tuple[int, int]:
        """Where it stands in dispatch order (priority, then arrival): the ``after`` of
        the next page."""
        return (self.priority, self.id)


@dataclass(frozen=True, slots=True)
class RecipientState:
    address: str
    state: str
    last_reply: str | None


@dataclass(frozen=True, slots=True)
class MessageDetail:
    message: MessageRow
    recipients: list[RecipientState]  # by address; the first ``max_recipients`` when capped
    events: list[Event]
    headers: str  # the stored header block (decoded for display)
    header_bytes: bytes = b""  # the same block as stored, for parsers
    recipient_count: int = 0  # all of them, however many are listed


def list_messages(
    db: Connection,
    *,
    state: str | None = None,
    priority: int | None = None,
    limit: int = 50,
    after: tuple[int, int] | None = None,
    campaign_id: int | None = None,
) -> list[MessageRow]:
    """One page of messages in dispatch order (priority, then id).

    ``state`` is one of the message states, ``"active"`` (the default: queued,
    sending, deferred and held) or ``"all"``; ``after`` is the (priority, id) of the
    last row seen, for keyset paging. A single state (``"queued"`` for "next in
    dispatch order") reads straight off the dispatch index, whatever the queue size."""
    where: list[str] = []
    args: list[Any] = []
    chosen = state or "active"
    if chosen not in ("active", "all", *ALL_STATES):
        raise InvalidInput(f"state {state!r} is not one of {', '.join(ALL_STATES)}, active, all")
    if priority is not None:
        where.append("priority = ?")
        args.append(int(priority))
    if campaign_id is not None:
        where.append("campaign_id = ?")
        args.append(campaign_id)
    size = max(1, int(limit))
    # The state is written into the statement (one of ALL_STATES, checked above), not
    # bound: PostgreSQL's dispatch index leaves 'sending' out (schema version 12), so a
    # statement prepared for any state — planned once, generically, after a few runs —
    # could not use it and read every message.
    if chosen in ALL_STATES:
        return _page(db, [f"state = '{chosen}'", *where], args, size, after)
    # Several states: a page of each (one range of the dispatch index each), merged.
    # One query over them all cannot walk that index in (priority, id) order: on
    # PostgreSQL it read and sorted every message (127 ms with 300,000 queued).
    states = ACTIVE_STATES if chosen == "active" else ALL_STATES
    pages = [_page(db, [f"state = '{one}'", *where], args, size, after) for one in states]
    return heapq.nsmallest(size, itertools.chain.from_iterable(pages), key=lambda r: r.dispatch_key)


def _page(db: Connection, where: list[str], args: list[Any], size: int, after: tuple[int, int] | None) -> list[MessageRow]:
    if after is None:
        return _message_rows(db, where, args, "priority, id", size)
    # Keyset paging in two index seeks: the rest of the last row's priority, then the
    # lower ones — each page one range of the dispatch index, however deep it is.
    # (Ordered by priority too, though it is fixed: ordered by id alone, PostgreSQL
    # walked the primary key from the last id and read every later message when the
    # state had none there.)
    last_priority, last_id = after
    rows = _message_rows(db, [*where, "priority = ?", "id > ?"], [*args, last_priority, last_id], "priority, id", size)
    if len(rows) < size:
        rows += _message_rows(db, [*where, "priority > ?"], [*args, last_priority], "priority, id", size - len(rows))
    return rows


def _message_rows(db: Connection, where: list[str], args: list[Any], order: str, limit: int) -> list[MessageRow]:
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = db.execute(
        f"SELECT {_MESSAGE_COLUMNS}, (SELECT count(*) FROM recipients r WHERE r.message_id = messages.id) "
        f"FROM messages{clause} ORDER BY {order} LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [MessageRow(*r) for r in rows]


def message_detail(db: Connection, ref: str) -> MessageDetail:
    """One message by queue id: its row, per-recipient states, event timeline and
    headers; NotFound naming the fix when there is none."""
    row = _resolve(db, [ref])[0]
    assert not isinstance(row, str)  # _resolve raised NotFound
    detail = read_message(db, message_id=row["id"])
    if detail is None:  # deleted between the two reads
        raise NotFound(f"no message {ref!r} — see `smtpplus queue ls --state all`")
    return detail


def read_message(
    db: Connection,
    *,
    message_id: int | None = None,
    queue_id: str | None = None,
    max_recipients: int | None = None,
) -> MessageDetail | None:
    """One message (by id or queue id) in full — the one read behind ``queue show``
    and the console's message screen; None when it no longer exists. At most
    ``max_recipients`` recipients are listed (``recipient_count`` has them all)."""
    if message_id is None and queue_id is None:
        raise ValueError("read_message needs a message id or a queue id")
    where, key = ("id = ?", message_id) if message_id is not None else ("queue_id = ?", queue_id)
    row = db.execute(
        f"SELECT {_MESSAGE_COLUMNS}, (SELECT count(*) FROM recipients r WHERE r.message_id = messages.id) "
        f"FROM messages WHERE {where}",
        (key,),
    ).fetchone()
    if row is None:
        return None
    message = MessageRow(*row)
    # No LIMIT for all of them (SQLite's LIMIT -1 is an error on PostgreSQL).
    cap, args = ("", (message.id,)) if max_recipients is None else (" LIMIT ?", (message.id, max_recipients))
    recipients = [
        RecipientState(*r)
        for r in db.execute(
            f"SELECT address, state, last_reply FROM recipients WHERE message_id = ? ORDER BY address{cap}", args
        )
    ]
    # Only a prefix, as the console reads it: a 25 MB body is never loaded to show headers.
    head = db.execute(
        "SELECT substr(data, 1, ?) FROM message_bodies WHERE message_id = ?", (HEADER_BYTES, message.id)
    ).fetchone()
    block = b""
    if head is not None and head[0] is not None:
        data = bytes(head[0])
        end = data.find(b"\r\n\r\n")
        block = data[: end if end >= 0 else len(data)]
    return MessageDetail(
        message, recipients, events_for_message(db, message.id), block.decode("utf-8", "replace"), block,
        message.recipients,
    )


@dataclass(frozen=True, slots=True)
class PriorityLane:
    priority: int
    queued: int = 0
    deferred: int = 0
    sending: int = 0
    held: int = 0
    oldest_created_at: float | None = None  # oldest queued or deferred message

    def oldest_wait(self, now: float) -> float | None:
        return None if self.oldest_created_at is None else max(0.0, now - self.oldest_created_at)


@dataclass(frozen=True, slots=True)
class QueueOverview:
    lanes: list[PriorityLane]
    settings: DeliverySettings
    status: dict[str, Any]  # the engine's last published state (stale once its relay is gone)
    sent_last_minute: int
    relay_alive: bool = False  # a relay holds this store's lease with a fresh heartbeat

    @property
    def queued(self) -> int:
        return sum(lane.queued for lane in self.lanes)

    @property
    def delivery_state(self) -> tuple[str, str]:
        """(state, detail) for operators. Without a live relay the engine's last
        status is history, not news: nothing is delivered, whatever it said."""
        if not self.relay_alive:
            detail = "start one with `smtpplus relay` or `smtpplus console`; queued mail waits"
            if self.settings.paused:
                detail = "and delivery is paused — " + detail
            return "relay not running", detail
        return str(self.status.get("state") or "starting"), str(self.status.get("detail") or "")


def queue_overview(db: Connection, *, now: float | None = None) -> QueueOverview:
    """Counts per priority and state, the oldest wait per priority, the controls,
    the engine's status and deliveries in the last minute (for the rate display)."""
    stamp = time.time() if now is None else now
    # Maintained counts and two index seeks per priority: flat however long the queue.
    counts = state_counts(db)
    lanes = [
        PriorityLane(p, counts[("queued", p)], counts[("deferred", p)], counts[("sending", p)], counts[("held", p)],
                     oldest_waiting(db, p))
        for p in range(1, 6)
    ]
    sent = db.execute(
        # `state || ''` keeps the planner on the finished_at index (not every sent message);
        # unlike SQLite's `+state`, PostgreSQL runs it too.
        "SELECT count(*) FROM messages WHERE finished_at >= ? AND state || '' = 'sent'", (stamp - 60,)
    ).fetchone()[0]
    status = get_settings(db, [Keys.STATUS]).get(Keys.STATUS) or {}
    alive = relay_status(db, now=stamp).alive
    return QueueOverview(lanes, delivery_settings(db), status, sent, alive)


# ---------------------------------------------------------------------------
# Retention


@dataclass(frozen=True, slots=True)
class Pruned:
    messages: int
    events: int


def prune(db: Connection, *, before: float, batch: int = 2000) -> Pruned:
    """Delete finished messages (with bodies and recipients) that finished before
    ``before``, and events older than it — in batches, each its own transaction, so a
    relay keeps delivering meanwhile. Event counts per list and day are rolled up
    first so list statistics keep their totals."""
    messages = 0
    while True:
        with transaction(db):
            cur = db.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE finished_at IS NOT NULL "
                "AND finished_at < ? LIMIT ?)",
                (before, batch),
            )
            messages += cur.rowcount
        if cur.rowcount < batch:
            break
    events = 0
    while True:
        with transaction(db):
            # One statement deletes the batch and says what it deleted (a DELETE per
            # row was 2,000 statements a batch: PostgreSQL's server work every prune).
            rows = db.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ? ORDER BY at LIMIT ?) "
                "RETURNING at, kind, list_id",
                (before, batch),
            ).fetchall()
            if not rows:
                break
            rollup: dict[tuple[int, str, str], int] = {}
            for at, kind, list_id in rows:
                if list_id is not None:
                    key = (list_id, _local_day(at), kind)
                    rollup[key] = rollup.get(key, 0) + 1
            db.executemany(
                "INSERT INTO list_stats_archive(list_id, day, kind, count) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(list_id, day, kind) DO UPDATE SET count = list_stats_archive.count + excluded.count",
                [(*key, n) for key, n in rollup.items()],
            )
            events += len(rows)
        if len(rows) < batch:
            break
    return Pruned(messages, events)


def _local_day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d")
