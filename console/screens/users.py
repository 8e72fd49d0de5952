"""Relay users (of one list, or all): add, edit, delete, reset password (shown once),
activate and deactivate; each identity's verification state and the help page's
nudges ("remember to activate", what priority 1 means)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from console import format as fmt
from console.screens.base import LiveScreen
from console.widgets.dialogs import ConfirmDialog, PasswordOnce
from console.widgets.forms import PRIORITY_ONE_NOTE, UserForm, identity_states
from console.widgets.keyed_table import KeyedTable
from relay.admin.users import NudgeWords
from relay.admin.users import nudges as user_nudges
from relay.store import Connection
from relay.store.directory import UserInfo

COLUMNS = [
    ("user", "Username", 16), ("list", "List", 12), ("active", "Active", 6), ("p", "P", 1),
    ("ids", "Verified", 8), ("hint", "Attention", 10), ("note", "Note", None),
]


class OneTimeSecret:
    """Carries a new password from the worker to the password box exactly once."""

    __slots__ = ("username", "_value")

    def __init__(self, username: str, value: str) -> None:
        self.username = username
        self._value: str | None = value

    def take(self) -> str:
        value, self._value = self._value, None
        return value or ""


def add_user(db: Connection, values: dict[str, Any]) -> OneTimeSecret:
    from relay.admin import users as user_admin

    made = user_admin.create_user(
        db,
        list_name=values["list"],
        username=values.get("username"),
        priority=values["priority"],
        note=values["note"],
        domains=values["domains"],
        senders=values["senders"],
    )
    return OneTimeSecret(made.username, made.password)


def reset_password(db: Connection, username: str) -> OneTimeSecret:
    from relay.admin import users as user_admin

    made = user_admin.reset_password(db, username)
    return OneTimeSecret(made.username, made.password)


def attention(user: UserInfo) -> Text:
    """The table's one-word nudge."""
    if user.needs_activation:
        return Text("activate!", style="bold yellow")
    if not user.identities:
        return Text("no senders", style="yellow")
    pending = sum(1 for i in user.identities if not i.verified)
    if pending:
        return Text(f"{pending} pending", style="yellow")
    return Text("")


# The console's words for relay.admin.users.nudges: its keys and screens as next steps.
NUDGE_WORDS = NudgeWords(
    activate="Every identity of {user} is verified — remember to activate it (t).",
    no_identities="{user} has no authorized domains or senders, so it cannot send as anyone — edit it (e) to add some.",
    pending="Awaiting verification: {pending} — mail from these is refused until they are verified (Senders screen, 4).",
    priority_one=PRIORITY_ONE_NOTE,
)
NUDGE_STYLES = {"activate": "bold yellow", "no-identities": "yellow", "pending": "yellow", "priority-one": "dim"}


def nudges(user: UserInfo) -> list[Text]:
    return [Text(n.text, style=NUDGE_STYLES[n.kind]) for n in user_nudges(user, NUDGE_WORDS)]


@dataclass(slots=True)
class UsersData:
    users: list[UserInfo]
    lists: list[str] = field(default_factory=list)
    missing_list: bool = False


