"""The live queue: lanes per priority, the delivery rate, the next messages in
dispatch order, in flight, deferred, held, campaigns, and destinations (MX delivery:
mail per recipient domain, in flight, last reply, backing off).

Each refresh reads the lane aggregates (the dispatch index) and one page of the view
being looked at; campaign progress is re-counted at most every two seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import ContentSwitcher, Static, Tab, Tabs

from console import format as fmt
from console.screens.base import LiveScreen
from console.widgets.dialogs import ConfirmDialog, PromptDialog
from console.widgets.keyed_table import KeyedTable
from console.widgets.lanes import PriorityLanes
from relay.store import Connection, views
from relay.store.queue import DeliverySettings, MessageRow, list_messages
from relay.store.routing import DestinationRow, destination_rows

PAGE = 50
CAMPAIGN_RECOUNT = 2.0  # seconds between campaign progress counts

#: (id, tab label, message state or None for campaigns and destinations)
VIEWS: list[tuple[str, str, str | None]] = [
    ("next", "Next to send", "queued"),
    ("sending", "In flight", "sending"),
    ("deferred", "Deferred", "deferred"),
    ("held", "Held", "held"),
    ("destinations", "Destinations", None),
    ("campaigns", "Campaigns", None),
]
STATE_OF = {view: state for view, _, state in VIEWS}

Columns = list[tuple[str, str, int | None]]

MESSAGE_COLUMNS: dict[str, Columns] = {
    "next": [("p", "P", 1), ("qid", "Queue ID", 12), ("wait", "Waiting", 8), ("from", "From", 22),
             ("rcpt", "Rcpt", 4), ("subject", "Subject", None)],
    "sending": [("p", "P", 1), ("qid", "Queue ID", 12), ("wait", "Waiting", 8), ("from", "From", 22),
                ("rcpt", "Rcpt", 4), ("try", "Attempt", 7)],
    "deferred": [("p", "P", 2), ("qid", "Queue ID", 12), ("try", "Tries", 5), ("next", "Next try", 8),
                 ("reply", "Last reply", None)],
    "held": [("p", "P", 1), ("qid", "Queue ID", 12), ("wait", "Waiting", 8), ("from", "From", 22),
             ("rcpt", "Rcpt", 4), ("subject", "Subject", None)],
}
DESTINATION_COLUMNS: Columns = [("dest", "Destination", 32), ("queued", "Queued", 7), ("flight", "In flight", 9),
                       ("backoff", "Backing off", 11), ("reply", "Last reply", None)]
CAMPAIGN_COLUMNS: Columns = [("id", "#", 2), ("list", "List", 10), ("subject", "Subject", 12), ("p", "P", 1),
                    ("state", "State", 24), ("progress", "Progress", None)]


@dataclass(frozen=True, slots=True)
class QueueRequest:
    view: str = "next"
    after: tuple[int, int] | None = None  # dispatch key of the previous page's last row
    page: int = 0


@dataclass(slots=True)
class QueueData:
    request: QueueRequest
    lanes: list[views.Lane]
    rate: float
    starvation_share: float = 0.0
    settings: DeliverySettings = field(default_factory=DeliverySettings)
    rows: list[MessageRow] = field(default_factory=list)
    campaigns: list[views.CampaignRow] = field(default_factory=list)
    destinations: list[DestinationRow] = field(default_factory=list)


class QueueScreen(LiveScreen):
    """Opens first: the live sending queue."""

    TITLE_TEXT = "Queue"
    CSS_PATH = "queue.tcss"

    BINDINGS = [
        # One key, two bindings: the footer and the palette name what p will do now.
        Binding("p", "pause", "Pause", tooltip="Pause all delivery (deliveries under way finish)", id="queue.pause"),
        Binding("p", "resume", "Resume", tooltip="Resume delivery (when paused)", id="queue.resume"),
        Binding("r", "set_rate", "Rate", tooltip="Set the shared delivery rate (messages per second)", id="queue.rate"),
        Binding("o", "set_parallel", "Parallel", show=False, tooltip="Set the parallel next-hop connections (1-256)", id="queue.parallel"),
        Binding("n", "set_next_hop", "Next hop", show=False, tooltip="Set the next hop (HOST:PORT) and its STARTTLS mode", id="queue.next-hop"),
        Binding("s", "set_starvation_share", "Starvation share", show=False, tooltip="Set the anti-starvation share: the fraction of dispatches given to the oldest lower-priority message (0 = off, at most 0.5)", id="queue.starvation-share"),
        Binding("right_square_bracket", "next_view", "View", key_display="]", tooltip="Next view: next to send, in flight, deferred, held, destinations, campaigns", id="queue.next-view"),
        Binding("left_square_bracket", "previous_view", "Prev view", key_display="[", show=False, tooltip="Previous view", id="queue.previous-view"),
        Binding("greater_than_sign", "next_page", "Next page", key_display=">", show=False, id="queue.next-page"),
        Binding("less_than_sign", "previous_page", "Previous page", key_display="<", show=False, id="queue.previous-page"),
        Binding("enter", "open", "Details", show=False, tooltip="Open the selected message: envelope, headers, priorities, timeline", id="queue.open"),
        Binding("h", "hold_release", "Hold", tooltip="Hold the selected message, or release it when held", id="queue.hold"),
        Binding("t", "retry", "Retry", tooltip="Retry the selected message now", id="queue.retry"),
        Binding("d", "delete", "Delete", tooltip="Delete the selected message (asks first)", id="queue.delete"),
        Binding("space", "campaign_toggle", "Pause/resume campaign", show=False, id="queue.campaign-toggle"),
        Binding("x", "campaign_cancel", "Cancel campaign", show=False, id="queue.campaign-cancel"),
        Binding("c", "campaign_new", "Campaign", tooltip="New campaign to every member of a list", id="queue.campaign-new"),
    ]

    def __init__(self) -> None:
        super().__init__(id="queue")
        self.request = QueueRequest()
        self._pages: dict[str, list[tuple[int, int] | None]] = {view: [] for view, _, _ in VIEWS}
        self._campaign_cache: tuple[float, list[views.CampaignRow]] | None = None
        self.data: QueueData | None = None
        self._footer_paused = False

    # -- layout ---------------------------------------------------------------

    def compose_body(self) -> ComposeResult:
        yield PriorityLanes(id="lanes")
        yield Static("", id="summary")
        yield Tabs(*(Tab(label, id=f"tab-{view}") for view, label, _ in VIEWS), id="views")
        yield Static("", id="page-info")
        with ContentSwitcher(initial="table-next", id="tables"):
            for view, _, state in VIEWS:
                columns = (
                    DESTINATION_COLUMNS if view == "destinations"
                    else CAMPAIGN_COLUMNS if state is None else MESSAGE_COLUMNS[view]
                )
                yield KeyedTable(columns, id=f"table-{view}")

    def on_mount(self) -> None:
        self.query_one(Tabs).can_focus = False
        self.table().focus()

    def table(self, view: str | None = None) -> KeyedTable:
        return self.query_one(f"#table-{view or self.request.view}", KeyedTable)

    # -- reading (watcher thread) -----------------------------------------------

    def read(self, db: Connection, now: float) -> QueueData:
        request = self.request
        from relay.store.queue import delivery_settings

        settings = delivery_settings(db)
        data = QueueData(request, views.priority_lanes(db), views.delivery_rate(db, now=now),
                         starvation_share=settings.starvation_share, settings=settings)
        state = STATE_OF[request.view]
        if state is not None:
            data.rows = list_messages(db, state=state, after=request.after, limit=PAGE)
        data.campaigns = self._campaigns(db, force=request.view == "campaigns")
        if request.view == "destinations":
            data.destinations = destination_rows(db, limit=PAGE)
        return data

    def _campaigns(self, db: Connection, *, force: bool) -> list[views.CampaignRow]:
        # Progress counts walk a campaign's messages: do it at most every 2 s.
        stamp = time.monotonic()
        cached = self._campaign_cache
        if cached is None or stamp - cached[0] >= CAMPAIGN_RECOUNT or (force and stamp - cached[0] >= 0.5):
            cached = (stamp, views.campaign_rows(db, limit=PAGE))
            self._campaign_cache = cached
        return cached[1]

    # -- applying (UI thread) ----------------------------------------------------

    def apply(self, data: QueueData, now: float) -> None:
        self.data = data
        if self.paused != self._footer_paused:
            self._footer_paused = self.paused
            self.refresh_bindings()  # p now pauses, or resumes
        self.query_one(PriorityLanes).show(data.lanes, now)
        self.query_one("#summary", Static).update(self._summary(data, now))
        if data.request != self.request:
            # The operator moved on while this was read. Ask for the current request
            # here rather than trust that a poke is still pending: the table must not
            # wait for a tick (or forever, on a static store) to show the new view.
            self.refresh_data()
            return
        view = data.request.view
        if view == "destinations":
            self.table(view).sync([(d.domain or "-", self._destination_cells(d, now)) for d in data.destinations])
        elif STATE_OF[view] is None:
            self.table(view).sync([(str(c.id), self._campaign_cells(c, now)) for c in data.campaigns])
        else:
            self.table(view).sync([(str(r.id), self._message_cells(view, r, now)) for r in data.rows])
        self.query_one("#page-info", Static).update(self._page_info(data, now))

    def _summary(self, data: QueueData, now: float) -> Text:
        """Two lines: delivery state, rate and backlog; then the campaigns under way."""
        text = Text(no_wrap=True, overflow="ellipsis")
        relay = self.last_status.relay if self.last_status else None
        paused = bool(relay and relay.paused)
        text.append("Delivery ")
        text.append("PAUSED" if paused else "on", style="bold red" if paused else "bold green")
        text.append(f" · sent {data.rate:.1f}/s over 10 s")
        if relay and relay.rate:
            text.append(f" (limit {fmt.rate(float(relay.rate))})")
        text.append(f" · parallel {data.settings.parallel}")
        waiting = sum(lane.waiting for lane in data.lanes)
        text.append(f" · waiting {fmt.count(waiting)}")
        active = [c for c in data.campaigns if c.state in ("sending", "paused", "scheduled")]
        text.append("\n")
        if data.starvation_share:
            # Explains why a lower-priority message sometimes goes before priority 1.
            text.append(f"Anti-starvation {data.starvation_share:g}", style="bold")
            text.append(" · " if active else "")
        if not active and not data.starvation_share:
            text.append("No campaign under way.", style="dim")
        for n, campaign in enumerate(active[:3]):
            text.append(" · " if n else "")
            text.append(f"Campaign {campaign.id} ")
            text.append(campaign.state_label, style="bold yellow" if campaign.paused_by_priority else "bold")
            if campaign.state == "scheduled":
                text.append(f" in {fmt.age(campaign.scheduled_at - now)}")
            elif campaign.progress is not None:
                text.append(f" {campaign.progress:.0%}")
        return text

    def _page_info(self, data: QueueData, now: float) -> str:
        view = data.request.view
        state = STATE_OF[view]
        if view == "destinations":
            backing_off = sum(d.backing_off(now) for d in data.destinations)
            return (f"{len(data.destinations)} destination(s), busiest first · {backing_off} backing off"
                    if data.destinations else "Destinations: none (MX delivery shows each recipient domain here)")
        if state is None:
            return f"{len(data.campaigns)} campaign(s) · space pause/resume · x cancel · c new"
        total = sum(getattr(lane, state) for lane in data.lanes)
        first = data.request.page * PAGE + 1
        last = first + len(data.rows) - 1
        if not data.rows:
            label = next(title for name, title, _ in VIEWS if name == view)
            return f"{fmt.count(total)} {view}" if total else f"{label}: none"
        order = "dispatch order" if view in ("next", "held") else "priority order"
        return f"{first:,}–{last:,} of {fmt.count(total)} · {order} · > next page · < previous"

    @staticmethod
    def _message_cells(view: str, row: MessageRow, now: float) -> list[Any]:
        urgent = row.header_priority == 1
        p = Text(str(row.priority), style="bold red" if row.priority == 1 else "")
        if view == "deferred":
            return [
                p, row.queue_id, str(row.attempts), fmt.age(row.next_attempt_at - now),
                fmt.shorten(row.last_reply, 40),
            ]
        cells: list[Any] = [p, row.queue_id, fmt.age(now - row.created_at), fmt.shorten(row.mail_from, 22),
                            str(row.recipients)]
        if view == "sending":
            cells.append(str(row.attempts + 1))
        else:
            subject = fmt.shorten(row.subject, 28)
            cells.append(Text("! " + subject, style="bold") if urgent else subject)
        return cells

    @staticmethod
    def _destination_cells(d: DestinationRow, now: float) -> list[Any]:
        backoff = fmt.age(d.backoff_until - now) if d.backing_off(now) and d.backoff_until else "-"
        name = d.domain or "-"
        return [
            fmt.shorten(f"{name} → {d.route}" if d.route else name, 32), fmt.count(d.queued), str(d.in_flight),
            Text(backoff, style="bold yellow") if backoff != "-" else backoff, fmt.shorten(d.last_reply or "", 40),
        ]

    @staticmethod
    def _campaign_cells(c: views.CampaignRow, now: float) -> list[Any]:
        if c.state == "scheduled":
            progress = f"starts in {fmt.age(c.scheduled_at - now)}" if c.scheduled_at > now else "starting"
        elif c.progress is None:
            progress = "-"
        else:
            progress = f"{c.progress:>4.0%} {c.finished:,}/{(c.total or 0):,}"
        state = Text(c.state_label, style="bold yellow" if c.paused_by_priority else "")
        return [str(c.id), fmt.shorten(c.list_name, 10), fmt.shorten(c.subject, 12), str(c.priority), state, progress]

    # -- views and pages ----------------------------------------------------------

    def _switch(self, view: str, *, after: tuple[int, int] | None = None, page: int = 0) -> None:
        self.request = QueueRequest(view=view, after=after, page=page)
        self.query_one(Tabs).active = f"tab-{view}"
        self.query_one(ContentSwitcher).current = f"table-{view}"
        self.table(view).focus()
        self.refresh_bindings()
        self.refresh_data()

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        if event.tab.id != self.query_one(Tabs).active:
            # Stale: _switch has moved the tabs on since (keys pressed quickly). Following
            # it would switch back, post another, and ping-pong between views forever.
            return
        view = (event.tab.id or "tab-next").removeprefix("tab-")
        if view != self.request.view:
            self._pages[view] = []
            self._switch(view)

    def action_next_view(self) -> None:
        names = [v for v, _, _ in VIEWS]
        self._switch(names[(names.index(self.request.view) + 1) % len(names)])

    def action_previous_view(self) -> None:
        names = [v for v, _, _ in VIEWS]
        self._switch(names[(names.index(self.request.view) - 1) % len(names)])

    def action_next_page(self) -> None:
        data = self.data
        if data is None or data.request != self.request or len(data.rows) < PAGE:
            self.notify("This is the last page.", timeout=2)
            return
        self._pages[self.request.view].append(self.request.after)
        self._switch(self.request.view, after=data.rows[-1].dispatch_key, page=self.request.page + 1)

    def action_previous_page(self) -> None:
        stack = self._pages[self.request.view]
        if not stack:
            self.notify("This is the first page.", timeout=2)
            return
        self._switch(self.request.view, after=stack.pop(), page=self.request.page - 1)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pause", "resume"):
            return self.paused == (action == "resume")
        on_campaigns = self.request.view == "campaigns"
        if action in ("campaign_toggle", "campaign_cancel"):
            return on_campaigns
        if action in ("hold_release", "retry", "delete", "open", "next_page", "previous_page"):
            return STATE_OF.get(self.request.view) is not None
        return True

    # -- the selected row -----------------------------------------------------------

    def selected_message(self) -> MessageRow | None:
        key = self.table().cursor_key
        if key is None or self.data is None:
            return None
        return next((r for r in self.data.rows if str(r.id) == key), None)

    def selected_campaign(self) -> views.CampaignRow | None:
        key = self.table().cursor_key
        if key is None or self.data is None:
            return None
        return next((c for c in self.data.campaigns if str(c.id) == key), None)

    def on_data_table_row_selected(self, event: KeyedTable.RowSelected) -> None:
        event.stop()
        if STATE_OF.get(self.request.view) is not None:
            self.action_open()

    # -- actions --------------------------------------------------------------

    def action_open(self) -> None:
        row = self.selected_message()
        if row is None:
            return
        from console.screens.message import MessageScreen

        self.app.push_screen(MessageScreen(row.id))

    @property
    def paused(self) -> bool:
        return bool(self.last_status and self.last_status.relay.paused)

    def action_pause(self) -> None:
        from relay.store import queue

        self.console.run_store(queue.set_paused, True, success="Delivery paused: deliveries under way finish.")

    def action_resume(self) -> None:
        from relay.store import queue

        self.console.run_store(queue.set_paused, False, success="Delivery resumed.")

    def action_set_rate(self) -> None:
        from relay.store import queue

        current = self.last_status.relay.rate if self.last_status else None

        def check(text: str) -> str | None:
            try:
                value = float(text)
            except ValueError:
                return "a number of messages per second (0 = unlimited)"
            return None if value >= 0 else "the rate cannot be negative"

        def chosen(answer: str | None) -> None:
            if answer is not None:
                self.console.run_store(queue.set_rate, float(answer), success=f"Rate set to {fmt.rate(float(answer))}.")

        self.app.push_screen(
            PromptDialog(
                "Delivery rate (messages per second, 0 = unlimited)",
                value="" if current is None else f"{float(current):g}",
                check=check,
            ),
            chosen,
        )

    def action_set_parallel(self) -> None:
        from relay.store import queue
        from relay.store.errors import InvalidInput

        current = self.data.settings.parallel if self.data else queue.DEFAULT_PARALLEL

        def check(text: str) -> str | None:
            try:
                queue.parse_parallel(text)
            except InvalidInput as exc:
                return str(exc)
            return None

        def chosen(answer: str | None) -> None:
            if answer is not None:
                value = queue.parse_parallel(answer)
                self.console.run_store(queue.set_parallel, value, success=f"Parallel connections: {value}.")

        self.app.push_screen(
            PromptDialog(
                f"Parallel next-hop connections (1 to {queue.MAX_PARALLEL})",
                value=str(current),
                hint="How many connections to the next hop deliver at once (the rate limit still applies).",
                check=check,
            ),
            chosen,
        )

    def action_set_next_hop(self) -> None:
        from console.widgets.forms import NextHopForm
        from relay.store import queue

        settings = self.data.settings if self.data else DeliverySettings()

        def chosen(values: dict[str, Any] | None) -> None:
            if values:
                self.console.run_store(
                    queue.set_next_hop, values["hop"], tls=values["tls"],
                    done=lambda hop: self.notify(f"Next hop: {hop} (STARTTLS {values['tls']}).", timeout=5),
                )

        self.app.push_screen(NextHopForm(settings.next_hop, settings.next_hop_tls), chosen)

    def action_set_starvation_share(self) -> None:
        from relay.store import queue
        from relay.store.errors import InvalidInput

        current = self.data.starvation_share if self.data else 0.0

        def check(text: str) -> str | None:
            try:
                queue.parse_starvation_share(text)
            except InvalidInput as exc:
                return str(exc)
            return None

        def chosen(answer: str | None) -> None:
            if answer is not None:
                self.console.run_store(
                    queue.set_starvation_share, answer,
                    done=lambda value: self.notify(
                        f"Starvation share: {queue.describe_starvation_share(value)}.", timeout=5),
                )

        self.app.push_screen(
            PromptDialog(
                f"Anti-starvation share (0 = off, at most {queue.MAX_STARVATION_SHARE:g})",
                value=f"{current:g}",
                hint="The fraction of dispatches given to the oldest lower-priority message, "
                     "so a long priority-1 stream cannot starve the rest. 0.05 = 1 in 20.",
                check=check,
            ),
            chosen,
        )

    def action_hold_release(self) -> None:
        from relay.store import queue

        row = self.selected_message()
        if row is None:
            return
        if row.state == "held":
            self.console.run_store(queue.release, [f"#{row.id}"], done=self._report, success=None)
        else:
            self.console.run_store(queue.hold, [f"#{row.id}"], done=self._report, success=None)

    def action_retry(self) -> None:
        from relay.store import queue

        row = self.selected_message()
        if row is not None:
            self.console.run_store(queue.retry, [f"#{row.id}"], done=self._report)

    def action_delete(self) -> None:
        from relay.store import queue

        row = self.selected_message()
        if row is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.console.run_store(queue.delete, [f"#{row.id}"], done=self._report)

        self.app.push_screen(
            ConfirmDialog(f"Delete message {row.queue_id} ({row.recipients} recipient(s))? It will not be delivered."),
            confirmed,
        )

    def _report(self, results: Any) -> None:
        for result in results or []:
            if result.after is None and result.note:
                self.notify(f"{result.queue_id}: {result.note}", severity="warning", timeout=5)
            else:
                self.notify(f"{result.queue_id}: {result.before} → {result.after or 'deleted'}", timeout=4)

    def action_campaign_toggle(self) -> None:
        from relay.store import campaigns

        campaign = self.selected_campaign()
        if campaign is None:
            return
        if campaign.state == "paused" and not campaign.paused_by_priority:
            self.console.run_store(campaigns.resume_campaign, campaign.id, done=self._recount,
                                   success=f"Campaign {campaign.id} resumed.")
        else:
            self.console.run_store(campaigns.pause_campaign, campaign.id, done=self._recount,
                                   success=f"Campaign {campaign.id} paused.")

    def _recount(self, _: Any = None) -> None:
        """A campaign changed: count its progress on the next read, not in 2 s."""
        self._campaign_cache = None

    def action_campaign_cancel(self) -> None:
        from relay.store import campaigns

        campaign = self.selected_campaign()
        if campaign is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.console.run_store(
                    campaigns.cancel_campaign, campaign.id, done=self._recount,
                    success=f"Campaign {campaign.id} cancelled.",
                )

        self.app.push_screen(
            ConfirmDialog(f"Cancel campaign {campaign.id} ({campaign.subject!r})? Its unsent messages are dropped."),
            confirmed,
        )

    def action_campaign_new(self) -> None:
        from console.widgets.campaign_form import CampaignForm
        from relay.store import directory

        def show_form(lists: list[Any]) -> None:
            names = [info.name for info in lists if info.members]
            if not names:
                self.notify("No list has members yet: import some on the Lists screen (2, then i).",
                            severity="warning", timeout=6)
                return
            self.app.push_screen(CampaignForm(names, now=self.console.clock()), self._create_campaign)

        self.console.run_store(directory.all_lists, done=show_form)

    def _create_campaign(self, values: dict[str, Any] | None) -> None:
        if not values:
            return
        from relay.admin import campaigns

        template = campaign_template(values["subject"], values["sender"], values["body"])

        def created(info: Any) -> None:
            self._recount()
            self.notify(f"Campaign {info.id} to {info.list_name} ({info.total} members) scheduled.", timeout=5)
            self._switch("campaigns")

        self.console.run_store(
            campaigns.create_campaign, values["list"], subject=values["subject"], template=template,
            mail_from=values["sender"], scheduled_at=values["scheduled_at"], priority=values["priority"],
            done=created,
        )


def campaign_template(subject: str, sender: str, body: str) -> bytes:
    """The campaign's message without ``To:`` (added per member by the relay)."""
    from relay.campaigns import build_template

    template, _, _ = build_template(subject=subject, mail_from=sender, body=body or " ")
    return template
