"""A watchdog for the event loop: counts and logs stalls, with what was running.

Every session, the heartbeat and the writer share one event loop; anything that holds
it (a quadratic parse, a big copy) freezes them all — the heartbeat too, so a stalled
relay looks dead to ``status``. The loop bumps a timestamp every ``tick`` seconds; a
thread checks it and, when it is older than ``threshold`` (1 s), counts one stall
and logs the loop thread's innermost frames and the task that was running. Tests
assert on :attr:`LoopWatchdog.stalls`, never on seconds.

``LoopWatchdog(threshold=1.0, tick=0.1)``; ``start(loop)`` (idempotent) from inside
the loop; the thread ends by itself once the loop is closed, or on ``stop()``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger("smtpplus.relay")


class LoopWatchdog:
    def __init__(self, threshold: float = 1.0, tick: float = 0.1) -> None:
        self.threshold = threshold
        self.tick = tick
        self.stalls = 0
        self.last_stall = ""  # what was running during the last stall
        self._beat = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._thread is not None:
            return
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        loop.call_soon(self._on_loop)
        self._thread = threading.Thread(target=self._watch, name="smtpplus-loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _on_loop(self) -> None:
        self._beat = time.monotonic()
        loop = self._loop
        if loop is not None and not self._stop.is_set():
            loop.call_later(self.tick, self._on_loop)

    def _watch(self) -> None:
        stalled = False
        while not self._stop.wait(self.tick):
            loop = self._loop
            if loop is None or loop.is_closed():
                return
            if not loop.is_running():  # a stopped loop is not a stalled one
                stalled = False
                continue
            late = time.monotonic() - self._beat
            if late < self.threshold:
                stalled = False
            elif not stalled:
                stalled = True
                self.stalls += 1
                self.last_stall = self._what_runs(loop)
                log.warning("event loop stalled for over %.1f s (stall %d): %s", self.threshold, self.stalls, self.last_stall)

    def _what_runs(self, loop: asyncio.AbstractEventLoop) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        where = ""
        if frame is not None:
            stack = traceback.extract_stack(frame)[-4:]
            where = " <- ".join(f"{f.name} ({f.filename.rpartition('/')[2]}:{f.lineno})" for f in reversed(stack))
        try:
            task = asyncio.current_task(loop)
        except RuntimeError:
            task = None
        name = task.get_name() if task is not None else "no task"
        return f"{name}: {where}" if where else name
