"""One report format for every benchmark: JSON and a rich table.

A :class:`BenchReport` holds a bench's name and title, the parameters it ran with,
a table of runs (:class:`Measurement`: messages in seconds, failures and extra
columns such as latency percentiles; or a free-form :class:`Run`), named figures
(:class:`Figure`: value, unit and, when the figure is held to one, a target) and
notes. ``to_json()`` is the machine-readable form (``--json``); ``print_table(console)``
shows the same for humans. ``ok`` is true when every figure with a target meets it.

    report = BenchReport("accept", params={"connections": 32}, title="Relay acceptance")
    report.add(Measurement("raw aiosmtpd sink", messages=20000, seconds=5.5))
    report.add(Measurement("relay", messages=20000, seconds=7.0))
    report.compare("relay / raw sink", "relay", "raw aiosmtpd sink", at_least=0.75)
    report.figure("p99", 12.5, "ms", at_most=50)

The JSON shape, the same for every bench::

    {"bench", "title", "parameters", "machine", "runs": [{"label", …}],
     "figures": [{"name", "value", "unit", "target", "at_least", "at_most", "ok", "about"}],
     "notes", "ok"}
"""

from __future__ import annotations

import math
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any


class BenchError(RuntimeError):
    """A bench could not measure what it measures (a server did not start, nothing was
    accepted, mail did not arrive): the CLI shows the message as a one-line error."""


@dataclass
class Measurement:
    """One measured run: ``messages`` handled in ``seconds`` (``failures`` refused or errored)."""

    label: str
    messages: int
    seconds: float
    failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "messages": self.messages,
            "failures": self.failures,
            "seconds": round(self.seconds, 4),
            "rate": round(self.rate, 1),
            **self.extra,
        }


@dataclass
class Run:
    """A run that is not a message count over time: a label and its columns."""

    label: str
    values: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, **self.values}


@dataclass
class Figure:
    """A named result; with ``at_least`` and/or ``at_most`` it is held to a target."""

    name: str
    value: Any
    unit: str = ""
    at_least: float | None = None
    at_most: float | None = None
    about: str = ""  # what it measures, for a reader of the table

    @property
    def has_target(self) -> bool:
        return self.at_least is not None or self.at_most is not None

    @property
    def ok(self) -> bool | None:
        """Whether the target is met (None: no target). A value that is not a number misses it."""
        if not self.has_target:
            return None
        try:
            value = float(self.value)
        except (TypeError, ValueError):
            return False
        if math.isnan(value):
            return False
        if self.at_least is not None and value < self.at_least:
            return False
        return not (self.at_most is not None and value > self.at_most)

    @property
    def target(self) -> str | None:
        """The target in words, e.g. ``≥ 0.75`` or ``≤ 50 ms``."""
        unit = f" {self.unit}" if self.unit else ""
        parts = []
        if self.at_least is not None:
            parts.append(f"≥ {self.at_least:g}{unit}")
        if self.at_most is not None:
            parts.append(f"≤ {self.at_most:g}{unit}")
        return " and ".join(parts) or None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "value": self.value, "unit": self.unit, "target": self.target,
            "at_least": self.at_least, "at_most": self.at_most, "ok": self.ok, "about": self.about,
        }


@dataclass
class BenchReport:
    bench: str
    params: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    runs: list[Measurement | Run] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, run: Measurement | Run) -> Any:
        """Append a row to the table of runs; returns it."""
        self.runs.append(run)
        return run

    def measurement(self, label: str) -> Measurement:
        return next(m for m in self.runs if isinstance(m, Measurement) and m.label == label)

    def figure(
        self, name: str, value: Any, unit: str = "", *,
        at_least: float | None = None, at_most: float | None = None, about: str = "",
    ) -> Figure:
        """A named figure; with a bound it is also a target."""
        figure = Figure(name, value, unit, at_least, at_most, about)
        self.figures.append(figure)
        return figure

    def value(self, name: str) -> Any:
        """The value of the figure called ``name`` (KeyError when there is none)."""
        for figure in self.figures:
            if figure.name == name:
                return figure.value
        raise KeyError(name)

    def compare(self, name: str, subject: str, reference: str, *, at_least: float | None = None, about: str = "") -> float:
        """The rate of ``subject`` over the rate of ``reference`` (a ratio figure)."""
        base = self.measurement(reference).rate
        ratio = self.measurement(subject).rate / base if base > 0 else 0.0
        self.figure(name, round(ratio, 3), at_least=at_least, about=about or f"{subject} rate / {reference} rate")
        return ratio

    @property
    def missed(self) -> list[Figure]:
        return [f for f in self.figures if f.ok is False]

    @property
    def ok(self) -> bool:
        return not self.missed

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "title": self.title or f"bench {self.bench}",
            "parameters": self.params,
            "machine": machine(),
            "runs": [r.to_json() for r in self.runs],
            "figures": [f.to_json() for f in self.figures],
            "notes": self.notes,
            "ok": self.ok,
        }

    def print_table(self, console: Any) -> None:
        """The report for humans: title and parameters, the runs, the figures, notes, verdict."""
        from rich.text import Text

        console.print(Text(self.title or f"bench {self.bench}", style="bold"))
        if self.params:
            shown = ", ".join(f"{k}={'—' if v is None else format_value(v)}" for k, v in self.params.items())
            console.print(Text(f"parameters: {shown}", style="dim"))
        if self.runs:
            console.print(self._runs_table())
        if self.figures:
            console.print(self._figures_table())
        for note in self.notes:
            console.print(Text(f"note: {note}"))
        if any(f.has_target for f in self.figures):
            verdict = "all targets met" if self.ok else "missed: " + ", ".join(f.name for f in self.missed)
            console.print(Text(verdict, style="green" if self.ok else "bold red"))

    def _runs_table(self) -> Any:
        from rich import box
        from rich.table import Table

        rows = [r.to_json() for r in self.runs]
        # Nested values (error counters) stay in the JSON; the table shows scalars.
        columns = [k for k in dict.fromkeys(k for row in rows for k in row) if k != "label"
                   and all(not isinstance(row.get(k), dict | list) for row in rows)]
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("run")
        for column in columns:
            table.add_column("msg/s" if column == "rate" else column, justify="right")
        for row in rows:
            table.add_row(str(row["label"]), *(format_value(row.get(column)) for column in columns))
        return table

    def _figures_table(self) -> Any:
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_column("unit")
        table.add_column("target")
        table.add_column("")
        table.add_column("what it is", style="dim")
        for figure in self.figures:
            mark = {None: "", True: "✓", False: "✗ missed"}[figure.ok]
            table.add_row(figure.name, format_value(figure.value), figure.unit, figure.target or "", mark, figure.about)
        return table


def format_value(value: Any) -> str:
    """A value as the tables show it: thousands separated, four significant digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": sys.platform,
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
