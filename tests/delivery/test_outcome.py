"""relay.delivery.outcome: the pure decisions, over every combination of recipient
states (no network, no store, no clock)."""

from __future__ import annotations

import itertools
import random

import pytest

from relay.delivery.outcome import (
    AttemptResult,
    RetryPolicy,
    all_deferred,
    all_failed,
    classify,
    conclude,
    merge,
    outcome_detail,
    reply_text,
    settle,
    stop_state,
    summarize,
)
from relay.reasons import Reason
from relay.store.intake import RecipientDsn
from relay.store.queue import Claimed, RecipientResult

STATES = ("sent", "deferred", "failed")
REPLY = {"sent": "250 ok", "deferred": "451 later", "failed": "550 no"}
POLICY = RetryPolicy(base=60.0, maximum=3600.0, lifetime=86400.0)


def claimed(recipients: list[str], *, attempts: int = 1, created_at: float = 1000.0, delivered_before: int = 0) -> Claimed:
    return Claimed(
        1, "Q1", "submission", None, None, "alice", "a@example.org", 5, attempts, created_at,
        recipients=list(recipients), data=b"x", delivered_before=delivered_before,
    )


@pytest.mark.parametrize("code", [200, 250, 299, 400, 421, 451, 499, 500, 550, 554, 599, 0, 199, 600])
def test_classify_every_reply_class(code: int) -> None:
    state, reason = classify(code)
    if 200 <= code < 300:
        assert (state, reason) == ("sent", Reason.DELIVERED)
    elif 400 <= code < 500:
        assert (state, reason) == ("deferred", Reason.DEFERRED_4XX)
    else:
        assert (state, reason) == ("failed", Reason.FAILED_5XX)


def test_reply_text_is_one_line() -> None:
    assert reply_text(451, "try\r\n  again\tlater") == "451 try again later"
    assert reply_text(250, "") == "250"


def combos(n: int) -> list[tuple[str, ...]]:
    return list(itertools.product(STATES, repeat=n))


@pytest.mark.parametrize("states", combos(1) + combos(2) + combos(3))
def test_summarize_every_combination(states: tuple[str, ...]) -> None:
    rcpts = [f"r{i}@example.com" for i in range(len(states))]
    results = {r: RecipientResult(r, s, REPLY[s] + f" {i}") for i, (r, s) in enumerate(zip(rcpts, states, strict=True))}
    result = summarize(claimed(rcpts), results)
    assert [r.address for r in result.recipients] == rcpts  # the message's order, not the dict's
    if "deferred" in states:
        first = states.index("deferred")
        assert (result.reason, result.reply) == (Reason.DEFERRED_4XX, f"451 later {first}")
    elif all(s == "failed" for s in states):
        assert (result.reason, result.reply) == (Reason.FAILED_5XX, "550 no 0")
    else:
        assert (result.reason, result.reply) == (Reason.DELIVERED, f"250 ok {states.index('sent')}")


def test_summarize_prefix_and_missing_recipients() -> None:
    results = {"b@x": RecipientResult("b@x", "failed", "554 body")}
    result = summarize(claimed(["a@x", "b@x"]), results, prefix="DATA: ")
    assert [r.address for r in result.recipients] == ["b@x"]
    assert result.reply == "DATA: 554 body"


@pytest.mark.parametrize("reason", [Reason.FAILED_5XX, Reason.DEFERRED_4XX, Reason.DEFERRED_CONNECT, Reason.DEFERRED_TIMEOUT])
def test_stop_state(reason: Reason) -> None:
    assert stop_state((reason, "x")) == ("failed" if reason == Reason.FAILED_5XX else "deferred")


def test_conclude_stop_overrides_reason_when_anything_waits() -> None:
    m = claimed(["a@x", "b@x"])
    results = {"a@x": RecipientResult("a@x", "sent", "250 ok"), "b@x": RecipientResult("b@x", "deferred", "lost")}
    result = conclude(m, results, stop=(Reason.DEFERRED_CONNECT, "lost"), data_failed=False, transactions=2, notes=[], dsn=True)
    assert (result.reason, result.reply) == (Reason.DEFERRED_CONNECT, "lost")
    assert result.notes == [(Reason.RECIPIENTS_SPLIT, "2 recipient(s) in 2 transaction(s)")]


