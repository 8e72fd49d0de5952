"""Events, filterable by user, reason (or kind), port and time: the answer to
"message not being sent?". Newest first, one page at a time."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.suggester import SuggestFromList
from textual.widgets import Static

from console import format as fmt
from console.screens.base import LiveScreen
from console.widgets.fields import Field
from console.widgets.keyed_table import KeyedTable
from relay.reasons import PROBLEMS, EventKind, Reason
from relay.store import Connection
from relay.store.events import find_events

PAGE = 100
COLUMNS = [
    ("time", "Time", 8), ("reason", "Reason", 22), ("user", "User", 12), ("port", "Port", 5),
    ("detail", "Detail", None),
]
REASONS = sorted(str(r) for r in Reason)
KINDS = sorted(str(k) for k in EventKind)
BAD_REASONS = {str(r) for r in PROBLEMS}  # highlighted: the reasons' own category, never a prefix list


@dataclass(frozen=True, slots=True)
class EventsRequest:
    username: str | None = None
    kinds: tuple[str, ...] | None = None
    reason: str | None = None
    port: int | None = None
    since_text: str = ""
    before_id: int | None = None
    page: int = 0


class FilterError(ValueError):
    pass


def build_request(user: str, reason: str, port: str, since: str, now: float) -> EventsRequest:
    """The operator's filter fields → a request; FilterError names the bad field."""
    reason = reason.strip().lower()
    kinds: tuple[str, ...] | None = None
    reason_code: str | None = None
    if reason:
        if reason in KINDS:
            kinds = (reason,)
        elif reason in REASONS:
            reason_code = reason
        else:
            raise FilterError(f"reason: {reason!r} is not a reason or kind (e.g. sender-unverified, refused)")
    port_number: int | None = None
    if port.strip():
        if not port.strip().isdigit() or not 1 <= int(port) <= 65535:
            raise FilterError("port: a number from 1 to 65535")
        port_number = int(port)
    try:
        fmt.parse_since(since, now)
    except ValueError as exc:
        raise FilterError(str(exc)) from None
    return EventsRequest(user.strip() or None, kinds, reason_code, port_number, since.strip())


