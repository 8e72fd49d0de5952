"""Where a claim starts looking, per priority (PostgreSQL).

A claim takes the first ready messages in (priority, id) order from the dispatch index.
On PostgreSQL every message claimed leaves its index entry behind, dead, until a vacuum
removes it — autovacuum visits a database about once a minute — and each claim walks
from the start of its priority's entries past all of them: on a queue drained at 1,500
messages a second, up to 400 index pages, 1–3 ms a claim. (SQLite deletes the entry
at once: it needs no floors.)

A floor is an id below which the claim does not look for a priority: a claim with
floors reads each priority's entries from its floor on (one index descent each, see
``relay.store.queue``). A floor is only ever an id the engine itself claimed past —
and only once confirmed: a later claim, started ``LAG`` seconds or more after the one
that went past it, reached beyond it from the floor before. Everything under it had
then been looked at twice, the second time a second later: mail committed out of id
order in between (a group commit that took its ids before the first claim and
committed after it, another relay's claim rolled back) was in the second look's way
and claimed first. What can still queue a message under a floor:

* the round's own housekeeping (a due retry made ready, an expired lease reclaimed):
  ``relay.store.queue.dispatch_round`` lowers the floors to it — and when the round's
  claim already ran from above it, rolls back and runs again;
* another process's change that is not new mail (an operator's retry or resume,
  another relay's reclaim or release): the engine forgets the floors when its change
  feed says so;
* anything else (a transaction that held its ids for more than ``LAG`` seconds):
  every ``CHECK`` seconds a claim looks from the front of every priority, and when it
  finds mail under a floor the floors are forgotten. Such a message waits at most
  that long — the only case where a claim could pass over a higher-priority message.

Pure bookkeeping: the clock is the caller's (monotonic seconds, read when the round
starts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

LAG = 1.0  # seconds between a claim and the one that confirms its floor
CHECK = 5.0  # seconds between claims from the front of every priority
STEP = 0.05  # claims this close together share one entry (a busy engine claims every ms)


@dataclass(slots=True)
class ClaimFloors:
    lag: float = LAG
    check: float = CHECK
    step: float = STEP
    _floors: dict[int, int] = field(default_factory=dict)  # confirmed, per priority
    # Per priority, not yet confirmed: (when the claim started, the id after the highest
    # it took — and that claims up to ``step`` later took), oldest first.
    _pending: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    _checked: float | None = None  # when a claim last looked from the front
    _checking: dict[int, int] | None = None  # the floors that look passed by
    forgotten: int = 0  # times the floors started over (figures for the tests)
    checks: int = 0
    confirmed: int = 0  # floors confirmed (moved up)

    def forget(self) -> None:
        """Start over: claims look from the front of every priority until new
        floors are confirmed."""
        self._floors.clear()
        self._pending.clear()
        self.forgotten += 1

    def floors(self, now: float) -> dict[int, int]:
        """The floor of each priority that has one — none while a look from the front
        is due (every ``CHECK`` seconds, until a claim has made it: :meth:`claimed`)."""
        if self._checked is None or now - self._checked >= self.check:
            self._checking = dict(self._floors)
            return {}
        self._checking = None
        return dict(self._floors)

    def lower(self, rows: Iterable[tuple[int, int]]) -> None:
        """Mail (priority, id) became ready again: no floor, confirmed or not, stays above it."""
        for priority, message_id in rows:
            if priority in self._floors:
                self._floors[priority] = min(self._floors[priority], message_id)
            pending = self._pending.get(priority)
            if pending:
                pending[:] = [(at, min(floor, message_id)) for at, floor in pending]

    def _confirm(self, priority: int, floors: list[int]) -> None:
        if floors:
            self.confirmed += 1
            floor = self._floors[priority] = max(self._floors.get(priority, 0), *floors)
            pending = self._pending[priority]
            pending[:] = [(at, later) for at, later in pending if later > floor]

    def claimed(self, started: float, rows: Iterable[tuple[int, int]]) -> None:
        """A claim without filters of its own, started at ``started`` from the floors
        :meth:`floors` gave, took ``rows`` (priority, id): every message of each
        priority from its floor to the highest id taken was claimed, or not ready, or
        another relay was claiming it."""
        taken = list(rows)
        checked, self._checking = self._checking, None
        if checked is not None:  # this claim looked from the front
            self._checked = started
            self.checks += 1
            if any(message_id < checked.get(priority, 0) for priority, message_id in taken):
                self.forget()  # mail under a floor: there may be more
        highest: dict[int, int] = {}
        for priority, message_id in taken:
            highest[priority] = max(highest.get(priority, 0), message_id)
        last = max(highest, default=0)
        for priority, pending in self._pending.items():
            # Entries this claim confirms: a second old or more, and passed by it — or
            # all of them when it went on to lower-priority mail: it read this priority
            # from its floor to its end.
            passed = highest.get(priority, -1) + 1
            self._confirm(priority, [f for at, f in pending if started - at >= self.lag and (priority < last or f <= passed)])
        for priority, top in highest.items():
            pending = self._pending.setdefault(priority, [])
            if pending and top + 1 <= pending[-1][1]:
                continue
            if pending and started - pending[-1][0] < self.step:
                pending[-1] = (pending[-1][0], top + 1)
            else:
                pending.append((started, top + 1))
