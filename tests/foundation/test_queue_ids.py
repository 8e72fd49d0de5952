"""Queue ids: unique, and in the order they were made (the stores' unique index on
them takes new ids at its end instead of at random pages)."""

from __future__ import annotations

import itertools
import re
import threading

from relay.store.intake import new_queue_id

QUEUE_ID = re.compile(r"^[A-Z2-7]{12}$")


def test_ids_made_faster_than_the_clock_ticks_are_unique_and_ascending() -> None:
    ids = [new_queue_id() for _ in range(50_000)]  # many within one microsecond
    assert all(QUEUE_ID.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    # Ascending, bytewise as SQLite's index compares (PostgreSQL's collations also put
    # digits before letters) — but for the time part's wrap every 4.8 hours.
    assert _descents(ids) <= 1


def test_ids_made_on_several_threads_at_once_are_unique() -> None:
    made: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_queue_id() for _ in range(10_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every)
    assert all(_descents(out) <= 1 for out in made)


def _descents(ids: list[str]) -> int:
    return sum(b < a for a, b in itertools.pairwise(ids))