class EventsScreen(LiveScreen):
    TITLE_TEXT = "Events"
    CSS_PATH = "events.tcss"
    min_interval = 0.5

    BINDINGS = [
        Binding("slash", "filter", "Filter", key_display="/", id="events.filter"),
        Binding("x", "clear_filters", "Clear filters", id="events.clear"),
        Binding("greater_than_sign", "older", "Older", key_display=">", id="events.older"),
        Binding("less_than_sign", "newer", "Newer", key_display="<", id="events.newer"),
        Binding("enter", "open", "Message", show=False, id="events.open"),
        Binding("escape", "to_table", "Back to table", show=False, id="events.to-table"),
    ]

    def __init__(self) -> None:
        super().__init__(id="events")
        self.request = EventsRequest()
        self._pages: list[int | None] = []
        self.events: list[Any] = []
        self._filter_timer: Any = None
        # A bad filter field: shown instead of the filter line until it is fixed (a live
        # refresh must not wipe it, or the bad field looks silently ignored).
        self.filter_error: str | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="filters"):
            yield Field(placeholder="user", id="f-user")
            yield Field(placeholder="reason or kind", id="f-reason",
                        suggester=SuggestFromList(REASONS + KINDS, case_sensitive=False))
            yield Field(placeholder="port", id="f-port")
            yield Field(placeholder="since: 15m, today", id="f-since")
        yield Static("", id="filter-info")
        yield KeyedTable(COLUMNS, id="events-table")
        yield Static("", id="event-detail")

    def on_mount(self) -> None:
        self.query_one(KeyedTable).focus()

    def read(self, db: Connection, now: float) -> tuple[EventsRequest, list[Any]]:
        request = self.request
        since = fmt.parse_since(request.since_text, now) if request.since_text else None
        events = find_events(
            db, username=request.username, kinds=request.kinds, reason=request.reason, port=request.port,
            since=since, before_id=request.before_id, limit=PAGE,
        )
        return request, events

    def apply(self, data: tuple[EventsRequest, list[Any]], now: float) -> None:
        request, events = data
        if request != self.request:
            return
        self.events = events
        self.query_one(KeyedTable).sync([(str(e.id), self._cells(e, now)) for e in events])
        self._show_info()
        self._show_detail(now)

    @staticmethod
    def _cells(event: Any, now: float) -> list[Any]:
        style = "bold red" if event.reason in BAD_REASONS else ""
        detail = event.detail
        if event.queue_id and event.queue_id not in detail:
            detail = f"{event.queue_id} {detail}"
        return [
            fmt.clock_time(event.at, now), Text(event.reason, style=style), fmt.shorten(event.username or "-", 12),
            str(event.port or "-"), fmt.shorten(detail, 48),
        ]

    def _show_info(self) -> None:
        info = self.query_one("#filter-info", Static)
        info.set_class(bool(self.filter_error), "-error")
        if self.filter_error:
            info.update(Text(f"{self.filter_error} (the previous filter still applies)", style="bold red"))
        else:
            info.update(self._info(self.request, self.events))

    @staticmethod
    def _info(request: EventsRequest, events: list[Any]) -> str:
        parts = []
        if request.username:
            parts.append(f"user {request.username}")
        if request.kinds:
            parts.append(f"kind {request.kinds[0]}")
        if request.reason:
            parts.append(f"reason {request.reason}")
        if request.port:
            parts.append(f"port {request.port}")
        if request.since_text:
            parts.append(f"since {request.since_text}")
        where = ", ".join(parts) if parts else "all events"
        page = f"page {request.page + 1}" + (" (live)" if request.page == 0 else "")
        return f"{where} · {len(events)} shown, newest first · {page} · / filter · > older · < newer"

    def _show_detail(self, now: float | None = None) -> None:
        event = self.selected()
        box = self.query_one("#event-detail", Static)
        if event is None:
            box.update(Text("No events match." if not self.events else ""))
            return
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        table.add_row(fmt.full_time(event.at), f"{event.kind} · {event.reason}")
        where = " · ".join(x for x in (
            f"client {event.client}" if event.client else "", f"port {event.port}" if event.port else "",
            f"user {event.username}" if event.username else "", f"message {event.queue_id}" if event.queue_id else "",
        ) if x)
        if where:
            table.add_row("", Text(fmt.safe(where)))
        table.add_row("", Text(fmt.safe(event.detail or "-")))
        if event.message_id:
            table.add_row("", Text("enter: open the message", style="dim"))
        box.update(table)

    def on_data_table_row_highlighted(self, event: KeyedTable.RowHighlighted) -> None:
        self._show_detail()

    def on_data_table_row_selected(self, event: KeyedTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def selected(self) -> Any:
        key = self.query_one(KeyedTable).cursor_key
        return next((e for e in self.events if str(e.id) == key), None) if key else None

    # -- filters ------------------------------------------------------------------

    def on_input_changed(self, event: Field.Changed) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(0.3, self._apply_filters)

    def on_input_submitted(self, event: Field.Submitted) -> None:
        self._apply_filters()
        self.query_one(KeyedTable).focus()

    def _apply_filters(self) -> None:
        user, reason, port, since = (self.query_one(f"#f-{name}", Field).value for name in ("user", "reason", "port", "since"))
        try:
            request = build_request(user, reason, port, since, self.console.clock())
        except FilterError as exc:
            self.filter_error = str(exc)
            self._show_info()
            return
        if self.filter_error:
            self.filter_error = None
            self._show_info()
        if request != replace(self.request, before_id=None, page=0):
            self._pages = []
            self.request = request
            self.refresh_data()

    def action_filter(self) -> None:
        self.query_one("#f-user", Field).focus()

    def action_to_table(self) -> None:
        self.query_one(KeyedTable).focus()

    def action_clear_filters(self) -> None:
        for name in ("user", "reason", "port", "since"):
            self.query_one(f"#f-{name}", Field).value = ""
        self.filter_error = None
        self._pages = []
        self.request = EventsRequest()
        self.refresh_data()

    def set_filters(self, *, user: str = "", reason: str = "", port: str = "", since: str = "") -> None:
        """Fill the filter fields (other screens and tests use this)."""
        for name, value in (("user", user), ("reason", reason), ("port", port), ("since", since)):
            self.query_one(f"#f-{name}", Field).value = value
        self._apply_filters()

    # -- pages and rows -------------------------------------------------------------

    def action_older(self) -> None:
        if len(self.events) < PAGE:
            self.notify("No older events.", timeout=2)
            return
        self._pages.append(self.request.before_id)
        self.request = replace(self.request, before_id=self.events[-1].id, page=self.request.page + 1)
        self.refresh_data()

    def action_newer(self) -> None:
        if not self._pages:
            self.notify("This is the newest page.", timeout=2)
            return
        self.request = replace(self.request, before_id=self._pages.pop(), page=self.request.page - 1)
        self.refresh_data()

    def action_open(self) -> None:
        event = self.selected()
        if event is None or not event.message_id:
            return
        from console.screens.message import MessageScreen

        self.app.push_screen(MessageScreen(event.message_id))
