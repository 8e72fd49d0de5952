"""Priority lanes: per priority 1–5 the queued, deferred, in flight and held counts
and how long the oldest message has waited."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from console import format as fmt
from relay.store.views import Lane

BAR_WIDTH = 10


def lanes_table(lanes: list[Lane], now: float) -> Table:
    table = Table(box=None, padding=(0, 1), expand=False, show_edge=False, header_style="bold")
    table.add_column("Priority", no_wrap=True)
    table.add_column("Queued", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, width=BAR_WIDTH)
    table.add_column("Deferred", justify="right", no_wrap=True)
    table.add_column("In flight", justify="right", no_wrap=True)
    table.add_column("Held", justify="right", no_wrap=True)
    table.add_column("Oldest", justify="right", no_wrap=True)
    peak = max((lane.queued for lane in lanes), default=0)
    for lane in lanes:
        filled = 0 if not peak or not lane.queued else max(1, round(BAR_WIDTH * lane.queued / peak))
        bar = Text("█" * filled + "·" * (BAR_WIDTH - filled), style="cyan")
        table.add_row(
            fmt.priority(lane.priority),
            fmt.count(lane.queued),
            bar,
            fmt.count(lane.deferred),
            fmt.count(lane.sending),
            fmt.count(lane.held),
            fmt.age(lane.oldest_wait(now)),
        )
    return table


class PriorityLanes(Static):
    """The five lanes as a compact table (rendered, not a DataTable: 5 rows)."""

    def show(self, lanes: list[Lane], now: float) -> None:
        self.update(lanes_table(lanes, now))
