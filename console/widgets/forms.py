"""Add/edit forms: lists and relay users. Every field is checked as it is typed (a
comma in domains or senders is an error at once, naming the fix); the form returns
clean values or stays open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Label, Select, Static

from console import format as fmt
from console.widgets.fields import Field
from console.widgets.footer import FitFooter
from relay import policy
from relay.store.directory import UserInfo

CSS_PATH = Path(__file__).with_name("forms.tcss")

PRIORITY_ONE_NOTE = (
    "Priority 1 puts this user's mail first in the sending queue. It does not make the mail "
    "urgent for recipients: only the message's own header (X-Priority: 1) does, and the "
    "console marks such mail with '!'."
)


def check_domains(text: str) -> str | None:
    try:
        policy.parse_domains(text)
    except policy.PolicyError as exc:
        return str(exc)
    return None


def check_senders(text: str) -> str | None:
    try:
        policy.parse_senders(text)
    except policy.PolicyError as exc:
        return str(exc)
    return None


def check_note(text: str) -> str | None:
    try:
        policy.validate_note(text)
    except policy.PolicyError as exc:
        return str(exc)
    return None


def check_username(text: str) -> str | None:
    if not text.strip():
        return None  # generated from the list name
    try:
        policy.validate_username(text)
    except policy.PolicyError as exc:
        return str(exc)
    return None


#: What the keys do, under every form's title (the footer says it too).
FORM_KEYS = "enter: next field · ctrl+s: save · esc: cancel"


class Form(ModalScreen[dict[str, Any] | None]):
    """Fields with inline errors. Enter moves to the next field and never submits
    (one Enter meant to open a dropdown must not save a user); ctrl+s or a click
    on Save submits."""

    CSS_PATH = CSS_PATH
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", id="form.save"),
        Binding("escape", "cancel", "Cancel", id="form.cancel"),
    ]
    #: field id -> checker returning an error or None
    CHECKS: dict[str, Any] = {}

    def __init__(self, title: str) -> None:
        super().__init__(classes="form")
        self.form_title = title

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="box"):
            yield Label(self.form_title, classes="title")
            yield Static(FORM_KEYS, classes="hint keys")
            yield from self.compose_fields()
            with Horizontal(classes="buttons"):
                # Not in the focus chain: Enter walking the fields never lands on Save.
                yield _click_only(Button("Save (ctrl+s)", id="save", variant="primary"))
                yield _click_only(Button("Cancel (esc)", id="cancel"))
        # At 80x24 a long form scrolls its buttons out of view: the footer keeps
        # "ctrl+s Save" visible (and hides the keys of the screen underneath).
        yield FitFooter(compact=True)

    def compose_fields(self) -> ComposeResult:
        yield from ()

    def field_row(self, field_id: str, label: str, field: Any, hint: str = "") -> ComposeResult:
        yield Label(label, classes="label")
        yield field
        yield Static("", id=f"{field_id}-error", classes="error")
        if hint:
            yield Static(hint, classes="hint")

    def on_mount(self) -> None:
        fields = self.fields()
        if fields:
            fields[0].focus()

    def fields(self) -> list[Widget]:
        """The form's inputs in reading order (what Enter walks through)."""
        return [w for w in self.query("Field, Select, TextField") if w.focusable]

    def focus_next_field(self, current: Widget) -> None:
        fields = self.fields()
        if current in fields:
            fields[(fields.index(current) + 1) % len(fields)].focus()

    def value(self, field_id: str) -> str:
        return self.query_one(f"#{field_id}", Field).value

    def show_error(self, field_id: str, error: str | None) -> None:
        self.query_one(f"#{field_id}-error", Static).update(error or "")

    def on_input_changed(self, event: Field.Changed) -> None:
        field_id = event.input.id or ""
        check = self.CHECKS.get(field_id)
        if check is not None:
            self.show_error(field_id, check(event.value))

    def on_input_submitted(self, event: Field.Submitted) -> None:
        event.stop()
        self.focus_next_field(event.input)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()

    def errors(self) -> dict[str, str]:
        out = {}
        for field_id, check in self.CHECKS.items():
            if not self.query(f"#{field_id}"):
                continue
            problem = check(self.value(field_id))
            if problem:
                out[field_id] = problem
        return out

    def action_save(self) -> None:
        problems = self.errors()
        for field_id in self.CHECKS:
            if self.query(f"#{field_id}-error"):
                self.show_error(field_id, problems.get(field_id))
        if problems:
            self.query_one(f"#{next(iter(problems))}", Field).focus()
            return
        self.dismiss(self.result())

    def result(self) -> dict[str, Any]:
        return {}

    def action_cancel(self) -> None:
        self.dismiss(None)


class ListForm(Form):
    """Add or edit a list: name and description."""

    CHECKS = {"name": lambda text: None if text.strip() else "a list needs a name"}

    def __init__(self, name: str = "", description: str = "", *, editing: bool = False) -> None:
        super().__init__(f"Edit list {name}" if editing else "New list")
        self.initial = (name, description)

    def compose_fields(self) -> ComposeResult:
        yield from self.field_row("name", "Name", Field(self.initial[0], id="name", max_length=100))
        yield from self.field_row(
            "description", "Description", Field(self.initial[1], id="description", max_length=200)
        )

    def result(self) -> dict[str, Any]:
        return {"name": self.value("name").strip(), "description": self.value("description").strip()}


