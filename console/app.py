"""The operator console: a Textual app over the shared store.

The App owns the in-process relay (an asyncio task in this loop, started on mount and
stopped on exit; switching screens never touches it), the store watcher that feeds the
visible screen, and one place where store actions run (a thread worker each, on a
connection of their own) and where their errors become one-line notifications.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from console.live import StoreWatcher
from relay.store import Connection, open_store, store_errors
from relay.store.postgres.location import store_location  # text only: loads no driver

HANGUP_EXIT_CODE = 129
# A hung-up terminal must end the process even if shutdown itself hangs on it.
HANGUP_DEADLINE = 20.0


def one_line_error(exc: BaseException) -> str:
    """Known errors carry their own one-line message; anything else names its type."""
    from relay.policy import PolicyError
    from relay.priority import PriorityError
    from relay.store import store_error_for

    store_error = store_error_for(exc)
    if store_error is not None:
        return str(store_error)
    if isinstance(exc, PolicyError | PriorityError | ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class ConsoleApp(App[None]):
    """``smtpplus console``. ``run_relay`` starts the relay in-process unless a live
    relay already holds the store's lease (then, as with ``run_relay=False``, the
    console attaches to it and shows its heartbeat)."""

    TITLE = "smtpplus"
    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = True

    DEFAULT_MODE = "queue"
    MODES = {
        "queue": lambda: _screen("queue", "QueueScreen"),
        "lists": lambda: _screen("lists", "ListsScreen"),
        "users": lambda: _screen("users", "UsersScreen"),
        "senders": lambda: _screen("senders", "SendersScreen"),
        "events": lambda: _screen("events", "EventsScreen"),
    }

    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True, id="app.quit"),
        Binding("ctrl+c", "help_quit", "Says: quit with ctrl+q", show=False, system=True, id="app.ctrl-c"),
        Binding("ctrl+p", "command_palette", "Commands", show=False, priority=True, id="app.palette"),
        Binding("f1,question_mark", "help", "Help", key_display="F1/?", id="app.help"),
        Binding("1", "show('queue')", "Queue", show=False, id="app.queue"),
        Binding("2", "show('lists')", "Lists", show=False, id="app.lists"),
        Binding("3", "show('users')", "Users", show=False, id="app.users"),
        Binding("4", "show('senders')", "Senders", show=False, id="app.senders"),
        Binding("5", "show('events')", "Events", show=False, id="app.events"),
    ]

    def __init__(
        self,
        store_path: str | os.PathLike[str],
        *,
        run_relay: bool = True,
        relay_config: Any = None,
        clock: Callable[[], float] = time.time,
        cursor_blink: bool = True,
        poll_interval: float | None = None,
        stale_after: float = 10.0,
    ) -> None:
        super().__init__()
        # A postgresql:// URL stays text: pathlib would drop a slash of postgresql:///db.
        self.store_path = store_location(store_path)
        self.run_relay = run_relay
        self.relay_config = relay_config
        self.clock = clock
        self.cursor_blink = cursor_blink
        self.relay: Any = None
        self.relay_mode = "starting" if run_relay else "attached"
        self.relay_error: str | None = None
        self.watcher = StoreWatcher(
            self.store_path,
            clock=clock,
            stale_after=stale_after,
            **({"poll_interval": poll_interval} if poll_interval else {}),
        )
        self._action_db: Connection | None = None
        self._action_lock = threading.Lock()
        self._after_action: dict[Worker[Any], tuple[Callable[[Any], None] | None, str | None]] = {}
        self._last_read_error: tuple[str, float] | None = None
        # Figures for the benchmark and the tests.
        self.refresh_times: list[float] = []
        self.notices: list[str] = []  # every notification shown, newest last (tests read it)

    # -- lifecycle --------------------------------------------------------------------

    def on_mount(self) -> None:
        self.run_worker(self.watcher.run, thread=True, name="store watcher", group="watcher", exit_on_error=False)
        self.run_worker(self._boot(), name="relay", group="relay", exit_on_error=False)
        if not self.is_headless:
            self._watch_terminal()

    async def on_unmount(self) -> None:
        self.watcher.stop()
        relay, self.relay = self.relay, None
        if relay is not None:
            try:
                await relay.stop()
            except Exception as exc:  # exiting anyway; the lease goes stale and is taken over
                self.log.error(f"relay stop failed: {exc!r}")
        if self._action_db is not None:
            with self._action_lock:
                self._action_db.close()
                self._action_db = None

    async def _boot(self) -> None:
        await self.prepare()
        if self.run_relay:
            await self._start_relay()

    async def prepare(self) -> None:
        """Runs before the relay starts (the demo starts its capture sink here)."""

    def extra_status(self) -> str | None:
        """More for the status bar (the demo shows its sink)."""
        return None

    async def _start_relay(self) -> None:
        from relay.store.lease import relay_status

        status = await asyncio.to_thread(self._read, relay_status)
        if status.alive:
            self.relay_mode = "attached"
            self.notify(
                f"A relay is already running on this store (pid {status.pid}): the console attaches to it.",
                timeout=6,
            )
            self.watcher.poke()
            return
        try:
            from relay.config import RelayConfig
            from relay.service import RelayService

            service = RelayService(self.store_path, self.relay_config or RelayConfig())
            await service.start()
        except Exception as exc:
            from relay.store.lease import RelayAlreadyRunning

            self.relay_mode = "attached"
            if not isinstance(exc, RelayAlreadyRunning):
                self.relay_error = one_line_error(exc)
            self.notify(one_line_error(exc), severity="warning" if isinstance(exc, RelayAlreadyRunning) else "error", timeout=8)
        else:
            self.relay = service
            self.relay_mode = "in-process"
            served = getattr(service, "served", []) or []
            not_served = getattr(service, "not_served", {}) or {}
            note = ""
            if not_served:
                reasons = "; ".join(f"{port}: {why}" for port, why in sorted(not_served.items())[:3])
                note = f". Not served (skipped): {reasons}" + (" …" if len(not_served) > 3 else "")
            self.notify(f"Relay started in-process: {len(served):,} ports served{note}.", timeout=8)
        self.watcher.poke()

    def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        db = open_store(self.store_path)
        try:
            return fn(db, *args)
        finally:
            db.close()

    # -- a dropped terminal ends the process ------------------------------------------

    def _watch_terminal(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.hang_up)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        self.set_interval(1.0, self._check_terminal, name="terminal watch")

    def _check_terminal(self) -> None:
        """stdin hung up or closed (an SSH session dropped): leave instead of spinning."""
        try:
            stdin = sys.__stdin__
            if stdin is None:
                raise ValueError("no stdin")
            poller = select.poll()
            poller.register(stdin.fileno(), select.POLLIN)
            events = poller.poll(0)
        except (OSError, ValueError, AttributeError):
            self.hang_up()
            return
        if any(mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, mask in events):
            self.hang_up()

    def hang_up(self) -> None:
        timer = threading.Timer(HANGUP_DEADLINE, os._exit, args=(HANGUP_EXIT_CODE,))
        timer.daemon = True
        timer.start()
        self.exit(return_code=HANGUP_EXIT_CODE)

    # -- navigation ----------------------------------------------------------------

    def action_show(self, mode: str) -> None:
        if self.current_mode != mode:
            self.switch_mode(mode)

    def action_help(self) -> None:
        from console.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """Every key binding of the app and of the screen underneath is also a command,
        each title once (Textual's own bindings and commands repeat some: Quit)."""
        titles: set[str] = set()
        for command in (*self._binding_commands(screen), *super().get_system_commands(screen)):
            if command.title.casefold() not in titles:
                titles.add(command.title.casefold())
                yield command

    def _binding_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        seen: set[str] = set()
        keys: set[str] = set()  # Textual's "Focus Next" is our "Next field" (tab): list one
        for owner, bindings in ((screen, _bindings_of(screen)), (self, _bindings_of(self))):
            for binding in bindings:
                if not binding.description or binding.id in seen or binding.system or binding.key in keys:
                    continue
                if binding.action in {"command_palette", "help_quit"}:
                    continue
                action_name = binding.action.split("(")[0].rsplit(".", 1)[-1]
                if owner.check_action(action_name, ()) is False:
                    continue
                seen.add(binding.id or binding.action)
                keys.add(binding.key)
                yield SystemCommand(
                    binding.description,
                    f"{binding.tooltip} (key {binding.key_display or binding.key})"
                    if binding.tooltip else f"key {binding.key_display or binding.key}",
                    partial(self._run_binding, owner, binding.action),
                )

    async def _run_binding(self, owner: Any, action: str) -> None:
        await self.run_action(action, owner)

    # -- store actions: one thread worker each, errors reported in one place ------------

    def run_store(
        self,
        fn: Callable[..., Any],
        *args: Any,
        done: Callable[[Any], None] | None = None,
        success: str | None = None,
        **kwargs: Any,
    ) -> Worker[Any]:
        """Run ``fn(db, *args, **kwargs)`` off the UI thread on the console's write
        connection. ``done(result)`` runs on the UI thread after it succeeds, and
        ``success`` is shown as a notification; an error becomes one line."""

        def work() -> Any:
            with self._action_lock:
                if self._action_db is None:
                    self._action_db = open_store(self.store_path)
                with store_errors(self.store_path):
                    return fn(self._action_db, *args, **kwargs)

        worker = self.run_worker(work, thread=True, group="store", exit_on_error=False, name=getattr(fn, "__name__", "store"))
        self._after_action[worker] = (done, success)
        return worker

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group == "store" and worker in self._after_action:
            if event.state == WorkerState.SUCCESS:
                done, success = self._after_action.pop(worker)
                if done is not None:
                    done(worker.result)
                if success:
                    self.notify(success, timeout=4)
                self.watcher.poke()
            elif event.state in (WorkerState.ERROR, WorkerState.CANCELLED):
                self._after_action.pop(worker, None)
                if worker.error is not None:
                    self.notify(one_line_error(worker.error), severity="error", timeout=8)
        elif event.state == WorkerState.ERROR and worker.error is not None:
            self.notify(f"{worker.name}: {one_line_error(worker.error)}", severity="error", timeout=10)

    async def store_idle(self) -> None:
        """Wait until every store action has finished (tests)."""
        pending = [w for w in self.workers if w.group == "store"]
        if pending:
            await self.workers.wait_for_complete(pending)

    # -- what the screens report back ------------------------------------------------

    def notify(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.notices.append(message)
        del self.notices[:-200]
        super().notify(message, *args, **kwargs)

    def record_refresh(self, seconds: float) -> None:
        self.refresh_times.append(seconds)
        if len(self.refresh_times) > 10_000:
            del self.refresh_times[:5_000]

    def report_read_error(self, error: str) -> None:
        # A busy store can fail a read every tick: say it once every 10 s at most.
        now = time.monotonic()
        if self._last_read_error and self._last_read_error[0] == error and now - self._last_read_error[1] < 10:
            return
        self._last_read_error = (error, now)
        self.notify(error, severity="error", timeout=6)


def _screen(module: str, name: str) -> Screen[Any]:
    """The screens load with the app, not with the CLI (``import console.app`` stays cheap)."""
    import importlib

    screen: Screen[Any] = getattr(importlib.import_module(f"console.screens.{module}"), name)()
    return screen


def _bindings_of(node: Any) -> list[Binding]:
    out: list[Binding] = []
    for cls in type(node).__mro__:
        for binding in cls.__dict__.get("BINDINGS", []):
            if isinstance(binding, Binding) and binding not in out:
                out.append(binding)
    return out
