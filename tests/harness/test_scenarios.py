"""Each shipped scenario passes against an in-process relay; a wrong expectation fails
readably; the JUnit report is well formed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.report import Check, RunReport, failure_details, junit_xml, write_junit
from harness.scenario import (
    RunOptions,
    ScenarioError,
    load_scenario,
    run_files,
    run_scenarios,
    shipped_scenarios,
)
from relay.ports import parse_port_spec


def _explain(report: object) -> str:
    return "\n".join(failure_details(report))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["authorization", "priority", "bad_input"])
async def test_shipped_scenario_passes_against_an_in_process_relay(name: str) -> None:
    report = await run_files([name], RunOptions(store_path=None, timeout=20), start_relay=True)
    assert report.passed, _explain(report)
    checks = {c.name for c in report.checks}
    scenario = load_scenario(name)
    # Every send and every expectation produced a check of its own.
    assert {s.name for s in scenario.steps} <= checks


async def test_a_multi_port_pool_keeps_each_scenarios_counts_as_written() -> None:
    """--ports narrows the ports a run may use; each send still picks its own
    (sample:1), so priority's and bad_input's counts and order hold."""
    report = await run_files(
        ["priority", "bad_input"], RunOptions(store_path=None, ports="sample:3", timeout=20),
        start_relay=True, listen="0*4",
    )
    assert report.passed, _explain(report)
    for scenario, accepted in zip(report.scenarios, ("10", "11"), strict=True):  # bad_input: its NUL send is refused
        assert len(parse_port_spec(scenario.facts["port_pool"])) == 3
        assert {c.name: c for c in scenario.checks}["count.accepted"].observed == accepted


async def test_a_port_spec_pool_against_a_running_relay(relay: object, store_path: Path) -> None:
    from relay.store import open_store
    from relay.store.lease import relay_status

    db = open_store(store_path)
    try:
        served = relay_status(db).served
    finally:
        db.close()
    pool = sorted(served)[:2]
    spec = ",".join(str(p) for p in pool)
    # The test's own relay: the run may own its delivery (a capture sink as next hop).
    report = await run_scenarios(
        [load_scenario("bad_input")], RunOptions(store_path=store_path, ports=spec, timeout=20, owns_delivery=True)
    )
    assert report.passed, _explain(report)
    [scenario] = report.scenarios
    assert parse_port_spec(scenario.facts["port_pool"]) == pool
    assert by_name(report)["count.accepted"].observed == "11"  # its NUL send is refused (554 5.6.0)


async def test_port_sweep_on_a_sample_of_a_200_port_relay() -> None:
    report = await run_files(
        ["port_sweep"], RunOptions(store_path=None, ports="sample:40", concurrency=32, timeout=20),
        start_relay=True, listen="0*200",
    )
    assert report.passed, _explain(report)
    by_name = {c.name: c for c in report.checks}
    assert "×40/40 (40 ports)" in by_name["starttls-auth-send"].observed
    assert by_name["starttls-auth-send.delivered"].observed == "40 arrived"
    assert report.scenarios[0].facts["served_ports"]  # the relay's own list, published in the store


async def test_ports_the_relay_does_not_serve_are_never_used(tmp_path: Path) -> None:
    """A spec naming ports outside the relay's listen spec: those are skipped with a reason."""
    scenario = tmp_path / "narrow.toml"
    scenario.write_text(
        """
[scenario]
name = "narrow"
[setup]
lists = [{ name = "narrow" }]
users = [{ username = "narrow-user", list = "narrow", domains = "narrow.example" }]
[[sends]]
name = "one"
user = "narrow-user"
mail_from = "a@narrow.example"
to = ["b@dest.example"]
ports = "1"
expect = "250"
"""
    )
    report = await run_files([str(scenario)], RunOptions(store_path=None, timeout=10), start_relay=True, listen="0*2")
    check = next(c for c in report.checks if c.name == "one")
    assert not check.passed and check.observed == "no served port to send on"
    assert "1 (not in the relay's listen spec)" in check.detail


WRONG = """
[scenario]
name = "wrong"
ports = "sample:1"
[setup]
lists = [{ name = "wrong" }]
users = [{ username = "wrong-user", list = "wrong", domains = "wrong.example" }]
[sink]
start = true
[[sends]]
name = "accepted-but-expected-refused"
user = "wrong-user"
mail_from = "a@wrong.example"
to = ["b@dest.example"]
expect = "550 5.7.1"
[[sends]]
name = "refused-as-expected"
user = "wrong-user"
mail_from = "a@elsewhere.example"
to = ["b@dest.example"]
expect = "5xx"
expect_stage = "mail"
[[sends]]
name = "first"
user = "wrong-user"
mail_from = "a@wrong.example"
to = ["b@dest.example"]
expect = "250"
[expect]
order = ["first", "accepted-but-expected-refused"]
counts = { accepted = 5 }
"""


