"""The footer, fitted to the terminal's width: keys that would run under
``^p Commands`` are left out instead (every key stays in F1 help and the palette).

Textual's own footer scrolls sideways and lets the last keys disappear under the
palette key; at 80 columns that hid the demo's burst key and F1 itself.
"""

from __future__ import annotations

from typing import Any

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

#: Columns the palette key takes at the right: its border, "^p", a space, "Commands".
PALETTE_WIDTH = 12


def fit_keys(keys: list[tuple[int, int]], budget: int) -> set[int]:
    """Which keys to show: ``keys`` are ``(width, rank)`` in display order, rank 0
    kept longest (the app's own keys: help, the demo's burst), higher ranks left out
    first, the rightmost of a rank before the others. Returns the indices shown."""
    shown = set(range(len(keys)))
    for index in sorted(range(len(keys)), key=lambda i: (-keys[i][1], -i)):
        if sum(keys[i][0] for i in shown) <= budget:
            break
        shown.discard(index)
    return shown


class FitFooter(Footer):
    """A compact footer that leaves out keys it has no room for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._width = 0
        self.left_out: list[str] = []  # descriptions not shown (tests read it)

    def compose(self) -> ComposeResult:
        if not self._bindings_ready:
            return
        self._width = self.app.size.width
        active = self.screen.active_bindings
        seen: set[str] = set()
        keys: list[tuple[Any, Binding, bool, str]] = []
        for node, binding, enabled, tooltip in active.values():
            if binding.show and binding.action not in seen:
                seen.add(binding.action)
                keys.append((node, binding, enabled, tooltip))
        palette = None
        if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE:
            palette = active.get(self.app.COMMAND_PALETTE_BINDING)
        budget = self._width - (PALETTE_WIDTH if palette else 0) - 1
        widths = [
            (len(self.app.get_key_display(binding)) + 1 + len(binding.description) + 1, 0 if node is self.app else 1)
            for node, binding, _, _ in keys
        ]
        shown = fit_keys(widths, budget)
        self.left_out = [keys[i][1].description for i in range(len(keys)) if i not in shown]
        for index, (_, binding, enabled, tooltip) in enumerate(keys):
            if index in shown:
                yield FooterKey(
                    binding.key, self.app.get_key_display(binding), binding.description, binding.action,
                    disabled=not enabled, tooltip=tooltip,
                ).data_bind(compact=Footer.compact)
        if palette is not None:
            _, binding, enabled, _ = palette
            yield FooterKey(
                binding.key, self.app.get_key_display(binding), binding.description, binding.action,
                classes="-command-palette", disabled=not enabled, tooltip=binding.tooltip or binding.description,
            )

    def on_resize(self, event: events.Resize) -> None:
        if self._bindings_ready and self.app.size.width != self._width:
            self.call_after_refresh(self.recompose)
