"""Sender identities (addresses and domains): pending and verified, how and when each
was verified, who lists it. Approve with a reason; send a code to an address and
confirm it; check a domain's DNS TXT record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.widgets import Static

from console import format as fmt
from console.screens.base import LiveScreen
from console.widgets.dialogs import PromptDialog
from console.widgets.keyed_table import KeyedTable
from relay.store import Connection

COLUMNS = [
    ("identity", "Identity", 28), ("kind", "Kind", 7), ("state", "State", 9), ("how", "How", 8),
    ("users", "Users", None),
]
METHODS = {"code": "code", "dns": "DNS", "manual": "manual"}  # one word everywhere: CLI, JSON, console
FILTERS = ("pending", None)  # pending first: that is the work to do


@dataclass(slots=True)
class SendersData:
    filter: str | None
    senders: list[Any]  # relay.store.verification.SenderView


def check_domain_dns(db: Connection, domain: str) -> tuple[str, bool]:
    """Look the domain's TXT record up and record the outcome; (message, verified)."""
    from relay.admin.verification import check_dns

    checked = check_dns(db, domain)
    return checked.result.message, checked.after.verified


def send_code(db: Connection, address: str) -> str:
    """Queue a code mail to ``address``; the code itself never reaches the console."""
    from relay.admin.verification import send_code as queue_code

    sent = queue_code(db, address)
    return f"Code mailed to {sent.identity.value} (queue id {sent.queue_id}); valid until {fmt.full_time(sent.expires_at)}."


