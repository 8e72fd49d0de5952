"""What every live screen shares: the status bar, the footer, and the snapshot
hand-off with the store watcher."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen

from console.live import Snapshot
from console.widgets.footer import FitFooter
from console.widgets.status_bar import StatusBar
from relay.store import Connection

if TYPE_CHECKING:
    from console.app import ConsoleApp


class LiveScreen(Screen[None]):
    """A screen fed by the store watcher: ``read`` runs in the watcher thread,
    ``apply`` on the UI thread inside one batch update."""

    #: Minimum seconds between two reads for this screen.
    min_interval: float = 0.25
    #: The name shown in the help screen and the command palette.
    TITLE_TEXT: str = ""

    BINDINGS = [
        Binding("tab", "app.focus_next", "Next field", show=False, id="screen.focus-next"),
        Binding("shift+tab", "app.focus_previous", "Previous field", show=False, id="screen.focus-previous"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last_status: Any = None
        self.snapshots_applied = 0

    @property
    def console(self) -> ConsoleApp:
        return cast("ConsoleApp", self.app)

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield from self.compose_body()
        yield FitFooter(compact=True)

    def compose_body(self) -> ComposeResult:
        yield from ()

    # -- the watcher hand-off -----------------------------------------------------

    def on_screen_resume(self) -> None:
        self.console.watcher.show(self)

    def read(self, db: Connection, now: float) -> Any:
        """Runs in the watcher thread. Read only what this screen shows."""
        return None

    def apply(self, data: Any, now: float) -> None:
        """Runs on the UI thread with fresh data from :meth:`read`."""

    def on_snapshot(self, message: Snapshot) -> None:
        if message.view is not self:
            return
        message.stop()
        started = time.perf_counter()
        try:
            if message.error:
                self.console.report_read_error(message.error)
            else:
                now = message.status.at if message.status else self.console.clock()
                with self.app.batch_update():
                    # Before apply: screens explain their rows with the status (paused…).
                    self.last_status = message.status
                    self.apply(message.data, now)
                    self.query_one(StatusBar).show(message.status)
                self.snapshots_applied += 1
        finally:
            self.console.record_refresh(time.perf_counter() - started)
            self.console.watcher.applied()

    def refresh_data(self) -> None:
        """Ask the watcher for a fresh read now (a page, filter or row changed)."""
        self.console.watcher.poke(self)
