"""The store watcher's hand-off with a screen: a request change always leads to a read
of the new request whose result reaches the screen, even when no tick is due.

The watcher loop runs in a plain thread on a real seeded store; the "screen" is a small
view that records what each read saw and lets the test decide when a snapshot is applied
and when a read may finish (so the interleavings are chosen, not hoped for).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

from console.live import Snapshot, StoreWatcher
from console.screens.queue import QueueRequest
from relay.store import Connection, open_store
from tests.console.conftest import screen_text, wait_for

WITHIN = 20.0  # seconds: wide, the interleaving is forced by events, not by time


class View:
    """Reads ``request`` like a screen's ``read`` does (once, at the start)."""

    min_interval = 0.0

    def __init__(self) -> None:
        self.request = 0
        self.reads: list[int] = []
        self.snapshots: queue.Queue[Snapshot] = queue.Queue()
        self.hold_next_read = False
        self.in_read = threading.Event()
        self.release = threading.Event()

    def read(self, db: Connection, now: float) -> int:
        request = self.request
        if self.hold_next_read:
            self.hold_next_read = False
            self.in_read.set()
            assert self.release.wait(WITHIN)
        self.reads.append(request)
        return request

    def post_message(self, message: Any) -> bool:
        self.snapshots.put(message)
        return True


class Loop:
    """The watcher's loop in a thread, with ticks off: only pokes and shows read."""

    def __init__(self, store: Path) -> None:
        self.watcher = StoreWatcher(store, poll_interval=0.01, tick_interval=3600.0)
        self.stop = threading.Event()
        self.db = open_store(store)
        self.thread = threading.Thread(target=self.watcher._loop, args=(self.db, self.stop.is_set), daemon=True)

    def __enter__(self) -> Loop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.watcher.stop()
        self.thread.join(WITHIN)
        self.db.close()

    def next_snapshot(self, view: View) -> Any:
        """The next snapshot's data, applied (as the screen's on_snapshot does)."""
        snapshot = view.snapshots.get(timeout=WITHIN)
        self.watcher.applied()
        return snapshot.data


def test_a_request_changed_during_a_read_is_read_again(seeded_store: Path) -> None:
    view = View()
    with Loop(seeded_store) as loop:
        loop.watcher.show(view)
        assert loop.next_snapshot(view) == 0
        view.hold_next_read = True
        loop.watcher.poke(view)
        assert view.in_read.wait(WITHIN)
        # The read under way took the old request; the operator moves on and pokes.
        view.request = 1
        loop.watcher.poke(view)
        view.release.set()
        assert loop.next_snapshot(view) == 0
        assert loop.next_snapshot(view) == 1
    assert view.reads[-2:] == [0, 1]


def test_a_poke_while_a_snapshot_waits_to_be_applied_is_not_lost(seeded_store: Path) -> None:
    view = View()
    with Loop(seeded_store) as loop:
        loop.watcher.show(view)
        first = view.snapshots.get(timeout=WITHIN)  # posted, not applied yet
        view.request = 1
        loop.watcher.poke(view)
        loop.watcher.applied()
        assert first.data == 0
        assert loop.next_snapshot(view) == 1


async def test_a_stale_snapshot_asks_for_the_current_request(seeded_store: Path, make_app) -> None:
    """A snapshot read for a request the operator has left makes the screen ask for the
    current one itself: with ticks off and no poke pending, the deferred rows still come."""
    app = make_app(seeded_store)
    app.watcher.tick_interval = 3600.0
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "snapshots_applied", 0) > 0)
        screen = app.screen
        stale = screen.data
        reads = app.watcher.reads
        # The view changed but its poke was lost; then a snapshot of the old view arrives.
        screen.request = QueueRequest(view="deferred")
        screen.query_one("#tables").current = "table-deferred"
        screen.post_message(Snapshot(screen, stale, screen.last_status))
        await wait_for(pilot, lambda: app.watcher.reads > reads and screen.data.request.view == "deferred")
        await wait_for(pilot, lambda: "451 4.7.1 Try again later" in screen_text(app))
