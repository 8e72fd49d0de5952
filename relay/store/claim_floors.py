"""Where a claim starts looking, per priority (PostgreSQL).

A claim takes the first ready messages in (priority, id) order from the dispatch index.
On PostgreSQL every message claimed leaves its index entry behind, dead, until a vacuum
removes it — autovacuum visits a database about once a minute — and each claim walks
from the start of its priority's entries past all of them: on a queue drained at 1,500
messages a second, up to 400 index pages, 1–3 ms a claim. (SQLite deletes the entry
at once: it needs no floors.)

A floor is an id below which the claim does not look for a priority: a claim with
floors reads each priority's entries from its floor on (one index descent each, see
``relay.store.queue``). A floor is only ever an id the engine itself claimed past,
and only once that claim is ``LAG`` seconds old: mail queued since with a lower id —
a group commit that took its ids before that claim and committed after it, a claim
by another relay rolled back — has had a second to become visible, and the claims
since saw it. What can still queue a message under a floor:

* the round's own housekeeping (a due retry made ready, an expired lease reclaimed):
  ``relay.store.queue.dispatch_round`` lowers the floors to it and runs the round
  again;
* another process's change that is not new mail (an operator's retry or resume,
  another relay's reclaim or release): the engine forgets the floors when its change
  feed says so;
* anything else (a relay killed in the middle of its claim leaves its rows as they
  were, skipped by ours): every ``CHECK`` seconds one claim looks from the front of
  every priority, and when it finds mail under a floor the floors are forgotten. Such
  a message waits at most that long — the only case where a claim could pass over a
  higher-priority message, and only for that long.

Pure bookkeeping: the clock is the caller's (monotonic seconds).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

LAG = 1.0  # seconds a claim is old before the engine's floors move past it
CHECK = 5.0  # seconds between claims from the front of every priority
STEP = 0.05  # claims this close together share one entry (a busy engine claims every ms)


@dataclass(slots=True)
class ClaimFloors:
    lag: float = LAG
    check: float = CHECK
    step: float = STEP
    # Per priority: (when, the id after the highest claimed then and up to ``step``
    # later), oldest first; the newest entry ripe (``lag`` + ``step`` old) is the floor.
    _claims: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    _checked: float | None = None  # when a claim last looked from the front
    _checking: dict[int, int] | None = None  # the floors the claim looking from the front passed by
    forgotten: int = 0  # times the floors started over (figures for the tests)
    checks: int = 0

    def forget(self) -> None:
        """Start over: claims look from the front of every priority until the
        claims since are ``LAG`` old."""
        self._claims.clear()
        self.forgotten += 1

    def floors(self, now: float) -> dict[int, int]:
        """The floor of each priority that has one — none every ``CHECK`` seconds:
        that claim looks from the front (and :meth:`claimed` hears what it found)."""
        ripe = self._ripe(now)
        if self._checked is None or now - self._checked >= self.check:
            self._checked = now
            self._checking = ripe
            self.checks += 1
            return {}
        self._checking = None
        return ripe

    def _ripe(self, now: float) -> dict[int, int]:
        out: dict[int, int] = {}
        for priority, claims in self._claims.items():
            ripe = [i for i, (at, _) in enumerate(claims) if now - at >= self.lag + self.step]
            if ripe:
                last = ripe[-1]
                out[priority] = claims[last][1]
                del claims[:last]  # older entries are passed: the ripe one stays the floor
        return out

    def lower(self, rows: Iterable[tuple[int, int]]) -> None:
        """Mail (priority, id) became ready again: no floor stays above it."""
        for priority, message_id in rows:
            claims = self._claims.get(priority, [])
            claims[:] = [(at, min(floor, message_id)) for at, floor in claims]

    def claimed(self, now: float, rows: Iterable[tuple[int, int]]) -> None:
        """A claim without filters of its own took ``rows`` (priority, id): every
        message of each priority before the highest id taken was claimed or was not
        ready then (or another relay was claiming it)."""
        taken = list(rows)
        checked, self._checking = self._checking, None
        if checked and any(message_id < checked.get(priority, 0) for priority, message_id in taken):
            self.forget()  # the look from the front found mail under a floor: there may be more
        highest: dict[int, int] = {}
        for priority, message_id in taken:
            highest[priority] = max(highest.get(priority, 0), message_id)
        for priority, top in highest.items():
            claims = self._claims.setdefault(priority, [])
            if claims and top + 1 <= claims[-1][1]:
                continue
            if claims and now - claims[-1][0] < self.step:
                claims[-1] = (claims[-1][0], top + 1)
            else:
                claims.append((now, top + 1))
