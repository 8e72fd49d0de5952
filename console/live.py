"""The store watcher: live screens without waste.

One thread worker owns its own store connection and asks the store's change feed
(:mod:`relay.store.changes`; on SQLite a cheap ``PRAGMA data_version``) about four
times a second whether another connection committed. When one did — or the screen asks (new page, new filter), or a second has
passed so ages tick — it calls the visible screen's ``read(db, now)`` *in the worker
thread*, which reads only what the screen shows (aggregates and one page), and posts
the result as a :class:`Snapshot` message to that screen.

A newer snapshot replaces a stale one still waiting in the screen's queue
(``can_replace``), and the next read starts only after the screen has applied the
last one (:meth:`StoreWatcher.applied`), so refreshes never overlap or pile up.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from textual.message import Message
from textual.worker import get_current_worker

from relay.store import Connection, open_store, store_errors
from relay.store.backend import backend_for
from relay.store.changes import SyncChangeFeed
from relay.store.errors import StoreError
from relay.store.lease import RelayStatus, relay_status

POLL_INTERVAL = 0.25  # seconds between two looks at the change feed
TICK_INTERVAL = 1.0  # re-read at least this often, so ages and the heartbeat move
APPLY_TIMEOUT = 5.0  # stop waiting for a screen that never acknowledges


class LiveView(Protocol):
    """A screen the watcher keeps up to date."""

    #: Minimum seconds between two reads (expensive screens read less often).
    min_interval: float

    def read(self, db: Connection, now: float) -> Any:
        """Runs in the watcher thread: read what the screen shows."""

    def post_message(self, message: Message) -> bool: ...


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """What the status bar shows, read with every snapshot."""

    relay: RelayStatus
    delivery_state: dict[str, Any] | None
    at: float


class Snapshot(Message, bubble=False):
    """Fresh data for one screen. A newer one replaces a stale one still queued."""

    def __init__(self, view: LiveView, data: Any, status: StoreStatus | None, error: str | None = None) -> None:
        super().__init__()
        self.view = view
        self.data = data
        self.status = status
        self.error = error

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, Snapshot) and message.view is self.view


def read_status(db: Connection, now: float, stale_after: float = 10.0) -> StoreStatus:
    from relay.store.settings import Keys, get_setting

    state = get_setting(db, Keys.STATUS)
    return StoreStatus(
        relay=relay_status(db, stale_after, now=now),
        delivery_state=state if isinstance(state, dict) else None,
        at=now,
    )


class StoreWatcher:
    """Polls the store for changes and feeds the visible screen (see module doc)."""

    def __init__(
        self,
        store_path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        poll_interval: float = POLL_INTERVAL,
        tick_interval: float = TICK_INTERVAL,
        stale_after: float = 10.0,
    ) -> None:
        self.store_path = store_path
        self.clock = clock
        self.poll_interval = poll_interval
        self.tick_interval = tick_interval
        self.stale_after = stale_after
        self._view: LiveView | None = None
        self._wake = threading.Event()
        self._applied = threading.Event()
        self._applied.set()
        self._stopped = threading.Event()
        self.reads = 0  # completed reads (tests and the benchmark count them)
        self.read_seconds = 0.0  # worker time spent reading

    # -- called from the UI thread ------------------------------------------------

    def show(self, view: LiveView | None) -> None:
        """Make ``view`` the screen being fed, and read for it now."""
        self._view = view
        self._applied.set()
        self._wake.set()

    def poke(self, view: LiveView | None = None) -> None:
        """Read again now (a page or filter changed, or an action committed)."""
        if view is None or view is self._view:
            self._wake.set()

    def applied(self) -> None:
        """The screen has applied the last snapshot: the next read may start."""
        self._applied.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._applied.set()

    @property
    def view(self) -> LiveView | None:
        return self._view

    # -- the worker thread ----------------------------------------------------------

    def run(self) -> None:
        """The worker body: poll, read, post; until cancelled or stopped."""
        worker = get_current_worker()
        db = open_store(self.store_path)
        try:
            self._loop(db, lambda: worker.is_cancelled or self._stopped.is_set())
        finally:
            db.close()

    def _loop(self, db: Connection, cancelled: Callable[[], bool]) -> None:
        changes = backend_for(self.store_path).change_feed(db)
        changed = False  # a commit seen that no read has covered yet
        last_view: LiveView | None = None
        last_read = 0.0
        while not cancelled():
            view = self._view
            changed = self._changed(changes) or changed
            now_mono = time.monotonic()
            woken = self._wake.is_set()
            due = (
                view is not None
                and (
                    woken
                    or view is not last_view
                    or changed
                    or now_mono - last_read >= self.tick_interval
                )
                and now_mono - last_read >= (0 if woken or view is not last_view else view.min_interval)
            )
            if view is not None and due:
                self._wake.clear()
                # The change was seen before this read starts, so the read covers it.
                changed, last_view, last_read = False, view, now_mono
                self._read_and_post(db, view)
                self._wait_applied(cancelled, view)
                continue
            self._wake.wait(self.poll_interval)

    @staticmethod
    def _changed(changes: SyncChangeFeed) -> bool:
        try:
            return changes.changed()
        except StoreError:
            return True  # the read that follows meets the error and shows it

    def _read_and_post(self, db: Connection, view: LiveView) -> None:
        started = time.perf_counter()
        now = self.clock()
        data: Any = None
        status: StoreStatus | None = None
        error: str | None = None
        try:
            with store_errors(self.store_path):
                status = read_status(db, now, self.stale_after)
                data = view.read(db, now)
        except StoreError as exc:
            # The store may be busy or briefly unreadable: say so, try again next tick.
            error = str(exc)
        except Exception as exc:  # one place reports read errors to the operator
            error = f"{type(exc).__name__}: {exc}"
        self.read_seconds += time.perf_counter() - started
        self.reads += 1
        self._applied.clear()
        view.post_message(Snapshot(view, data, status, error))

    def _wait_applied(self, cancelled: Callable[[], bool], view: LiveView) -> None:
        deadline = time.monotonic() + APPLY_TIMEOUT
        while not self._applied.wait(0.05):
            if cancelled() or self._view is not view or time.monotonic() > deadline:
                return
