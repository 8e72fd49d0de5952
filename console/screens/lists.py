"""Lists: users, members (and how many unsubscribed or are suppressed), mail still
queued, delivered and refused today; the client settings a user types into a mail
client (and a ready-to-paste block); add, edit, delete, member import from CSV."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from console import format as fmt
from console.screens.base import LiveScreen
from console.widgets.dialogs import ConfirmDialog, PromptDialog, send_to_clipboard
from console.widgets.forms import ListForm
from console.widgets.keyed_table import KeyedTable
from relay.store import Connection, views

COLUMNS = [
    ("name", "List", 16), ("users", "Users", 5), ("members", "Members", 7), ("unsubscribed", "Unsub.", 6),
    ("suppressed", "Suppr.", 6), ("queued", "Queued", 7), ("delivered", "Sent today", 10), ("refused", "Refused", 7),
    ("description", "Description", None),
]


@dataclass(slots=True)
class ListsData:
    rows: list[views.ListRow]
    settings: Any  # relay.client_settings.ClientSettings


def read_client_settings(db: Connection) -> Any:
    from relay.admin.settings import gather_client_settings

    return gather_client_settings(db)


def import_members_file(db: Connection, list_name: str, path: str) -> str:
    """Read, check and import a member file; the one-line outcome."""
    from relay.admin.members import import_members_file as import_file

    result = import_file(db, list_name, Path(path).expanduser())
    return f"List {result.list_name}: {result.added} member(s) added, {result.already} already there."


class TextBox(ModalScreen[None]):
    """A scrollable read-only text (the paste block), with copy."""

    CSS_PATH = "lists.tcss"
    BINDINGS = [
        Binding("c", "copy", "Copy to clipboard", id="textbox.copy"),
        Binding("escape,enter,q", "close", "Close", id="textbox.close"),
    ]

    def __init__(self, title: str, text: str) -> None:
        super().__init__(classes="dialog")
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="textbox"):
            yield Static(Text(fmt.safe(self.title_text), style="bold"))
            yield Static(Text(fmt.clean_lines(self.text)))
            yield Static(Text("c: copy to clipboard · escape: close", style="dim"))

    def on_mount(self) -> None:
        self.query_one("#textbox").focus()

    def action_copy(self) -> None:
        send_to_clipboard(self.app, self.text, "Text", "it stays shown here")

    def action_close(self) -> None:
        self.dismiss(None)


class ListsScreen(LiveScreen):
    TITLE_TEXT = "Lists"
    CSS_PATH = "lists.tcss"
    min_interval = 1.0  # per-list counts walk today's mail: no more than once a second

    BINDINGS = [
        Binding("enter", "users", "Users", tooltip="The selected list's users", id="lists.users"),
        Binding("a", "add", "Add", id="lists.add"),
        Binding("e", "edit", "Edit", id="lists.edit"),
        Binding("d", "delete", "Delete", id="lists.delete"),
        Binding("i", "import_members", "Import CSV", id="lists.import"),
        Binding("y", "copy_settings", "Copy settings", tooltip="Copy the client settings block for mail clients", id="lists.copy"),
        Binding("v", "view_settings", "View block", tooltip="Show the client settings block for mail clients", id="lists.view"),
    ]

    def __init__(self) -> None:
        super().__init__(id="lists")
        self.data: ListsData | None = None

    def compose_body(self) -> ComposeResult:
        yield KeyedTable(COLUMNS, id="lists-table")
        yield Static("Client settings", classes="section-title")
        yield Static("", id="client-settings")

    def on_mount(self) -> None:
        self.query_one(KeyedTable).focus()

    def read(self, db: Connection, now: float) -> ListsData:
        return ListsData(views.list_rows(db, since=fmt.local_midnight(now)), read_client_settings(db))

    def apply(self, data: ListsData, now: float) -> None:
        self.data = data
        self.query_one(KeyedTable).sync([
            (
                str(row.id),
                [
                    fmt.shorten(row.name, 16), str(row.users), fmt.count(row.members), fmt.count(row.unsubscribed),
                    fmt.count(row.suppressed), fmt.count(row.queued),
                    fmt.count(row.delivered_today), fmt.count(row.refused_today), fmt.shorten(row.description, 30),
                ],
            )
            for row in data.rows
        ])
        self.query_one("#client-settings", Static).update(self._settings(data.settings))

    @staticmethod
    def _settings(settings: Any) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        # Plain Text cells: a fingerprint's ":AB:" must not render as an emoji, nor
        # a server name as markup.
        table.add_row("Server", Text(settings.server_name))
        ports = settings.ports_text
        if settings.not_served:
            ports += f"  ({len(settings.not_served)} not served: " + ", ".join(
                f"{p} {why}" for p, why in list(settings.not_served.items())[:2]) + ")"
        table.add_row("Ports", Text(ports))
        table.add_row("Encryption", Text(settings.encryption))
        table.add_row("Certificate", Text(settings.fingerprint_text))
        for n, line in enumerate(settings.relays, 1):  # PostgreSQL: every live relay
            table.add_row(f"Relay {n}", Text(line))
        table.add_row("", Text("y: copy the block for mail clients · v: view it · enter: the list's users", style="dim"))
        return table

    # -- the selected list --------------------------------------------------------------

    def selected(self) -> views.ListRow | None:
        key = self.query_one(KeyedTable).cursor_key
        if key is None or self.data is None:
            return None
        return next((row for row in self.data.rows if str(row.id) == key), None)

    def on_data_table_row_selected(self, event: KeyedTable.RowSelected) -> None:
        event.stop()
        self.action_users()

    # -- actions ------------------------------------------------------------------------

    def action_users(self) -> None:
        row = self.selected()
        if row is None:
            return
        from console.screens.users import UsersScreen

        self.app.push_screen(UsersScreen(list_name=row.name))

    def action_add(self) -> None:
        from relay.store import directory

        def saved(values: dict[str, Any] | None) -> None:
            if values:
                self.console.run_store(
                    directory.create_list, values["name"], values["description"],
                    success=f"List {values['name']} added. Add users with enter, then a.",
                )

        self.app.push_screen(ListForm(), saved)

    def action_edit(self) -> None:
        from relay.store import directory

        row = self.selected()
        if row is None:
            return

        def saved(values: dict[str, Any] | None) -> None:
            if values:
                self.console.run_store(
                    directory.edit_list, row.name, description=values["description"], new_name=values["name"],
                    success=f"List {values['name']} saved.",
                )

        self.app.push_screen(ListForm(row.name, row.description, editing=True), saved)

    def action_delete(self) -> None:
        from relay.store import directory

        row = self.selected()
        if row is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.console.run_store(directory.delete_list, row.name, success=f"List {fmt.safe(row.name)} deleted.")

        self.app.push_screen(
            ConfirmDialog(
                f"Delete list {row.name} with its {row.users} user(s) and {row.members:,} member(s)? "
                "Mail already queued is still delivered."
            ),
            confirmed,
        )

    def action_import_members(self) -> None:
        row = self.selected()
        if row is None:
            return

        def chosen(path: str | None) -> None:
            if path:
                self.console.run_store(import_members_file, row.name, path, done=lambda msg: self.notify(msg))

        self.app.push_screen(
            PromptDialog(
                f"Import members into {row.name} from a CSV file",
                placeholder="/path/to/members.csv",
                hint="A header `address[,name]`, or one address per line. One bad row refuses the file.",
                check=lambda text: None if text.strip() else "give the path of the file",
            ),
            chosen,
        )

    def action_copy_settings(self) -> None:
        if self.data is not None:
            send_to_clipboard(self.app, self.data.settings.block, "Client settings",
                              "v shows them to copy by hand")

    def action_view_settings(self) -> None:
        if self.data is not None:
            self.app.push_screen(TextBox("Client settings (paste into the mail client)", self.data.settings.block))