def test_conclude_mail_refusal_keeps_its_prefix_when_all_failed() -> None:
    m = claimed(["a@x"])
    results = {"a@x": RecipientResult("a@x", "failed", "550 sender")}
    result = conclude(m, results, stop=(Reason.FAILED_5XX, "MAIL: 550 sender"), data_failed=False, transactions=1, notes=[], dsn=True)
    assert (result.reason, result.reply) == (Reason.FAILED_5XX, "MAIL: 550 sender")


@pytest.mark.parametrize("dsn", [True, False])
def test_conclude_relayed_only_without_dsn_and_for_notify_success(dsn: bool) -> None:
    m = claimed(["a@x", "b@x", "c@x"])
    m.recipient_dsn = {"a@x": RecipientDsn(notify="SUCCESS"), "c@x": RecipientDsn(notify="SUCCESS")}
    results = {
        "a@x": RecipientResult("a@x", "sent", "250"),
        "b@x": RecipientResult("b@x", "sent", "250"),
        "c@x": RecipientResult("c@x", "failed", "550"),
    }
    notes = [(Reason.LINES_FOLDED, "folded")]
    result = conclude(m, results, stop=None, data_failed=True, transactions=1, notes=notes, dsn=dsn)
    assert result.relayed == ([] if dsn else ["a@x"])
    assert result.notes == notes
    assert result.reply == "DATA: 250"


@pytest.mark.parametrize("states", combos(1) + combos(2))
@pytest.mark.parametrize("expired", [False, True])
@pytest.mark.parametrize("delivered_before", [0, 1])
def test_settle_every_combination(states: tuple[str, ...], expired: bool, delivered_before: int) -> None:
    rcpts = [f"r{i}@x" for i in range(len(states))]
    recipients = [RecipientResult(r, s, REPLY[s]) for r, s in zip(rcpts, states, strict=True)]
    m = claimed(rcpts, attempts=3, delivered_before=delivered_before)
    result = summarize(m, {r.address: r for r in recipients})
    now = m.created_at + (POLICY.lifetime + 1 if expired else 10.0)
    settled = settle(m, result, now=now, retry=POLICY, rng=random.Random(1))
    waiting = "deferred" in states
    if waiting and not expired:
        assert settled.state == "deferred"
        assert settled.next_attempt_at is not None and now < settled.next_attempt_at <= m.created_at + POLICY.lifetime
        assert [r.state for r in settled.recipients] == list(states)
        return
    assert settled.next_attempt_at is None
    final = [("failed" if s == "deferred" else s) for s in states]
    assert [r.state for r in settled.recipients] == final
    if waiting:
        assert all(r.reply.endswith("(queue lifetime exceeded)") for r in settled.recipients if r.state == "failed" and r.reply != "550 no")
    if "sent" not in final and not delivered_before:
        assert settled.state == "failed"
        assert settled.reason == (Reason.FAILED_LIFETIME if waiting else Reason.FAILED_5XX)
    else:
        assert (settled.state, settled.reason) == ("sent", Reason.DELIVERED)
    assert settled.failed == [r for r in settled.recipients if r.state == "failed"]
    assert settled.sent == [r for r in settled.recipients if r.state == "sent"]


def test_settle_keeps_the_smtputf8_reason() -> None:
    m = claimed(["a@x"])
    result = AttemptResult([RecipientResult("a@x", "failed", "550 5.6.7")], Reason.FAILED_NO_SMTPUTF8, "550 5.6.7")
    settled = settle(m, result, now=m.created_at, retry=POLICY, rng=random.Random(1))
    assert (settled.state, settled.reason) == ("failed", Reason.FAILED_NO_SMTPUTF8)


