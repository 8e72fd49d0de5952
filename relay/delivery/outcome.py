"""Pure delivery decisions: what a reply means, what an attempt amounts to, and what
the message's new state is (sent, deferred with its next attempt, or failed).

Nothing here does I/O or reads a clock: callers pass ``now`` and a random source, so
every rule can be tested exhaustively (tests/delivery/test_outcome.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from relay.bounce import wants_report
from relay.reasons import Reason
from relay.scheduler import decide_retry
from relay.store.intake import RecipientDsn
from relay.store.queue import Claimed, RecipientResult

NO_DSN = RecipientDsn()


@dataclass(slots=True)
class AttemptResult:
    recipients: list[RecipientResult]
    reason: Reason
    reply: str
    hop_failure: bool = False
    relayed: list[str] = field(default_factory=list)  # delivered to a hop without DSN; NOTIFY=SUCCESS asked
    notes: list[tuple[Reason, str]] = field(default_factory=list)  # what delivery changed, for events


@dataclass(slots=True)
class TransactionResult:
    """One MAIL..DATA transaction's outcome per recipient it carried."""

    results: dict[str, RecipientResult]
    too_many: list[str] = field(default_factory=list)  # refused with 452 after others were accepted
    stop: tuple[Reason, str] | None = None  # MAIL refused or connection lost: the rest share it
    stop_remote: bool = False  # the stop is the hop's reply (MAIL refused), not a lost connection
    data_failed: bool = False


def reply_text(code: int, message: str) -> str:
    """A reply on one line, whitespace collapsed (it goes into events and bounces)."""
    return f"{code} {' '.join(str(message).split())}".strip()


def classify(code: int) -> tuple[str, Reason]:
    """A reply code's meaning for a recipient: 2xx sent, 4xx deferred, anything else failed."""
    if 200 <= code < 300:
        return "sent", Reason.DELIVERED
    if 400 <= code < 500:
        return "deferred", Reason.DEFERRED_4XX
    return "failed", Reason.FAILED_5XX


def all_deferred(m: Claimed, reason: Reason, reply: str, *, hop_failure: bool = False) -> AttemptResult:
    """Every recipient waits for the next attempt with the same reply, the relay's own
    (the hop unusable, backing off, DNS): no server answered for the recipients."""
    return AttemptResult(
        [RecipientResult(r, "deferred", reply, remote=False) for r in m.recipients], reason, reply, hop_failure
    )


def all_failed(m: Claimed, reason: Reason, reply: str) -> AttemptResult:
    """Every recipient fails with the relay's own reply (no server judged them, none sent it)."""
    return AttemptResult(
        [RecipientResult(r, "failed", reply, judged=False, remote=False) for r in m.recipients], reason, reply
    )


def summarize(m: Claimed, results: dict[str, RecipientResult], prefix: str = "") -> AttemptResult:
    """The attempt's overall reason and reply: the first deferral if any, a failure when
    every recipient failed, else delivered (the first acceptance's reply)."""
    ordered = [results[r] for r in m.recipients if r in results]
    deferred = [r for r in ordered if r.state == "deferred"]
    failed = [r for r in ordered if r.state == "failed"]
    if deferred:
        return AttemptResult(ordered, Reason.DEFERRED_4XX, prefix + deferred[0].reply)
    if failed and len(failed) == len(ordered):
        return AttemptResult(ordered, Reason.FAILED_5XX, prefix + failed[0].reply)
    sent = next((r for r in ordered if r.state == "sent"), None)
    return AttemptResult(ordered, Reason.DELIVERED, prefix + (sent.reply if sent else ""))


def stop_state(stop: tuple[Reason, str]) -> str:
    """The state of recipients never tried because a transaction stopped: failed when
    MAIL was refused for good, else deferred."""
    return "deferred" if stop[0] != Reason.FAILED_5XX else "failed"


def conclude(
    m: Claimed,
    results: dict[str, RecipientResult],
    *,
    stop: tuple[Reason, str] | None,
    data_failed: bool,
    transactions: int,
    notes: list[tuple[Reason, str]],
    dsn: bool,
) -> AttemptResult:
    """All transactions of one attempt as one result (reason, reply, notes, relayed)."""
    result = summarize(m, results, prefix="DATA: " if data_failed else "")
    if stop is not None and any(r.state == "deferred" for r in results.values()):
        result.reason, result.reply = stop
    elif stop is not None and stop[1].startswith("MAIL: ") and all(r.state == "failed" for r in results.values()):
        result.reply = stop[1]
    if transactions > 1:
        result.notes.append((Reason.RECIPIENTS_SPLIT, f"{len(m.recipients)} recipient(s) in {transactions} transaction(s)"))
    result.notes[:0] = notes
    if not dsn:
        result.relayed = [
            r.address for r in result.recipients
            if r.state == "sent" and wants_report((m.recipient_dsn.get(r.address) or NO_DSN).notify, "relayed")
        ]
    return result


