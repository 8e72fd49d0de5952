"""Per-destination state for MX delivery (the engine's, kept in memory and published
to the store's ``destinations`` table for ``queue destinations``): connections in
flight, the last reply, and a backoff after failures.

A destination is a recipient domain. It can take a delivery now when it is not backing
off and holds fewer than its share of connections: ``max_connections_per_destination``
and, while ``parallel`` is over 1, at most ``parallel − 1`` — so one slow or deferring
destination never holds every connection, and one backing off never holds back another.
Once its backoff has run out it gets one delivery (a probe) until one succeeds.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.scheduler import HopBackoff
from relay.store.queue import Claimed
from relay.store.routing import DestinationState

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def recipient_domain(address: str) -> str:
    """A recipient's destination: the domain after the last ``@`` (a quoted local part
    may hold one), ASCII lower case as SQL's lower() ("" without one) — the same as the
    store's generated ``recipients.domain``, which the claim passes over by."""
    return address.rpartition("@")[2].translate(_ASCII_LOWER) if "@" in address else ""


def destination_share(max_per_destination: int, parallel: int) -> int:
    """Connections one destination may hold at once."""
    ceiling = parallel - 1 if parallel > 1 else 1
    return max(1, min(max_per_destination, ceiling))


def group_by_destination(recipients: Iterable[str]) -> dict[str, list[str]]:
    """Recipients per destination, destinations in first-seen order."""
    groups: dict[str, list[str]] = {}
    for address in recipients:
        groups.setdefault(recipient_domain(address), []).append(address)
    return groups


@dataclass(slots=True)
class Destination:
    domain: str
    backoff: HopBackoff
    in_flight: int = 0
    last_reply: str | None = None
    last_at: float | None = None
    changed: bool = True  # not yet published

    def backing_off(self, now: float) -> bool:
        return self.backoff.down and now < self.backoff.retry_at

    def full(self, share: int, waiting: int = 0) -> bool:
        """No room for one more delivery: its share is taken — or, after failures and
        until one succeeds, one probe is under way (as the smarthost's backoff)."""
        return self.in_flight + waiting >= (1 if self.backoff.down else share)

    def state(self) -> DestinationState:
        return DestinationState(
            self.domain, self.in_flight, self.last_reply, self.last_at,
            self.backoff.retry_at if self.backoff.down else None, self.backoff.failures,
        )


@dataclass(slots=True)
class DestinationTable:
    """Every destination the engine has delivered to (or tried) since it started."""

    backoff_base: float
    backoff_max: float
    known: dict[str, Destination] = field(default_factory=dict)

    def get(self, domain: str) -> Destination:
        found = self.known.get(domain)
        if found is None:
            found = self.known[domain] = Destination(domain, HopBackoff(self.backoff_base, self.backoff_max))
        return found

    def blocked(self, now: float, share: int, waiting: Iterable[Claimed] = ()) -> list[str]:
        """Destinations that cannot take one more delivery now: backing off, or whose
        deliveries in flight plus claimed messages waiting for them fill their share."""
        held: dict[str, int] = {}
        for message in waiting:
            for domain in group_by_destination(message.recipients):
                held[domain] = held.get(domain, 0) + 1
        return sorted(
            d.domain for d in self.known.values() if d.full(share, held.get(d.domain, 0)) or d.backing_off(now)
        )

    def has_room(self, domains: Iterable[str], now: float, share: int) -> bool:
        """Whether any of these destinations can take a delivery now."""
        return any(not (d.full(share) or d.backing_off(now)) for d in (self.get(name) for name in domains))

    def start(self, domains: Iterable[str]) -> None:
        for name in domains:
            d = self.get(name)
            d.in_flight += 1
            d.changed = True

    def finish(self, domains: Iterable[str]) -> None:
        for name in domains:
            d = self.get(name)
            d.in_flight = max(0, d.in_flight - 1)
            d.changed = True

    def failed(self, domain: str, reply: str, now: float, rng: random.Random) -> tuple[bool, float]:
        """Record a failure of the whole destination; (it was up before, retry time)."""
        d = self.get(domain)
        was_up = not d.backoff.down
        if d.backing_off(now):
            retry_at = d.backoff.retry_at  # a parallel attempt failing the same way
        else:
            retry_at = d.backoff.failed(now, reply, rng)
        d.last_reply, d.last_at, d.changed = reply, now, True
        return was_up, retry_at

    def answered(self, domain: str, reply: str, now: float) -> bool:
        """Record an answer (delivered or refused for good); True when it was down."""
        d = self.get(domain)
        d.last_reply, d.last_at, d.changed = reply, now, True
        return d.backoff.succeeded()

    def take_changes(self) -> list[DestinationState]:
        changed = [d for d in self.known.values() if d.changed]
        for d in changed:
            d.changed = False
        return [d.state() for d in changed]
