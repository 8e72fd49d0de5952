"""Inputs that honour the app's cursor-blink setting (snapshot tests turn it off)."""

from __future__ import annotations

from textual.widgets import Input, TextArea


class Field(Input):
    """An Input; no cursor blink when the app says so (deterministic snapshots)."""

    def on_mount(self) -> None:
        if not getattr(self.app, "cursor_blink", True):
            self.cursor_blink = False


class TextField(TextArea):
    def on_mount(self) -> None:
        if not getattr(self.app, "cursor_blink", True):
            self.cursor_blink = False