def merge(m: Claimed, parts: list[AttemptResult]) -> AttemptResult:
    """One attempt's results from several destinations (one transaction each) as one:
    recipients in the message's order; the reason and reply of the first part that
    defers, else of the first that fails when every recipient failed, else delivered."""
    if len(parts) == 1:
        return parts[0]
    by_address = {r.address: r for part in parts for r in part.recipients}
    ordered = [by_address[a] for a in m.recipients if a in by_address]
    deciding = (
        next((p for p in parts if any(r.state == "deferred" for r in p.recipients)), None)
        or (next((p for p in parts if p.recipients), None) if all(r.state == "failed" for r in ordered) else None)
        or next(p for p in parts if any(r.state == "sent" for r in p.recipients))
    )
    return AttemptResult(
        ordered, deciding.reason, deciding.reply,
        hop_failure=all(p.hop_failure for p in parts),
        relayed=[a for p in parts for a in p.relayed],
        notes=[n for p in parts for n in p.notes],
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: float
    maximum: float
    lifetime: float


@dataclass(slots=True)
class Settled:
    """A message's new state after one attempt (before the bounce is built)."""

    state: str  # sent | deferred | failed
    reason: Reason
    reply: str
    recipients: list[RecipientResult]
    next_attempt_at: float | None
    failed: list[RecipientResult]
    sent: list[RecipientResult]


def settle(m: Claimed, result: AttemptResult, *, now: float, retry: RetryPolicy, rng: random.Random) -> Settled:
    """Turn one attempt into the message's new state: sent, deferred (with its next
    attempt) or failed; deferred recipients past the queue lifetime fail."""
    recipients = list(result.recipients)
    reason, reply = result.reason, result.reply
    deferred = [r for r in recipients if r.state == "deferred"]
    state = "sent"
    next_attempt_at = None
    if deferred:
        decision = decide_retry(
            attempts=m.attempts, created_at=m.created_at, now=now, base=retry.base,
            maximum=retry.maximum, lifetime=retry.lifetime, rng=rng,
        )
        if decision.final:
            lifetime_reply = f"queue lifetime exceeded after {m.attempts} attempt(s); last reply: {reply}"
            # The last reply stays whose it was: the hop's 4xx is still the hop's (an
            # ``smtp`` diagnostic in the bounce), the relay's own stays its own.
            recipients = [
                RecipientResult(
                    r.address, "failed", f"{r.reply} (queue lifetime exceeded)", judged=False, remote=r.remote,
                ) if r.state == "deferred" else r
                for r in recipients
            ]
            reason, reply = Reason.FAILED_LIFETIME, lifetime_reply
        else:
            state, next_attempt_at = "deferred", decision.next_attempt_at
    failed = [r for r in recipients if r.state == "failed"]
    sent = [r for r in recipients if r.state == "sent"]
    if state != "deferred":
        if failed and not sent and not m.delivered_before:
            state = "failed"
            # A failure with its own reason (lifetime, SMTPUTF8, null MX, no such domain)
            # keeps it; any other is the hop's 5xx.
            reason = reason if reason.value.startswith("failed-") else Reason.FAILED_5XX
        else:
            state, reason = "sent", Reason.DELIVERED
    return Settled(state, reason, reply, recipients, next_attempt_at, failed, sent)


def outcome_detail(m: Claimed, settled: Settled, target: str, now: float) -> str:
    """The event line for an outcome: the reply, where it went, what comes next."""
    if settled.state == "sent":
        detail = f"{settled.reply} (to {target}, {len(settled.sent)} recipient(s)"
        return detail + (f", {len(settled.failed)} failed)" if settled.failed else ")")
    if settled.state == "deferred":
        wait = (settled.next_attempt_at or now) - now
        return f"{settled.reply} (to {target}; next attempt in {wait:.0f} s, attempt {m.attempts})"
    return f"{settled.reply} (to {target}, attempt {m.attempts})"
