"""The harness's served-port pool with implicit-TLS ports (RFC 8314) in it: the sweep
drives them with TLS on connect; clear-text and raw steps stay on the STARTTLS ones."""

from __future__ import annotations

from pathlib import Path

from harness.report import failure_details
from harness.scenario import RunOptions, run_files
from relay.ports import parse_port_spec


def _explain(report: object) -> str:
    return "\n".join(failure_details(report))  # type: ignore[arg-type]


async def test_the_sweep_drives_implicit_tls_ports_with_tls_on_connect() -> None:
    report = await run_files(
        ["port_sweep"], RunOptions(store_path=None, timeout=20), start_relay=True, listen="0*3",
        relay_config={"tls_ports": "0*2"},
    )
    assert report.passed, _explain(report)
    facts = report.scenarios[0].facts
    implicit = parse_port_spec(facts["implicit_tls_ports"])
    served = parse_port_spec(facts["served_ports"])
    assert len(implicit) == 2 and len(served) == 5 and set(implicit) <= set(served)
    by_name = {c.name: c for c in report.checks}
    # STARTTLS on an implicit-TLS port would time out: every port took its message.
    assert "×5/5 (5 ports)" in by_name["starttls-auth-send"].observed
    assert by_name["starttls-auth-send.delivered"].observed == "5 arrived"


async def test_clear_text_and_raw_steps_stay_off_implicit_tls_ports() -> None:
    report = await run_files(
        ["authorization", "bad_input"], RunOptions(store_path=None, timeout=20), start_relay=True, listen="0*2",
        relay_config={"tls_ports": "0*2"},
    )
    assert report.passed, _explain(report)


async def test_a_clear_text_step_over_every_served_port_uses_the_starttls_ones(tmp_path: Path) -> None:
    scenario = tmp_path / "clear.toml"
    scenario.write_text(
        """
[scenario]
name = "clear"
ports = "served"
[setup]
lists = [{ name = "clear" }]
users = [{ username = "clear-user", list = "clear", domains = "clear.example" }]
[[sends]]
name = "no-tls"
user = "clear-user"
tls = "none"
mail_from = "a@clear.example"
to = ["b@dest.example"]
expect = "538 5.7.11"
"""
    )
    report = await run_files([str(scenario)], RunOptions(store_path=None, timeout=10), start_relay=True,
                             listen="0", relay_config={"tls_ports": "0"})
    assert report.passed, _explain(report)  # on the STARTTLS port only
    [facts] = [s.facts for s in report.scenarios]
    implicit = facts["implicit_tls_ports"]
    observed = {c.name: c for c in report.checks}["no-tls"].observed
    assert "×1/1 (port " in observed and f"port {implicit})" not in observed
