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
    missing = cli("harness", "run", "authorization")
    assert missing.returncode == 1 and not cli.store.exists()  # no store is made on the way
    assert missing.stderr.strip() == f"smtpplus: error: no store at {cli.store} — check --db / $SMTPPLUS_DB, or use --start-relay"

    from relay.store import open_store

    open_store(cli.store).close()
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


def test_scenario_text_with_terminal_controls_is_printed_escaped(cli: Any, tmp_path: Path) -> None:
    # An unknown key spelled with OSC 0 (set the window title): the one-line error shows it escaped.
    bad = tmp_path / "evil.toml"
    bad.write_text('[[sends]]\nname = "x"\n"\\u001b]0;pwned\\u0007" = "250"\n')
    proc = cli("harness", "run", str(bad))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert "unknown key(s) \\x1b]0;pwned\\x07" in proc.stderr


def test_start_relay_with_a_port_sample_binds_only_the_sampled_ports(cli: Any) -> None:
    """port_sweep's relay_listen is the default 25,587,1025-5000: with --ports sample:6
    the started relay binds those 6 ports, not 3,978 (and no 465 beside them)."""
    from harness.scenario import listen_for
    from relay.ports import parse_port_spec, sample_ports

    sample = sample_ports(parse_port_spec("25,587,1025-5000"), 6)
    assert parse_port_spec(listen_for("25,587,1025-5000", "sample:6")) == sample
    assert listen_for("0*3", "sample:50") == "0*3" and listen_for("0*200", "sample:5") == "0*5"
    assert listen_for("0*3", "served") == "0*3" and listen_for("25,1025-5000", None) == "25,1025-5000"

    proc = cli("harness", "run", "--start-relay", "--ports", "sample:6", "--json", "port_sweep", timeout=120)
    report = json.loads(proc.stdout)
    facts = report["scenarios"][0]["facts"]
    served = parse_port_spec(facts["served_ports"]) if facts["served_ports"] else []
    not_served = [int(p) for p in facts["not_served_ports"]]
    # Everything the relay tried to bind (served, or not with a reason) is the sample.
    assert sorted(served + not_served) == sample
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert parse_port_spec(facts["port_pool"]) == served


def test_an_unknown_reason_fails_when_the_file_loads_naming_the_closest(cli: Any, tmp_path: Path) -> None:
    bad = tmp_path / "typo.toml"
    bad.write_text(
        '[[sends]]\nname = "x"\nto = ["a@b.example"]\nexpect = "250"\n'
        '[expect]\nevents = [{ kind = "queued", reason = "acepted", min = 1 }]\n'
    )
    proc = cli("harness", "run", "--start-relay", str(bad))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"smtpplus: error: {bad}: expect.events[0].reason: unknown reason 'acepted' — did you mean 'accepted'? "
        "(see docs/reasons.md)"
    )
    bad.write_text(bad.read_text().replace('kind = "queued", reason = "acepted"', 'kind = "campain"'))
    proc = cli("harness", "run", "--start-relay", str(bad))
    assert proc.returncode == 1
    assert "expect.events[0].kind: unknown event kind 'campain' — did you mean 'campaign'?" in proc.stderr


EVENTS_WRONG = """
[scenario]
name = "events_wrong"
ports = "sample:1"
[setup]
lists = [{ name = "evw" }]
users = [{ username = "evw-user", list = "evw", domains = "evw.example" }]
[[sends]]
name = "one"
user = "evw-user"
mail_from = "a@evw.example"
to = ["b@dest.example"]
expect = "250"
[expect]
events = [{ kind = "queued", reason = "accepted", count = 2 }]
"""


def test_a_failed_event_check_after_start_relay_prints_the_events_and_how_to_keep_them(cli: Any, tmp_path: Path) -> None:
    scenario = tmp_path / "events_wrong.toml"
    scenario.write_text(EVENTS_WRONG)
    proc = cli("harness", "run", "--start-relay", "--listen", "0*1", str(scenario), timeout=90)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "✗ events_wrong.events.queued/accepted" in out
    assert "the run's latest queued events (1 shown):" in out and "queued/accepted" in out
    assert "run again with --keep to keep it" in out
    assert "console" not in out  # the store it would point at is gone

    kept = cli("harness", "run", "--start-relay", "--keep", "--listen", "0*1", str(scenario), timeout=90)
    assert kept.returncode == 1
    assert "every event: `smtpplus console --no-relay --db " in kept.stdout
    [line] = [ln for ln in kept.stdout.splitlines() if "store kept at" in ln]
    path = Path(line.split("store kept at ")[1].split(" — ")[0])
    assert path.is_file()
    assert "events_wrong: kept lists hr-" in kept.stdout
    import shutil

    shutil.rmtree(path.parent)


def test_start_relay_refuses_a_store_whose_relay_is_live(cli: Any) -> None:
    """--start-relay on --db of a store a relay serves would run a second relay on it."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    ready = cli.store.parent / "relay-ready.json"
    relay = subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "relay", "--ports", "0", "--host", "127.0.0.1",
         "--ready-file", str(ready)],
        env=cli.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        import time

        deadline = time.monotonic() + 60
        while not ready.exists():
            assert relay.poll() is None, relay.stderr.read() if relay.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc = cli("harness", "run", "--start-relay", "--db", str(cli.store), "bad_input")
        assert proc.returncode == 1
        assert proc.stderr.strip().startswith(f"smtpplus: error: a relay is live on {cli.store}: --start-relay")
    finally:
        relay.terminate()
        relay.communicate(timeout=30)
