"""The new-campaign form: a message to every member of a list, at a time, with a
priority (3 unless set otherwise)."""

from __future__ import annotations

import time
from typing import Any

from textual.app import ComposeResult
from textual.widgets import Label, Select

from console import format as fmt
from console.widgets.fields import Field, TextField
from console.widgets.forms import Form
from relay import policy


def check_sender(text: str) -> str | None:
    try:
        policy.normalize_address(text)
    except policy.PolicyError as exc:
        return str(exc)
    return None


def start_time(text: str, now: float) -> float:
    """``now``/blank, ``in 10m``/``10m`` (from now), ``HH:MM`` or ``YYYY-MM-DD HH:MM``."""
    value = text.strip().lower().removeprefix("in ").strip()
    if value in ("", "now"):
        return now
    if value[-1:] in ("s", "m", "h", "d") and value[:-1].replace(".", "", 1).isdigit():
        return now + (now - fmt.parse_since(value, now))  # type: ignore[operator]
    when = fmt.parse_since(value, now)
    if when is None:
        return now
    return when


def check_start(text: str) -> str | None:
    try:
        start_time(text, time.time())
    except ValueError:
        return "start: now, 10m (from now), HH:MM or YYYY-MM-DD HH:MM"
    return None


class CampaignForm(Form):
    """Returns list, subject, sender, body, priority and the start time."""

    CHECKS = {
        "subject": lambda text: None if text.strip() else "a campaign needs a subject",
        "sender": check_sender,
        "start": check_start,
    }

    def __init__(self, lists: list[str], *, default_sender: str = "", now: float | None = None) -> None:
        super().__init__("New campaign")
        self.lists = lists
        self.default_sender = default_sender
        self.now = now

    def compose_fields(self) -> ComposeResult:
        yield Label("List (every member gets the message)", classes="label")
        yield Select([(name, name) for name in self.lists], value=self.lists[0] if self.lists else Select.BLANK,
                     allow_blank=not self.lists, id="list")
        yield from self.field_row("subject", "Subject", Field(id="subject"))
        yield from self.field_row("sender", "From", Field(self.default_sender, id="sender",
                                                          placeholder="news@example.com"))
        yield Label("Body", classes="label")
        yield TextField(id="body")
        yield Label("Priority", classes="label")
        yield Select([(fmt.priority(p), p) for p in range(1, 6)], value=3, allow_blank=False, id="priority")
        yield from self.field_row("start", "Start", Field("now", id="start"),
                                  hint="now, 10m (from now), HH:MM today, or YYYY-MM-DD HH:MM")

    def errors(self) -> dict[str, str]:
        out = super().errors()
        if self.query_one("#list", Select).value == Select.BLANK:
            out = {"subject": "add a list with members first", **out}
        return out

    def result(self) -> dict[str, Any]:
        now = self.now if self.now is not None else time.time()
        return {
            "list": self.query_one("#list", Select).value,
            "subject": self.value("subject").strip(),
            "sender": self.value("sender").strip(),
            "body": self.query_one("#body", TextField).text,
            "priority": int(self.query_one("#priority", Select).value),  # type: ignore[arg-type]
            "scheduled_at": start_time(self.value("start"), now),
        }
