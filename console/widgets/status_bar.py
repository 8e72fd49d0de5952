"""The one-line status bar: is the relay alive, which ports, next hop, paused."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from console import format as fmt
from console.live import StoreStatus
from relay.ports import format_port_spec


def status_text(
    status: StoreStatus | None, *, mode: str, relay_error: str | None = None, extra: str | None = None
) -> Text:
    """Most important first (narrow terminals cut the end): is a relay alive, is
    delivery paused, where does mail go, which ports are served.

    ``mode`` is how this console relates to the relay: ``in-process``, ``attached``
    or ``starting``."""
    text = Text(no_wrap=True, overflow="ellipsis")
    if status is None:
        text.append("reading the store…")
        return text
    relay = status.relay
    if relay_error:
        text.append("✗ relay failed", style="bold red")
        text.append(f": {relay_error}")
    elif relay.alive:
        where = "in-process" if mode == "in-process" else f"pid {relay.pid}"
        text.append("● relay alive", style="bold green")
        text.append(f" {where} ({fmt.age(relay.heartbeat_age)})")
    elif mode == "starting":
        text.append("◌ relay starting…", style="bold yellow")
    elif relay.heartbeat_age is not None and not relay.stopped_at:
        text.append("✗ relay DEAD", style="bold red")
        text.append(f" (heartbeat {fmt.age(relay.heartbeat_age)} ago)")
    else:
        text.append("○ no relay", style="bold yellow")
    text.append(" · ")
    if relay.paused:
        text.append(" PAUSED ", style="bold reverse")
    else:
        text.append("delivery on")
        if relay.rate:
            text.append(f" ≤{fmt.rate(float(relay.rate))}")
    text.append(" · next hop ")
    if relay.next_hop:
        text.append(str(relay.next_hop))
    else:
        text.append("none", style="bold yellow")
    if extra:
        text.append(f" · {extra}")
    text.append(" · ")
    if relay.served:
        text.append(f"ports {format_port_spec(relay.served)} ({len(relay.served):,})")
        if relay.not_served:
            text.append(f", {len(relay.not_served)} not served", style="yellow")
    else:
        text.append("no ports served")
    return text


class StatusBar(Static):
    """Docked at the top of every screen; fed by each snapshot (styled in app.tcss)."""

    def show(self, status: StoreStatus | None) -> None:
        app = self.app
        mode = getattr(app, "relay_mode", "attached")
        error = getattr(app, "relay_error", None)
        extra = app.extra_status() if hasattr(app, "extra_status") else None
        self.update(status_text(status, mode=mode, relay_error=error, extra=extra))
