"""Modal dialogs: confirm, a one-line prompt with inline validation, and the
password-once box."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from console.widgets.fields import Field
from relay.display import clean

CSS_PATH = Path(__file__).with_name("dialogs.tcss")


class ConfirmDialog(ModalScreen[bool]):
    """Yes or no. ``y`` confirms; ``n`` or escape declines."""

    CSS_PATH = CSS_PATH
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, question: str, *, yes: str = "Yes", danger: bool = True) -> None:
        super().__init__(classes="dialog")
        self.question = question
        self.yes = yes
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(classes="box"):
            # The question names things from outside (a list, a subject): escaped.
            yield Static(clean(self.question, keep_newlines=True), classes="question")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="error" if self.danger else "primary")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class PromptDialog(ModalScreen[str | None]):
    """One line of input. ``check`` returns an error message (shown inline, the
    dialog stays open) or None; enter submits, escape cancels."""

    CSS_PATH = CSS_PATH
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="prompt.cancel")]

    def __init__(
        self,
        title: str,
        *,
        value: str = "",
        placeholder: str = "",
        hint: str = "",
        check: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__(classes="dialog")
        self.title_text = title
        self.value = value
        self.placeholder = placeholder
        self.hint = hint
        self.check = check

    def compose(self) -> ComposeResult:
        with Vertical(classes="box"):
            yield Label(self.title_text, classes="title")
            yield Field(value=self.value, placeholder=self.placeholder, id="answer")
            yield Static("", id="error", classes="error")
            if self.hint:
                yield Static(self.hint, classes="hint")
            yield Static("enter: OK · escape: cancel", classes="keys")

    def on_mount(self) -> None:
        self.query_one("#answer", Field).focus()

    def _problem(self, text: str) -> str | None:
        return self.check(text) if self.check else None

    def on_input_changed(self, event: Field.Changed) -> None:
        self.query_one("#error", Static).update(self._problem(event.value) or "")

    def on_input_submitted(self, event: Field.Submitted) -> None:
        problem = self._problem(event.value)
        if problem:
            self.query_one("#error", Static).update(problem)
            return
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


def send_to_clipboard(app: Any, text: str, what: str, shown: str) -> None:
    """Copy with OSC 52. The terminal never answers it, so whether the text arrived
    is unknown: say so, and where the text can still be read (``shown``)."""
    app.copy_to_clipboard(text)
    app.notify(f"{what} sent to the terminal's clipboard (if it supports OSC 52 copy); {shown}.", timeout=6)


class PasswordOnce(ModalScreen[None]):
    """Shows a new password exactly once. ``c`` copies it to the clipboard; closing
    the box drops it: nothing in the console keeps it."""

    CSS_PATH = CSS_PATH
    BINDINGS = [
        Binding("c", "copy", "Copy to clipboard", id="password.copy"),
        Binding("escape,enter", "close", "Close", id="password.close"),
    ]

    def __init__(self, username: str, password: str, *, reason: str = "new password") -> None:
        super().__init__(classes="dialog")
        self.username = username
        self._password: str | None = password
        self.reason = reason

    def compose(self) -> ComposeResult:
        with Vertical(classes="box password-box"):
            yield Label(f"{self.reason.capitalize()} for {self.username}", classes="title")
            yield Static(self._password or "", id="password", classes="password")
            yield Static(
                "Shown this once only: it is stored as a hash and cannot be shown again. "
                "Reset it if it gets lost.",
                classes="hint",
            )
            yield Static("c: copy (terminals with OSC 52) · enter/escape: close", classes="keys")

    def action_copy(self) -> None:
        if self._password:
            send_to_clipboard(self.app, self._password, "Password", "it stays shown here until you close this box")

    def action_close(self) -> None:
        # Textual keeps what it copied for its own paste (ctrl+v in any field): drop it,
        # so the password cannot turn up in a note or a form after the box is closed.
        # The terminal's own clipboard keeps it, which is what "copy" was for.
        if self._password and self.app.clipboard == self._password:
            self.app._clipboard = ""
        self._password = None
        self.query_one("#password", Static).update("")
        self.dismiss(None)