class UserForm(Form):
    """Add or edit a relay user. A new user starts inactive; its password is made
    after saving and shown once."""

    CHECKS = {
        "username": check_username,
        "note": check_note,
        "domains": check_domains,
        "senders": check_senders,
    }

    def __init__(self, lists: list[str], *, user: UserInfo | None = None, default_list: str | None = None) -> None:
        super().__init__(f"Edit user {user.username}" if user else "New relay user")
        self.lists = lists
        self.user = user
        self.default_list = default_list if default_list in lists else (lists[0] if lists else None)

    def compose_fields(self) -> ComposeResult:
        user = self.user
        if user is None:
            yield Label("List", classes="label")
            yield Select([(name, name) for name in self.lists], value=self.default_list or Select.BLANK,
                         allow_blank=False, id="list")
            yield from self.field_row(
                "username", "Username", Field(id="username", placeholder="blank: generated from the list name")
            )
        yield Label("Priority", classes="label")
        yield Select([(fmt.priority(p), p) for p in range(1, 6)], value=user.priority if user else 3,
                     allow_blank=False, id="priority")
        yield Static("", id="priority-note", classes="hint")
        yield from self.field_row("note", "Note", Field(user.note if user else "", id="note", max_length=200))
        yield from self.field_row(
            "domains", "Authorized domains (separate with ;)",
            Field("; ".join(user.domains) if user else "", id="domains", placeholder="example.com; example.org"),
        )
        yield from self.field_row(
            "senders", "Authorized senders (separate with ;)",
            Field("; ".join(user.senders) if user else "", id="senders", placeholder="info@example.com"),
        )
        if user is not None and user.identities:
            yield Label("Verification", classes="label")
            yield Static(identity_states(user), id="identities")
        if user is None:
            yield Static("A new user starts inactive: activate it (t) once its senders are verified.",
                         classes="hint")

    def on_mount(self) -> None:
        # (Form.on_mount runs too: Textual calls every class's handler.)
        self._priority_note(self.query_one("#priority", Select).value)

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "priority":
            self._priority_note(event.value)

    def _priority_note(self, value: Any) -> None:
        self.query_one("#priority-note", Static).update(PRIORITY_ONE_NOTE if value == 1 else "")

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "priority": int(self.query_one("#priority", Select).value),  # type: ignore[arg-type]
            "note": policy.validate_note(self.value("note")),
            "domains": policy.parse_domains(self.value("domains")),
            "senders": policy.parse_senders(self.value("senders")),
        }
        if self.user is None:
            out["list"] = self.query_one("#list", Select).value
            out["username"] = self.value("username").strip() or None
        return out


def check_next_hop(text: str) -> str | None:
    from relay.store.errors import InvalidInput
    from relay.store.queue import parse_next_hop

    try:
        parse_next_hop(text)
    except InvalidInput as exc:
        return str(exc)
    return None


class NextHopForm(Form):
    """The next hop every message goes to (HOST:PORT) and its STARTTLS mode. AUTH
    and a CA file stay as they are (the CLI sets them: they hold secrets and paths)."""

    CHECKS = {"hop": check_next_hop}
    TLS_HINTS = {
        "required": "required: never sends in plain text (the hop must offer STARTTLS)",
        "opportunistic": "opportunistic: STARTTLS when offered, else plain text",
        "off": "off: plain text (a local sink or a hop on this machine)",
    }

    def __init__(self, hop: str | None, tls: str) -> None:
        super().__init__("Next hop (smarthost)")
        self.initial = (hop or "", tls)

    def compose_fields(self) -> ComposeResult:
        from relay.store.queue import TLS_MODES

        yield from self.field_row(
            "hop", "HOST:PORT", Field(self.initial[0], id="hop", placeholder="smarthost.example:25"),
            hint="Every message is delivered there from now on.",
        )
        yield Label("STARTTLS", classes="label")
        yield Select([(mode, mode) for mode in TLS_MODES], value=self.initial[1], allow_blank=False, id="tls")
        yield Static(self.TLS_HINTS.get(self.initial[1], ""), id="tls-hint", classes="hint")
        yield Static("AUTH and a CA file: smtpplus queue next-hop HOST:PORT --auth-user NAME "
                     "--auth-password-env VAR --cafile FILE", classes="hint")

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "tls":
            self.query_one("#tls-hint", Static).update(self.TLS_HINTS.get(str(event.value), ""))

    def result(self) -> dict[str, Any]:
        return {"hop": self.value("hop").strip(), "tls": str(self.query_one("#tls", Select).value)}


def _click_only(button: Button) -> Button:
    button.can_focus = False
    return button


def identity_states(user: UserInfo) -> Text:
    """Each identity with its verification state, one per line."""
    text = Text()
    for n, identity in enumerate(user.identities):
        if n:
            text.append("\n")
        if identity.verified:
            text.append("✓ verified ", style="green")
            text.append(identity.value)
            how = {"code": "code", "dns": "DNS", "manual": "manual"}.get(identity.method or "", identity.method or "")
            text.append(f"  ({how}{': ' + identity.reason if identity.reason else ''})", style="dim")
        else:
            text.append("… pending  ", style="yellow")
            text.append(identity.value)
    return text
