"""Scenario run reports: a summary table, JSON, and JUnit XML for CI.

Every check of every scenario becomes one JUnit test case named
``<scenario>.<check>``, with a ``<failure>`` (expected, observed, the difference)
when it failed, or an ``<error>`` when the scenario could not run at all. Text
from the wire can hold control characters that XML 1.0 forbids; they are escaped
so the file is always well formed.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.display import clean

# Characters XML 1.0 does not allow at all (even escaped).
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(slots=True)
class Check:
    """One verified expectation: what was expected, what was observed."""

    scenario: str
    name: str
    passed: bool
    expected: str
    observed: str
    detail: str = ""  # the readable difference, or extra facts (ports not served, …)
    seconds: float = 0.0
    error: bool = False  # the check could not be evaluated (setup broke), not a mismatch

    @property
    def full_name(self) -> str:
        return f"{self.scenario}.{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.full_name,
            "passed": self.passed,
            "error": self.error,
            "expected": self.expected,
            "observed": self.observed,
            "detail": self.detail,
            "seconds": round(self.seconds, 6),
        }


@dataclass(slots=True)
class ScenarioReport:
    name: str
    source: str
    description: str = ""
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    started_at: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)  # ports served/not served, sends made, …

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def add(self, name: str, passed: bool, expected: str, observed: str, detail: str = "", **kw: Any) -> Check:
        check = Check(self.name, name, passed, expected, observed, detail, **kw)
        self.checks.append(check)
        return check


@dataclass(slots=True)
class RunReport:
    scenarios: list[ScenarioReport] = field(default_factory=list)
    started_at: float = 0.0
    seconds: float = 0.0

    @property
    def checks(self) -> list[Check]:
        return [c for s in self.scenarios for c in s.checks]

    @property
    def passed(self) -> bool:
        """Exit 0 only when there was something to check and every check passed."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": len(self.checks),
            "failed": len(self.failures),
            "seconds": round(self.seconds, 3),
            "started_at": self.started_at,
            "scenarios": [
                {
                    "name": s.name,
                    "source": s.source,
                    "description": s.description,
                    "passed": s.passed,
                    "seconds": round(s.seconds, 3),
                    "facts": s.facts,
                    "checks": [c.to_json() for c in s.checks],
                }
                for s in self.scenarios
            ],
        }


def xml_safe(text: str) -> str:
    """Escape what XML 1.0 cannot carry (``\\x00`` → ``\\x00`` as four characters)."""
    return _XML_ILLEGAL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def junit_xml(report: RunReport) -> str:
    """The JUnit XML text: one ``<testsuite>`` per scenario, one ``<testcase>`` per check."""
    checks = report.checks
    root = ET.Element(
        "testsuites",
        name="smtpplus harness",
        tests=str(len(checks)),
        failures=str(sum(1 for c in checks if not c.passed and not c.error)),
        errors=str(sum(1 for c in checks if c.error)),
        time=f"{report.seconds:.3f}",
    )
    for scenario in report.scenarios:
        suite = ET.SubElement(
            root,
            "testsuite",
            name=xml_safe(scenario.name),
            tests=str(len(scenario.checks)),
            failures=str(sum(1 for c in scenario.checks if not c.passed and not c.error)),
            errors=str(sum(1 for c in scenario.checks if c.error)),
            skipped="0",
            time=f"{scenario.seconds:.3f}",
            timestamp=dt.datetime.fromtimestamp(scenario.started_at or 0, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        )
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="source", value=xml_safe(scenario.source))
        for check in scenario.checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=xml_safe(f"smtpplus.harness.{scenario.name}"),
                name=xml_safe(check.full_name),
                time=f"{check.seconds:.3f}",
            )
            body = f"expected: {check.expected}\nobserved: {check.observed}"
            if check.detail:
                body += f"\n{check.detail}"
            if not check.passed:
                tag = "error" if check.error else "failure"
                element = ET.SubElement(
                    case, tag, message=xml_safe(f"expected {check.expected}, observed {check.observed}"[:500])
                )
                element.text = xml_safe(body)
            else:
                ET.SubElement(case, "system-out").text = xml_safe(body)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(report: RunReport, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(junit_xml(report), encoding="utf-8")
    return target


def _short(text: str, width: int) -> str:
    return clean(" ".join(text.split()), width)


def summary_table(report: RunReport, *, width: int = 60) -> Any:
    """A rich Table: each check with observed against expected. Replies and scenario
    strings are escaped (``clean``) and never read as Rich markup."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="smtpplus harness", show_lines=False)
    table.add_column("check", overflow="fold")
    table.add_column("result")
    table.add_column("expected", overflow="fold")
    table.add_column("observed", overflow="fold")
    for check in report.checks:
        if check.passed:
            result = "[green]pass[/]"
        else:
            result = "[red]ERROR[/]" if check.error else "[red]FAIL[/]"
        table.add_row(Text(clean(check.full_name)), result, Text(_short(check.expected, width)),
                      Text(_short(check.observed, width)))
    failed = len(report.failures)
    table.caption = (
        f"{len(report.checks) - failed}/{len(report.checks)} checks passed in {report.seconds:.1f} s"
        + (f" — {failed} failed" if failed else "")
    )
    return table


def failure_details(report: RunReport) -> list[str]:
    """Readable differences for every failed check (printed below the table), escaped:
    replies, sink records and scenario strings can carry terminal controls."""
    out: list[str] = []
    for check in report.failures:
        out.append(f"✗ {clean(check.full_name)}")
        out.append(f"    expected: {clean(check.expected)}")
        out.append(f"    observed: {clean(check.observed)}")
        for line in check.detail.splitlines():
            out.append(f"    {clean(line)}")
    return out
