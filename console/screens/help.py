"""Help (F1 or ?): every key of every screen, generated from the bindings themselves
so it can never fall behind."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

CLOSE_KEYS = "esc, F1, ? or q closes this help"
INTRO = (
    "smtpplus console — keyboard first. Every action is also in the command palette "
    "(ctrl+p). Tables: ↑/↓ or j/k move, pgup/pgdn page, enter opens. Forms: enter moves "
    "to the next field, ctrl+s saves. At 80 columns the footer shows the main keys; "
    "all of them are here."
)


def sections(app: Any = None) -> list[tuple[str, list[Any]]]:
    """(title, bindings) for the app and each screen and dialog, in reading order
    (with the demo's keys when ``app`` is the demo)."""
    from console.app import ConsoleApp
    from console.screens.events import EventsScreen
    from console.screens.lists import ListsScreen
    from console.screens.message import MessageScreen
    from console.screens.queue import QueueScreen
    from console.screens.senders import SendersScreen
    from console.screens.users import UsersScreen
    from console.widgets.dialogs import ConfirmDialog, PasswordOnce, PromptDialog
    from console.widgets.forms import Form
    from console.widgets.keyed_table import KeyedTable

    out: list[tuple[str, list[Any]]] = [
        ("Everywhere", list(ConsoleApp.BINDINGS)),
        ("Queue (1)", list(QueueScreen.BINDINGS)),
        ("Message detail", list(MessageScreen.BINDINGS)),
        ("Lists (2)", list(ListsScreen.BINDINGS)),
        ("Users (3)", list(UsersScreen.BINDINGS)),
        ("Senders (4)", list(SendersScreen.BINDINGS)),
        ("Events (5)", list(EventsScreen.BINDINGS)),
        ("Forms", list(Form.BINDINGS)),
        ("Dialogs", [*ConfirmDialog.BINDINGS, *PromptDialog.BINDINGS, *PasswordOnce.BINDINGS]),
        ("Tables", list(KeyedTable.BINDINGS)),
    ]
    demo = _demo_bindings(app)
    if demo:
        out.insert(1, ("Demo", demo))
    return [(title, [b for b in bindings if isinstance(b, Binding)]) for title, bindings in out]


def _demo_bindings(app: Any) -> list[Any]:
    return list(getattr(type(app), "DEMO_BINDINGS", []))


def key_label(binding: Binding) -> str:
    if binding.key_display:
        return binding.key_display
    names = {"question_mark": "?", "left_square_bracket": "[", "right_square_bracket": "]",
             "greater_than_sign": ">", "less_than_sign": "<", "slash": "/", "space": "space"}
    return "/".join(names.get(k.strip(), k.strip()) for k in binding.key.split(","))


def help_renderable(app: Any = None) -> Group:
    parts: list[Any] = [Text(f"Help · {CLOSE_KEYS}", style="bold"), Text(INTRO, style="dim")]
    for title, bindings in sections(app):
        table = Table(title=title, title_justify="left", title_style="bold", box=None, padding=(0, 2),
                      show_header=False, expand=False)
        table.add_column(no_wrap=True, min_width=12, style="bold")
        table.add_column()
        for binding in bindings:
            if binding.description:
                table.add_row(key_label(binding), binding.tooltip or binding.description)
        parts.append(Text(""))
        parts.append(table)
    return Group(*parts)


class HelpScreen(ModalScreen[None]):
    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,f1,question_mark,q", "close", "Close help", id="help.close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help") as box:
            box.border_title = "Help"
            box.border_subtitle = CLOSE_KEYS
            yield Static(help_renderable(self.app))

    def on_mount(self) -> None:
        self.query_one("#help", VerticalScroll).focus()

    def action_close(self) -> None:
        self.dismiss(None)