class UsersScreen(LiveScreen):
    TITLE_TEXT = "Users"
    CSS_PATH = "users.tcss"
    min_interval = 0.5

    BINDINGS = [
        Binding("a", "add", "Add", id="users.add"),
        Binding("e", "edit", "Edit", id="users.edit"),
        Binding("t", "toggle_active", "(De)activate", tooltip="Activate or deactivate the selected user", id="users.toggle-active"),
        Binding("r", "reset_password", "New password", tooltip="Reset the password (the new one is shown once)", id="users.reset-password"),
        Binding("d", "delete", "Delete", tooltip="Delete the user (asks first; queued mail is still delivered)", id="users.delete"),
        Binding("escape", "back", "Back", show=False, id="users.back"),
    ]

    def __init__(self, list_name: str | None = None) -> None:
        super().__init__(id=None if list_name else "users")
        self.list_name = list_name
        self.data: UsersData | None = None

    def compose_body(self) -> ComposeResult:
        title = f"Users of list {fmt.safe(self.list_name)}" if self.list_name else "Users of every list"
        yield Static(title, id="users-title", classes="section-title")
        yield KeyedTable(COLUMNS, id="users-table")
        yield Static("", id="user-detail")

    def on_mount(self) -> None:
        self.query_one(KeyedTable).focus()

    def read(self, db: Connection, now: float) -> UsersData:
        from relay.store import directory
        from relay.store.errors import NotFound

        lists = [info.name for info in directory.all_lists(db)]
        try:
            users = directory.all_users(db, self.list_name)
        except NotFound:
            return UsersData([], lists, missing_list=True)
        return UsersData(users, lists)

    def apply(self, data: UsersData, now: float) -> None:
        self.data = data
        if data.missing_list:
            self.query_one("#users-title", Static).update(Text(f"List {fmt.safe(self.list_name)} no longer exists."))
        self.query_one(KeyedTable).sync([
            (
                user.username,
                [
                    fmt.shorten(user.username, 16), fmt.shorten(user.list_name, 12),
                    Text("yes", style="green") if user.active else Text("no", style="dim"),
                    str(user.priority),
                    f"{sum(1 for i in user.identities if i.verified)}/{len(user.identities)}",
                    attention(user), fmt.shorten(user.note, 30),
                ],
            )
            for user in data.users
        ])
        self._show_detail()

    def _show_detail(self) -> None:
        user = self.selected()
        detail = self.query_one("#user-detail", Static)
        if user is None:
            detail.update(Text("No users yet — press a to add one." if self.data and not self.data.users else ""))
            return
        heading = Text.assemble(
            (fmt.safe(user.username), "bold"), f" · list {fmt.safe(user.list_name)} · priority {fmt.priority(user.priority)}")
        if user.note:
            heading.append(f" · {fmt.safe(user.note)}", style="italic")
        parts: list[Any] = [heading, identity_states(user) if user.identities else Text("no authorized domains or senders")]
        parts.extend(nudges(user))
        detail.update(Group(*parts))

    def on_data_table_row_highlighted(self, event: KeyedTable.RowHighlighted) -> None:
        self._show_detail()

    def on_data_table_row_selected(self, event: KeyedTable.RowSelected) -> None:
        event.stop()
        self.action_edit()

    def selected(self) -> UserInfo | None:
        key = self.query_one(KeyedTable).cursor_key
        if key is None or self.data is None:
            return None
        return next((u for u in self.data.users if u.username == key), None)

    # -- actions ------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":
            return len(self.app.screen_stack) > 1
        return True

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def action_add(self) -> None:
        lists = self.data.lists if self.data else []
        if not lists:
            self.notify("Add a list first (Lists screen: 2, then a).", severity="warning")
            return

        def saved(values: dict[str, Any] | None) -> None:
            if values:
                self.console.run_store(add_user, values, done=self._show_password)

        self.app.push_screen(UserForm(lists, default_list=self.list_name), saved)

    def _show_password(self, secret: OneTimeSecret) -> None:
        self.app.push_screen(PasswordOnce(secret.username, secret.take(), reason="password"))
        self.notify(f"User {secret.username} added (inactive until you activate it with t).", timeout=5)

    def action_edit(self) -> None:
        from relay.store import directory

        user = self.selected()
        if user is None or self.data is None:
            return

        def saved(values: dict[str, Any] | None) -> None:
            if values:
                self.console.run_store(
                    directory.edit_user, user.username, priority=values["priority"], note=values["note"],
                    domains=values["domains"], senders=values["senders"], success=f"User {user.username} saved.",
                )

        self.app.push_screen(UserForm(self.data.lists, user=user), saved)

    def action_toggle_active(self) -> None:
        from relay.admin import users as user_admin

        user = self.selected()
        if user is None:
            return
        if user.active:
            message = f"{user.username} deactivated: its logins are refused from now on."
        else:
            pending = user_admin.pending_identities(user)
            message = f"{user.username} activated."
            if pending:
                message += f" Mail from {', '.join(pending)} is still refused until verified."
        self.console.run_store(user_admin.set_active, user.username, not user.active, success=message)

    def action_reset_password(self) -> None:
        user = self.selected()
        if user is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.console.run_store(reset_password, user.username, done=self._show_reset)

        self.app.push_screen(
            ConfirmDialog(f"Reset the password of {user.username}? The current one stops working at once.",
                          yes="Reset"),
            confirmed,
        )

    def _show_reset(self, secret: OneTimeSecret) -> None:
        self.app.push_screen(PasswordOnce(secret.username, secret.take(), reason="new password"))

    def action_delete(self) -> None:
        from relay.store import directory

        user = self.selected()
        if user is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.console.run_store(directory.delete_user, user.username, success=f"User {user.username} deleted.")

        self.app.push_screen(
            ConfirmDialog(f"Delete relay user {user.username}? Mail it already queued is still delivered."),
            confirmed,
        )