def test_outcome_detail_per_state() -> None:
    m = claimed(["a@x", "b@x"], attempts=2)
    sent = settle(m, summarize(m, {
        "a@x": RecipientResult("a@x", "sent", "250 ok"), "b@x": RecipientResult("b@x", "failed", "550 no"),
    }), now=1000.0, retry=POLICY, rng=random.Random(1))
    assert outcome_detail(m, sent, "h:25", 1000.0) == "250 ok (to h:25, 1 recipient(s), 1 failed)"
    waiting = settle(m, AttemptResult([RecipientResult("a@x", "deferred", "451")], Reason.DEFERRED_4XX, "451"),
                     now=1000.0, retry=POLICY, rng=random.Random(1))
    assert outcome_detail(m, waiting, "h:25", 1000.0).startswith("451 (to h:25; next attempt in ")
    failed = settle(m, AttemptResult([RecipientResult("a@x", "failed", "550")], Reason.FAILED_5XX, "550"),
                    now=1000.0, retry=POLICY, rng=random.Random(1))
    assert outcome_detail(m, failed, "-", 1000.0) == "550 (to -, attempt 2)"


def test_merge_destinations_in_message_order() -> None:
    m = claimed(["a@x", "b@y", "c@x"])
    x = AttemptResult([RecipientResult("a@x", "sent", "250 x"), RecipientResult("c@x", "sent", "250 x")], Reason.DELIVERED, "250 x")
    y_failed = AttemptResult([RecipientResult("b@y", "failed", "556 5.1.10")], Reason.FAILED_NULL_MX, "556 5.1.10")
    y_waits = AttemptResult([RecipientResult("b@y", "deferred", "451 4.4.3")], Reason.DEFERRED_DNS, "451 4.4.3", hop_failure=True)
    merged = merge(m, [x, y_failed])
    assert [r.address for r in merged.recipients] == ["a@x", "b@y", "c@x"]
    assert (merged.reason, merged.reply) == (Reason.DELIVERED, "250 x")
    merged = merge(m, [x, y_waits])
    assert (merged.reason, merged.reply, merged.hop_failure) == (Reason.DEFERRED_DNS, "451 4.4.3", False)
    only_y = claimed(["b@y", "d@y"])
    both = AttemptResult([RecipientResult("b@y", "failed", "556"), RecipientResult("d@y", "failed", "556")],
                         Reason.FAILED_NULL_MX, "556")
    assert merge(only_y, [both]) is both
    settled = settle(only_y, both, now=only_y.created_at, retry=POLICY, rng=random.Random(1))
    assert (settled.state, settled.reason) == ("failed", Reason.FAILED_NULL_MX)  # its own reason, kept


@pytest.mark.parametrize("remote", [True, False])
def test_a_lifetime_expiry_keeps_whose_reply_it_was(remote: bool) -> None:
    # The hop's 4xx stays the hop's (an smtp diagnostic); the relay's own deferral
    # (backing off, DNS, a lost connection) stays the relay's own.
    m = claimed(["a@x", "b@x"], attempts=9)
    result = summarize(m, {
        "a@x": RecipientResult("a@x", "deferred", "451 4.2.0 busy", remote=remote),
        "b@x": RecipientResult("b@x", "failed", "550 5.1.1 no"),
    })
    settled = settle(m, result, now=m.created_at + POLICY.lifetime + 1, retry=POLICY, rng=random.Random(1))
    assert settled.reason == Reason.FAILED_LIFETIME
    expired, refused = settled.failed
    assert expired.reply == "451 4.2.0 busy (queue lifetime exceeded)" and expired.remote is remote
    assert refused.remote and refused.judged and not expired.judged


def test_replies_the_relay_makes_itself_are_not_the_hops() -> None:
    m = claimed(["a@x", "b@x"])
    for result in (
        all_failed(m, Reason.FAILED_SIZE_LIMIT, "552 5.3.4 message size 9 exceeds size limit 3 of server h:25"),
        all_deferred(m, Reason.DEFERRED_DESTINATION, "451 4.4.1 x is backing off after failures (down); not tried"),
    ):
        assert [r.remote for r in result.recipients] == [False, False]
    assert RecipientResult("a@x", "failed", "550 5.1.1 no").remote  # a reply from a hop, as hop.py makes them
