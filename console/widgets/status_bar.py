"""The one-line status bar: is the relay alive, which ports, next hop, paused."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import events
from textual.widgets import Static

from console import format as fmt
from console.live import StoreStatus
from relay.ports import format_port_spec


def status_text(
    status: StoreStatus | None,
    *,
    mode: str,
    relay_error: str | None = None,
    extra: str | None = None,
    width: int | None = None,
) -> Text:
    """Most important first: is a relay alive, is delivery paused, where does mail
    go, which ports are served (always with their count).

    ``mode`` is how this console relates to the relay: ``in-process``, ``attached``
    or ``starting``. Given a ``width``, the parts take shorter forms one step at a
    time until the line fits (at 80 columns the port count stays in view)."""
    if status is None:
        return Text("reading the store…", no_wrap=True, overflow="ellipsis")
    relay = status.relay
    parts = [_relay_part(relay, mode, relay_error), _delivery_part(relay), _hop_part(relay)]
    if extra:
        parts.append([Text(extra), Text(extra.replace(" got ", " "))])
    parts.append(_ports_part(relay))
    chosen = [0] * len(parts)
    kept = [True] * len(parts)

    def shown() -> list[Text]:
        return [part[n] for part, n, keep in zip(parts, chosen, kept, strict=True) if keep]

    def length() -> int:
        return sum(len(t) for t in shown()) + 3 * (len(shown()) - 1)

    # Shorter forms, one step at a time in turn, the least needed words first.
    order = [0, len(parts) - 1, *range(3, len(parts) - 1), 2, 1]
    turn = 0
    while width is not None and length() > width and turn < len(order) * 3:
        index = order[turn % len(order)]
        turn += 1
        if chosen[index] < len(parts[index]) - 1:
            chosen[index] += 1
    if width is not None and length() > width:
        # A very long next hop: cut it (`smtpplus queue next-hop` shows it whole).
        hop = parts[2][chosen[2]]
        hop.truncate(max(12, len(hop) - (length() - width)), overflow="ellipsis")
    # Still too narrow: leave out the extra, then the next hop, never the port count.
    for index in (*range(3, len(parts) - 1), 2):
        if width is not None and length() > width:
            kept[index] = False
    text = Text(" · ").join(shown())
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def _relay_part(relay: Any, mode: str, relay_error: str | None) -> list[Text]:
    """Is a relay alive: long form first, shorter ones after."""
    if relay_error:
        return [Text.assemble(("✗ relay failed", "bold red"), f": {relay_error}"), Text("✗ relay failed", "bold red")]
    if relay.alive:
        where = "in-process" if mode == "in-process" else f"pid {relay.pid}"
        beat = fmt.age(relay.heartbeat_age)
        return [
            Text.assemble(("● relay alive", "bold green"), f" {where} ({beat})"),
            Text.assemble(("● relay alive", "bold green"), f" ({beat})"),
            Text("● alive", "bold green"),
        ]
    if mode == "starting":
        return [Text("◌ relay starting…", "bold yellow"), Text("◌ starting…", "bold yellow")]
    if relay.heartbeat_age is not None and not relay.stopped_at:
        return [
            Text.assemble(("✗ relay DEAD", "bold red"), f" (heartbeat {fmt.age(relay.heartbeat_age)} ago)"),
            Text("✗ relay DEAD", "bold red"),
        ]
    return [Text("○ no relay", "bold yellow")]


def _delivery_part(relay: Any) -> list[Text]:
    if relay.paused:
        return [Text(" PAUSED ", "bold reverse")]
    limit = f" ≤{fmt.rate(float(relay.rate))}" if relay.rate else ""
    return [Text(f"delivery on{limit}"), Text(f"on{limit}"), Text(limit.strip() or "on")]


def _hop_part(relay: Any) -> list[Text]:
    if relay.next_hop:
        return [Text(f"next hop {relay.next_hop}"), Text(f"hop {relay.next_hop}")]
    return [Text.assemble("next hop ", ("none", "bold yellow")), Text("no next hop", "bold yellow")]


def _ports_part(relay: Any) -> list[Text]:
    if not relay.served:
        return [Text("no ports served")]
    count = f"{len(relay.served):,}"
    missing = Text(f", {len(relay.not_served)} not served", "yellow") if relay.not_served else Text("")
    return [
        Text.assemble(f"ports {format_port_spec(relay.served)} ({count})", missing),
        Text.assemble(f"{count} port{'s' if len(relay.served) != 1 else ''}", missing),
    ]


class StatusBar(Static):
    """Docked at the top of every screen; fed by each snapshot (styled in app.tcss).
    Redrawn on resize, so a narrower terminal gets the shorter forms."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.status: StoreStatus | None = None
        self.shown = False

    def show(self, status: StoreStatus | None) -> None:
        self.status = status
        self.shown = True
        self._draw()

    def on_resize(self, event: events.Resize) -> None:
        if self.shown:
            self._draw()

    def _draw(self) -> None:
        app = self.app
        mode = getattr(app, "relay_mode", "attached")
        error = getattr(app, "relay_error", None)
        extra = app.extra_status() if hasattr(app, "extra_status") else None
        width = self.content_region.width or max(1, app.size.width - 2)
        self.update(status_text(self.status, mode=mode, relay_error=error, extra=extra, width=width))