async def test_a_scenario_expecting_the_wrong_thing_fails_with_a_readable_difference(tmp_path: Path) -> None:
    path = tmp_path / "wrong.toml"
    path.write_text(WRONG)
    report = await run_files([str(path)], RunOptions(store_path=None, timeout=10), start_relay=True, listen="0*1")
    assert not report.passed
    failed = {c.name: c for c in report.failures}
    assert set(failed) == {"accepted-but-expected-refused", "order", "count.accepted"}
    send = failed["accepted-but-expected-refused"]
    assert send.expected == "550 5.7.1"
    assert send.observed.startswith("250 2.0.0 Ok: queued as …")
    assert "got 250 2.0.0" in send.detail and "-> MAIL FROM:<a@wrong.example>" in send.detail
    order = failed["order"]
    assert "accepted-but-expected-refused (arrival #1) came before first finished (arrival #2)" in order.detail
    # What the queue ordered them by, so an order failure can be read without the store.
    assert order.detail.splitlines()[-1] == (
        "effective priority (queue order is priority, then arrival): "
        "first 3 (user 3, header 3); accepted-but-expected-refused 3 (user 3, header 3)"
    )
    assert (failed["count.accepted"].expected, failed["count.accepted"].observed) == ("5", "2")
    text = _explain(report)
    assert "✗ wrong.accepted-but-expected-refused" in text and "expected: 550 5.7.1" in text

    # The JUnit file: well formed, one test case per check, failures where they failed.
    junit = write_junit(report, tmp_path / "out" / "junit.xml")
    root = ET.parse(junit).getroot()
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == [c.full_name for c in report.checks]
    assert all(c.get("name", "").startswith("wrong.") for c in cases)
    failing = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failing == {f"wrong.{n}" for n in failed}
    assert root.get("tests") == str(len(report.checks)) and root.get("failures") == "3"


def test_junit_stays_well_formed_with_control_characters_from_the_wire() -> None:
    from harness.report import RunReport, ScenarioReport

    scenario = ScenarioReport("bad_input", "inline")
    scenario.add("nul", False, "250", "500 got \x00 and \x1b[31m", "line\x0bbreak")
    scenario.add("ok", True, "250", "250 fine")
    text = junit_xml(RunReport(scenarios=[scenario]))
    root = ET.fromstring(text)
    failure = root.find("./testsuite/testcase/failure")
    assert failure is not None and "\\x00" in (failure.text or "")
    assert [c.get("name") for c in root.iter("testcase")] == ["bad_input.nul", "bad_input.ok"]


def test_the_printed_report_escapes_terminal_controls_and_markup() -> None:
    """A reply from a relay or a sink (or a scenario's own text) with OSC 52, OSC 0, CSI or a
    bidi override is printed as visible escapes, and never read as Rich markup."""
    import io

    from rich.console import Console

    from harness.report import ScenarioReport, summary_table

    osc52 = "\x1b]52;c;cHduZWQ=\x07"
    scenario = ScenarioReport("evil", "inline")
    scenario.add("reply", False, "250", f"550 5.7.1 {osc52} [red]x[/] \u202e", "sink said \x1b]0;title\x07\n\x1b[2Jcleared")
    scenario.add("name\x1b[31m", True, "250", "250 ok")
    report = RunReport(scenarios=[scenario])
    lines = failure_details(report)
    printed = "\n".join(lines)
    assert "\x1b" not in printed and "\x07" not in printed and "\u202e" not in printed
    assert "    observed: 550 5.7.1 \\x1b]52;c;cHduZWQ=\\x07 [red]x[/] \\u202e" in lines
    assert lines[-2:] == ["    sink said \\x1b]0;title\\x07", "    \\x1b[2Jcleared"]

    out = io.StringIO()
    Console(file=out, width=300, color_system=None, force_terminal=False).print(summary_table(report))
    table = out.getvalue()
    assert "\x1b" not in table and "\x07" not in table
    assert "\\x1b]52;c;cHduZWQ=\\x07 [red]x[/]" in table  # markup shown as typed
    assert "evil.name\\x1b[31m" in table


def test_shipped_scenarios_are_found_by_bare_name() -> None:
    assert shipped_scenarios() == ["authorization", "bad_input", "port_sweep", "priority"]
    assert load_scenario("priority.toml").name == "priority"
    with pytest.raises(ScenarioError, match="shipped scenarios: authorization"):
        load_scenario("no-such-scenario")


def by_name(report: RunReport) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


async def test_a_started_relay_can_run_in_a_child_process() -> None:
    from harness.scenario import relay_mode_for

    assert relay_mode_for("auto", "25,1025-5000") == "subprocess"
    assert relay_mode_for("auto", "0*200") == "in-process"
    assert relay_mode_for("in-process", "25,1025-5000") == "in-process"
    report = await run_files(
        ["bad_input"], RunOptions(store_path=None, timeout=20), start_relay=True, listen="0*1", relay_mode="subprocess"
    )
    assert report.passed, _explain(report)