class SendersScreen(LiveScreen):
    TITLE_TEXT = "Senders"
    CSS_PATH = "senders.tcss"
    min_interval = 0.5

    BINDINGS = [
        Binding("a", "approve", "Approve", tooltip="Approve the selected identity, with a reason", id="senders.approve"),
        Binding("s", "send_code", "Send code", id="senders.send-code"),
        Binding("c", "confirm_code", "Confirm code", id="senders.confirm-code"),
        Binding("n", "check_dns", "Check DNS", id="senders.check-dns"),
        Binding("f", "toggle_filter", "Pending/all", tooltip="Show pending identities only, or all", id="senders.filter"),
    ]

    def __init__(self) -> None:
        super().__init__(id="senders")
        self.filter: str | None = "pending"
        self.data: SendersData | None = None

    def compose_body(self) -> ComposeResult:
        yield Static("", id="senders-title", classes="section-title")
        yield KeyedTable(COLUMNS, id="senders-table")
        yield Static("", id="sender-detail")

    def on_mount(self) -> None:
        self.query_one(KeyedTable).focus()

    def read(self, db: Connection, now: float) -> SendersData:
        from relay.store.verification import sender_views

        wanted = self.filter
        return SendersData(wanted, sender_views(db, state=wanted))

    def apply(self, data: SendersData, now: float) -> None:
        self.data = data
        if data.filter != self.filter:
            return
        title = "Pending sender identities (f: show all)" if data.filter else "All sender identities (f: pending only)"
        self.query_one("#senders-title", Static).update(f"{title} · {len(data.senders)}")
        self.query_one(KeyedTable).sync([
            (
                view.identity.value,
                [
                    fmt.shorten(view.identity.value, 28), view.identity.kind,
                    Text("verified", style="green") if view.identity.verified else Text("pending", style="yellow"),
                    METHODS.get(view.identity.method or "", "-"),
                    fmt.shorten(", ".join(view.users) or "-", 40),
                ],
            )
            for view in data.senders
        ])
        self._show_detail(now)

    def _show_detail(self, now: float | None = None) -> None:
        view = self.selected()
        detail = self.query_one("#sender-detail", Static)
        if view is None:
            empty = self.data is not None and not self.data.senders
            detail.update("Nothing pending: every identity is verified." if empty and self.filter else "")
            return
        stamp = self.console.clock() if now is None else now
        identity = view.identity
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        if identity.verified:
            how = METHODS.get(identity.method or "", identity.method or "")
            table.add_row("Verified", f"{fmt.full_time(identity.verified_at)} by {how}"
                          + (f" — reason: {fmt.safe(identity.reason)}" if identity.reason else ""))
        else:
            table.add_row("Pending", "mail from it is refused until it is verified")
        if identity.kind == "domain":
            table.add_row("DNS TXT", f"{identity.value}  TXT  \"{identity.txt_record}\"")
        elif view.code is not None:
            table.add_row("Code", f"sent {fmt.clock_time(view.code.sent_at, stamp)}, {view.code.status(stamp)}, "
                                  f"{view.code.attempts_left} tries left")
        table.add_row("Users", Text(fmt.safe(", ".join(view.users) or "-")))
        keys = "a approve" + (" · n check DNS" if identity.kind == "domain" else " · s send code · c confirm code")
        table.add_row("", Text(keys, style="dim"))
        detail.update(table)

    def on_data_table_row_highlighted(self, event: KeyedTable.RowHighlighted) -> None:
        self._show_detail()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Codes are for addresses and DNS for domains: offer only what fits the row."""
        try:
            view = self.selected()
        except NoMatches:  # not composed yet
            view = None
        if view is None:
            return True
        if action in ("send_code", "confirm_code"):
            return view.identity.kind == "address" and not view.identity.verified
        if action == "check_dns":
            return view.identity.kind == "domain" and not view.identity.verified
        if action == "approve":
            return not view.identity.verified
        return True

    def selected(self) -> Any:
        key = self.query_one(KeyedTable).cursor_key
        if key is None or self.data is None:
            return None
        return next((v for v in self.data.senders if v.identity.value == key), None)

    # -- actions ------------------------------------------------------------------

    def action_toggle_filter(self) -> None:
        self.filter = None if self.filter else "pending"
        self.refresh_data()

    def action_approve(self) -> None:
        from relay.admin.verification import approve

        view = self.selected()
        if view is None:
            return
        if view.identity.verified:
            self.notify(f"{view.identity.value} is already verified.", timeout=3)
            return

        def chosen(reason: str | None) -> None:
            if reason:
                self.console.run_store(
                    approve, [view.identity.value], reason.strip(),
                    success=f"{view.identity.value} approved ({reason.strip()}).",
                )

        self.app.push_screen(
            PromptDialog(
                f"Approve {view.identity.value} — why?",
                placeholder="existing account",
                hint="Recorded with the identity. Approve only what you know belongs to this customer.",
                check=lambda text: None if text.strip() else "approval needs a reason (e.g. existing account)",
            ),
            chosen,
        )

    def action_send_code(self) -> None:
        view = self.selected()
        if view is None:
            return
        if view.identity.kind != "address":
            self.notify("Codes go to addresses; for a domain publish its TXT record, then n.", severity="warning")
            return
        self.console.run_store(send_code, view.identity.value, done=lambda message: self.notify(message, timeout=6))

    def action_confirm_code(self) -> None:
        from relay.admin.verification import confirm_code

        view = self.selected()
        if view is None:
            return
        if view.identity.kind != "address":
            self.notify("Codes verify addresses; a domain is verified by its DNS record (n).", severity="warning")
            return

        def report(check: Any) -> None:
            self.notify(check.message, severity="information" if check.ok else "error", timeout=6)

        def chosen(code: str | None) -> None:
            if code:
                self.console.run_store(confirm_code, view.identity.value, code, done=report)

        self.app.push_screen(
            PromptDialog(f"Code mailed to {view.identity.value}", placeholder="1234 5678",
                         check=lambda text: None if text.strip() else "type the code from the mail"),
            chosen,
        )

    def action_check_dns(self) -> None:
        view = self.selected()
        if view is None:
            return
        if view.identity.kind != "domain":
            self.notify("DNS verifies domains; send an address a code (s).", severity="warning")
            return

        def report(outcome: tuple[str, bool]) -> None:
            message, verified = outcome
            self.notify(message, severity="information" if verified else "warning", timeout=8)

        self.notify(f"Looking up the TXT record of {view.identity.value}…", timeout=2)
        self.console.run_store(check_domain_dns, view.identity.value, done=report)
