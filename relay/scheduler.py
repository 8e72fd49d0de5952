"""Scheduling rules, without I/O: the shared token bucket, retry backoff, the
next hop's own backoff, and the anti-starvation share.

Strict priority itself lives in the claim (``ORDER BY priority, id`` in
:mod:`relay.store.queue`): whatever the engine may start, it starts the highest
priority first, first in first out within a priority.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


class TokenBucket:
    """Messages per second shared by every connection. ``rate == 0`` = unlimited.

    The burst is small (50 ms worth, at least one message) so a rate change is
    felt at once and the rate holds over any window longer than a fraction of a second.
    """

    def __init__(self, rate: float, now: float) -> None:
        self.rate = 0.0
        self.tokens = 0.0
        self.stamp = now
        self.set_rate(rate, now)

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate * 0.05)

    def set_rate(self, rate: float, now: float) -> None:
        if rate == self.rate:
            return
        self._refill(now)
        self.rate = max(0.0, float(rate))
        self.tokens = min(self.tokens, self.capacity) if self.rate else 0.0

    def _refill(self, now: float) -> None:
        if self.rate:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def available(self, now: float) -> int:
        """Whole messages that may start now (a large number when unlimited)."""
        if not self.rate:
            return 1 << 30
        self._refill(now)
        return int(self.tokens + 1e-9)

    def take(self, n: int, now: float) -> None:
        if self.rate and n:
            self._refill(now)
            self.tokens -= n

    def wait_for_one(self, now: float) -> float:
        """Seconds until one more message may start (0 when one may start now)."""
        if not self.rate:
            return 0.0
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate)


def retry_delay(attempts: int, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: about ``base * 2**(attempts-1)``, capped at
    ``maximum``, spread ±20 % so retries of a burst do not arrive in lockstep."""
    exponent = min(max(attempts, 1) - 1, 30)
    delay = min(maximum, base * (2**exponent))
    jitter = (rng or random).uniform(0.8, 1.2)
    return max(0.0, min(maximum, delay * jitter))


@dataclass(frozen=True, slots=True)
class RetryDecision:
    final: bool  # lifetime exceeded: fail now
    next_attempt_at: float | None


def decide_retry(
    *, attempts: int, created_at: float, now: float, base: float, maximum: float, lifetime: float,
    rng: random.Random | None = None,
) -> RetryDecision:
    """After a temporary failure: retry later, or give up once the queue lifetime
    is spent. The last retry is pulled in to the end of the lifetime."""
    deadline = created_at + lifetime
    if now >= deadline:
        return RetryDecision(True, None)
    return RetryDecision(False, min(now + retry_delay(attempts, base, maximum, rng), deadline))


class HopBackoff:
    """Backing off for the next hop as a whole while it is down: one probe per
    interval (growing like message retries), never one connection per message."""

    def __init__(self, base: float, maximum: float) -> None:
        self.base = base
        self.maximum = maximum
        self.failures = 0
        self.retry_at = 0.0
        self.reason = ""

    @property
    def down(self) -> bool:
        return self.failures > 0

    def failed(self, now: float, reason: str, rng: random.Random | None = None) -> float:
        self.failures += 1
        self.reason = reason
        self.retry_at = now + retry_delay(self.failures, self.base, self.maximum, rng)
        return self.retry_at

    def succeeded(self) -> bool:
        """Returns True when this ends a down period."""
        was_down = self.down
        self.failures = 0
        self.retry_at = 0.0
        self.reason = ""
        return was_down

    def allowed(self, now: float, in_flight: int) -> int:
        """How many deliveries may start toward the hop (None = no limit from here)."""
        if not self.down:
            return 1 << 30
        return 1 if now >= self.retry_at and in_flight == 0 else 0


class StarvationShare:
    """Every ``1/share``-th dispatch goes to the oldest lower-priority message
    (``share == 0``: strict priority, the default)."""

    def __init__(self, share: float = 0.0) -> None:
        self.share = share
        self.credit = 0.0

    def set_share(self, share: float) -> None:
        self.share = max(0.0, min(0.5, share))
        if not self.share:
            self.credit = 0.0

    def due(self, planned: int) -> bool:
        """Account for ``planned`` dispatches; True when one of them is the reserved one."""
        if not self.share or planned <= 0:
            return False
        self.credit += planned * self.share
        if self.credit >= 1.0 - 1e-9:
            self.credit = max(0.0, self.credit - math.floor(self.credit + 1e-9))
            return True
        return False
