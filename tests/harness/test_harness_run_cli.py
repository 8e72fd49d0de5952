"""`smtpplus harness run` as a real subprocess."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from tests.harness.test_scenarios import WRONG


def test_run_with_start_relay_writes_junit_and_exits_0(cli: Any, tmp_path: Path) -> None:
    junit = tmp_path / "reports" / "junit.xml"
    proc = cli("harness", "run", "--start-relay", "--listen", "0*2", "--junit", str(junit), "bad_input", timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bad_input.smuggle-lf-dot-lf" in proc.stdout and "checks passed" in proc.stdout
    root = ET.parse(junit).getroot()
    names = [case.get("name") for case in root.iter("testcase")]
    assert "bad_input.smuggle-cr-dot-cr" in names and "bad_input.count.at_sink" in names
    assert root.get("failures") == "0" and root.find(".//failure") is None


def test_a_failing_scenario_exits_1_with_the_difference_and_json(cli: Any, tmp_path: Path) -> None:
    scenario = tmp_path / "wrong.toml"
    scenario.write_text(WRONG)
    proc = cli("harness", "run", "--start-relay", "--listen", "0*1", "--json", str(scenario), timeout=90)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] is False and report["failed"] == 3
    checks = {c["name"]: c for c in report["scenarios"][0]["checks"]}
    assert checks["wrong.accepted-but-expected-refused"]["expected"] == "550 5.7.1"
    assert checks["wrong.refused-as-expected"]["passed"] is True

    table = cli("harness", "run", "--start-relay", "--listen", "0*1", str(scenario), timeout=90)
    assert table.returncode == 1
    assert "✗ wrong.order" in table.stdout and "came before first finished" in table.stdout


def test_without_a_live_relay_the_run_fails_and_says_how_to_start_one(cli: Any) -> None:
    proc = cli("harness", "run", "authorization")
    assert proc.returncode == 1
    assert "authorization.relay" in proc.stdout and "--start-relay" in proc.stdout


def test_a_broken_scenario_file_is_one_line_naming_the_key(cli: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[sends]]\nname = "x"\nexpct = "250"\n')
    proc = cli("harness", "run", str(bad))
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "unknown key(s) expct" in proc.stderr
    assert "Traceback" not in proc.stderr
