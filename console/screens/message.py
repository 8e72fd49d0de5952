"""One message: envelope, recipients, headers, the three priorities and its timeline
(every event, with the next hop's replies)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from console import format as fmt
from console.screens.base import LiveScreen
from console.widgets.dialogs import ConfirmDialog
from relay.priority import shows_as_urgent
from relay.store import Connection, views
from relay.store.queue import MessageRow


def _pairs(rows: list[tuple[str, Any]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, value if isinstance(value, Text) else Text(fmt.safe(value)))
    return table


def priority_block(m: MessageRow) -> Group:
    table = _pairs([
        ("Header", fmt.priority(m.header_priority)),
        ("User", fmt.priority(m.user_priority)),
        ("Effective", fmt.priority(m.priority)),
    ])
    notes: list[Text] = []
    if shows_as_urgent(m.header_priority):
        notes.append(Text(
            f"! Header priority {m.header_priority}: recipients' mail clients show this message as "
            "urgent/important.", style="bold yellow"))
    if m.user_priority < m.header_priority:
        notes.append(Text(
            f"The user's priority {m.user_priority} speeds it through the queue without marking it "
            "urgent for recipients.", style="dim"))
    return Group(table, *notes)


def waiting_reason(state: str, relay: Any) -> Text | None:
    """Why a message that is not sending is waiting, from what the status bar knows
    ("why isn't my message sent?"); None when nothing stops it."""
    if state == "held":
        return Text("held by an operator: h releases it", style="bold yellow")
    if state not in ("queued", "deferred") or relay is None:
        return None
    if not relay.alive:
        return Text("no relay is running: nothing is delivered until one starts", style="bold red")
    if relay.paused:
        return Text("delivery is PAUSED: p on the queue screen (1) resumes it", style="bold red")
    if not relay.next_hop:
        return Text("no next hop is set: smtpplus queue next-hop HOST:PORT", style="bold red")
    return None


def timeline(events: list[Any], now: float) -> Table:
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold", expand=True)
    table.add_column("Time", no_wrap=True)
    table.add_column("Reason", no_wrap=True)
    table.add_column("Detail", overflow="fold", ratio=1)
    for event in events:
        where = f" [{event.client}:{event.port}]" if event.client else ""
        table.add_row(fmt.clock_time(event.at, now), event.reason, Text(fmt.safe(f"{event.detail}{where}")))
    if not events:
        table.add_row("-", "-", "no events recorded")
    return table


class MessageScreen(LiveScreen):
    """Pushed from the queue or the events screen; escape goes back."""

    TITLE_TEXT = "Message"
    CSS_PATH = "message.tcss"

    BINDINGS = [
        Binding("escape", "back", "Back", id="message.back"),
        Binding("h", "hold_release", "Hold/release", id="message.hold"),
        Binding("t", "retry", "Retry now", id="message.retry"),
        Binding("d", "delete", "Delete", id="message.delete"),
    ]

    def __init__(self, message_id: int) -> None:
        super().__init__()
        self.message_id = message_id
        self.detail: views.MessageDetail | None = None
        self.gone = False

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="detail"):
            yield Static("", id="title", classes="section-title")
            yield Static("", id="envelope")
            yield Static("Priorities", classes="section-title")
            yield Static("", id="priorities")
            yield Static("Recipients", classes="section-title")
            yield Static("", id="recipients")
            yield Static("Timeline", classes="section-title")
            yield Static("", id="timeline")
            yield Static("Headers", classes="section-title")
            yield Static("", id="headers")

    def on_mount(self) -> None:
        self.query_one("#detail", VerticalScroll).focus()

    def read(self, db: Connection, now: float) -> views.MessageDetail | None:
        return views.message_detail(db, self.message_id)

    def apply(self, data: views.MessageDetail | None, now: float) -> None:
        self.detail = data
        if data is None:
            self.gone = True
            self.query_one("#title", Static).update(f"Message #{self.message_id} no longer exists (deleted or pruned).")
            return
        m = data.message
        self.query_one("#title", Static).update(Text.assemble(
            ("Message ", "bold"), (m.queue_id, "bold"), f"  {m.state}", f" · attempt {m.attempts}" if m.attempts else "",
        ))
        envelope: list[tuple[str, Any]] = [
            ("State", m.state + (f" (next try in {fmt.age(m.next_attempt_at - now)})" if m.state == "deferred" else "")),
            ("Origin", m.origin + (f" (campaign {m.campaign_id})" if m.campaign_id else "")),
            ("User", f"{m.username or '-'} (list {m.list_name or '-'})"),
            ("MAIL FROM", m.mail_from or "<>"),
            ("From:", data.header_from or "-"),
            ("Subject", m.subject or "-"),
            ("Client", f"{data.client}:{data.port}" if data.client else "-"),
            ("Size", f"{m.size:,} bytes"),
            ("Queued", fmt.full_time(m.created_at) + f" ({fmt.age(now - m.created_at)} ago)"),
            ("Last reply", m.last_reply or "-"),
        ]
        blocked = waiting_reason(m.state, self.last_status.relay if self.last_status else None)
        if blocked is not None:
            envelope.insert(1, ("Waiting", blocked))
        if data.finished_at:
            envelope.append(("Finished", fmt.full_time(data.finished_at)))
        self.query_one("#envelope", Static).update(_pairs(envelope))
        self.query_one("#priorities", Static).update(priority_block(m))
        rcpt = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold", expand=True)
        rcpt.add_column("Address", no_wrap=True)
        rcpt.add_column("State", no_wrap=True)
        rcpt.add_column("Next hop reply", overflow="fold", ratio=1)
        for r in data.recipients:
            rcpt.add_row(Text(fmt.safe(r.address)), r.state, Text(fmt.safe(r.last_reply or "-")))
        if data.recipient_count > len(data.recipients):
            rcpt.add_row(f"… and {data.recipient_count - len(data.recipients):,} more", "", "")
        self.query_one("#recipients", Static).update(rcpt)
        self.query_one("#timeline", Static).update(timeline(data.events, now))
        headers = Text()
        for n, (name, value) in enumerate(data.headers):
            if n:
                headers.append("\n")
            headers.append(f"{fmt.safe(name)}: ", style="bold")
            headers.append(fmt.safe(value))
        self.query_one("#headers", Static).update(headers)

    # -- actions ----------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("hold_release", "retry", "delete"):
            return not self.gone
        return True

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_hold_release(self) -> None:
        from relay.store import queue

        if self.detail is None:
            return
        fn = queue.release if self.detail.message.state == "held" else queue.hold
        self.console.run_store(fn, [f"#{self.message_id}"], done=self._report)

    def action_retry(self) -> None:
        from relay.store import queue

        self.console.run_store(queue.retry, [f"#{self.message_id}"], done=self._report)

    def action_delete(self) -> None:
        from relay.store import queue

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.console.run_store(queue.delete, [f"#{self.message_id}"], done=self._report)

        label = self.detail.message.queue_id if self.detail else f"#{self.message_id}"
        self.app.push_screen(ConfirmDialog(f"Delete message {label}? It will not be delivered."), confirmed)

    def _report(self, results: Any) -> None:
        for result in results or []:
            if result.after is None and result.note:
                self.notify(f"{result.queue_id}: {result.note}", severity="warning", timeout=5)
            else:
                self.notify(f"{result.queue_id}: {result.before} → {result.after or 'deleted'}", timeout=4)
