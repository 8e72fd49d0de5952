"""One report format for every benchmark: JSON and a rich table.

A :class:`BenchReport` holds the parameters of the run, the measured runs
(:class:`Measurement`: how many messages in how many seconds, failures, extra
figures such as latency percentiles), named figures, and the targets they are
held to (:class:`Target`). ``to_json()`` is the machine-readable form (``--json``);
``print_table(console)`` shows the same for humans.

    report = BenchReport("accept", params={"connections": 32})
    report.add(Measurement("raw aiosmtpd sink", messages=20000, seconds=5.5))
    report.add(Measurement("relay", messages=20000, seconds=7.0))
    report.compare("relay / raw sink", "relay", "raw aiosmtpd sink", at_least=0.75)
    report.figure("p99 ms", 12.5, at_most=50)
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Measurement:
    """One measured run: ``messages`` accepted in ``seconds`` (``failures`` refused or errored)."""

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
class Target:
    """A figure held to a bound: ``value >= at_least`` and/or ``value <= at_most``."""

    name: str
    value: float
    at_least: float | None = None
    at_most: float | None = None

    @property
    def passed(self) -> bool:
        if self.at_least is not None and self.value < self.at_least:
            return False
        return not (self.at_most is not None and self.value > self.at_most)

    @property
    def bound(self) -> str:
        parts = []
        if self.at_least is not None:
            parts.append(f"≥ {self.at_least:g}")
        if self.at_most is not None:
            parts.append(f"≤ {self.at_most:g}")
        return " and ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "at_least": self.at_least, "at_most": self.at_most, "passed": self.passed}


@dataclass
class BenchReport:
    bench: str
    params: dict[str, Any] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, measurement: Measurement) -> Measurement:
        self.measurements.append(measurement)
        return measurement

    def measurement(self, label: str) -> Measurement:
        return next(m for m in self.measurements if m.label == label)

    def figure(self, name: str, value: Any, *, at_least: float | None = None, at_most: float | None = None) -> None:
        """A named figure; with a bound it is also a target."""
        self.figures[name] = value
        if at_least is not None or at_most is not None:
            self.targets.append(Target(name, float(value), at_least, at_most))

    def compare(self, name: str, subject: str, reference: str, *, at_least: float | None = None) -> float:
        """The rate of ``subject`` over the rate of ``reference`` (a ratio target)."""
        base = self.measurement(reference).rate
        ratio = self.measurement(subject).rate / base if base > 0 else 0.0
        self.figure(name, round(ratio, 3), at_least=at_least)
        return ratio

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.targets)

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "params": self.params,
            "machine": machine(),
            "measurements": [m.to_json() for m in self.measurements],
            "figures": self.figures,
            "targets": [t.to_json() for t in self.targets],
            "passed": self.passed,
            "notes": self.notes,
        }

    def print_table(self, console: Any) -> None:
        from rich import box
        from rich.table import Table

        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        if self.measurements:
            runs = Table(title=f"bench {self.bench}" + (f" ({params})" if params else ""), box=box.SIMPLE_HEAD)
            runs.add_column("run")
            runs.add_column("messages", justify="right")
            runs.add_column("failures", justify="right")
            runs.add_column("seconds", justify="right")
            runs.add_column("msg/s", justify="right")
            extras = [k for k in dict.fromkeys(k for m in self.measurements for k in m.extra) if k != "errors"]
            for key in extras:
                runs.add_column(key, justify="right")
            for m in self.measurements:
                runs.add_row(
                    m.label, f"{m.messages:,}", f"{m.failures:,}", f"{m.seconds:.2f}", f"{m.rate:,.0f}",
                    *(str(m.extra.get(key, "")) for key in extras),
                )
            console.print(runs)
        if self.figures:
            figures = Table(box=box.SIMPLE_HEAD)
            figures.add_column("figure")
            figures.add_column("value", justify="right")
            figures.add_column("target")
            bounds = {t.name: t for t in self.targets}
            for name, value in self.figures.items():
                shown = f"{value:.4g}" if isinstance(value, float) else str(value)
                target = bounds.get(name)
                mark = "" if target is None else f"{target.bound}  {'✓' if target.passed else '✗ missed'}"
                figures.add_row(name, shown, mark)
            console.print(figures)
        for note in self.notes:
            console.print(f"note: {note}")


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": sys.platform,
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
