"""The one bench report (JSON and table), ``--check``/``--json``/``--quick`` on every
bench, and the load generator's numbered, paced, pre-connected load."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from console.cli.bench_common import show_report
from console.cli.common import CliError
from harness.bench.loadgen import LoadSpec, make_message, run_load
from harness.bench.report import BenchReport, Measurement, Run
from harness.sink import CaptureSink

BENCHES = ("accept", "e2e", "priority", "console", "dkim", "scale")


def _report() -> BenchReport:
    report = BenchReport("demo", params={"connections": 4, "store": None}, title="A demo bench")
    report.add(Measurement("reference", messages=1000, seconds=2.0, extra={"p99_ms": 3.5, "errors": {"421": 1}}))
    report.add(Run("setup", {"rows": 12}))
    report.figure("ratio", 0.9, at_least=0.75, about="subject / reference")
    report.figure("p99", 80.0, "ms", at_most=50)
    report.figure("rows", 12, "rows")
    report.notes.append("a note")
    return report


def test_the_json_shape_is_the_same_for_every_bench() -> None:
    data = json.loads(json.dumps(_report().to_json()))
    assert list(data) == ["bench", "title", "parameters", "machine", "runs", "figures", "notes", "ok"]
    assert data["parameters"] == {"connections": 4, "store": None} and data["title"] == "A demo bench"
    assert data["runs"][0] == {"label": "reference", "messages": 1000, "failures": 0, "seconds": 2.0, "rate": 500.0,
                               "p99_ms": 3.5, "errors": {"421": 1}}
    assert data["runs"][1] == {"label": "setup", "rows": 12}
    assert [(f["name"], f["target"], f["ok"]) for f in data["figures"]] == [
        ("ratio", "≥ 0.75", True), ("p99", "≤ 50 ms", False), ("rows", None, None),
    ]
    assert set(data["figures"][0]) == {"name", "value", "unit", "target", "at_least", "at_most", "ok", "about"}
    assert data["ok"] is False and data["notes"] == ["a note"]


def test_the_table_shows_runs_figures_targets_and_the_verdict() -> None:
    console = Console(record=True, width=160, color_system=None)
    _report().print_table(console)
    text = console.export_text()
    assert "A demo bench" in text and "parameters: connections=4, store=—" in text
    assert "reference" in text and "1,000" in text and "500" in text and "p99_ms" in text
    assert "errors" not in text  # nested counters stay in the JSON
    assert "≥ 0.75" in text and "✓" in text and "≤ 50 ms" in text and "✗ missed" in text
    assert "note: a note" in text and text.rstrip().endswith("missed: p99")


def test_check_exits_1_after_printing_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CliError) as missed:
        show_report(_report(), as_json=True, check=True)
    assert str(missed.value) == "demo: target missed: p99 = 80 ms (target ≤ 50 ms)"
    assert json.loads(capsys.readouterr().out)["ok"] is False
    met = BenchReport("demo")
    met.figure("ratio", 0.8, at_least=0.75)
    show_report(met, as_json=False, check=True)  # no error
    assert "all targets met" in capsys.readouterr().out


def test_every_bench_has_json_check_and_quick(cli: Any) -> None:
    for bench in BENCHES:
        usage = cli("harness", "bench", bench, "--help", check=True).stdout
        assert all(option in usage for option in ("--json", "--check", "--quick")), bench


async def test_loadgen_sends_numbered_paced_messages_on_connections_opened_first(tls_files: dict[str, Path]) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls_files["cert"], tls_files["key"])
    sink = CaptureSink("127.0.0.1", 0, tls_context=server, accept_auth=True, keep_data=False)
    await sink.start()
    replies: list[int] = []

    def message(n: int) -> tuple[list[str], bytes]:
        rcpt = f"n{n}@sink.example"
        return [rcpt], make_message(300, "load@bench.example", rcpt, {"Message-ID": f"<m{n}@bench>"})

    try:
        result = await run_load(LoadSpec(
            ports=[sink.port], connections=2, messages=6, tls_context=ssl.create_default_context(cafile=str(tls_files["ca"])),
            username="u", password="p", mail_from="load@bench.example", connect_first=True, message=message,
            schedule=[0.0, 0.0, 0.2, 0.2, 0.4, 0.4], on_reply=lambda n, _text: replies.append(n),
        ))
    finally:
        await sink.stop()
    assert (result.sent, result.failed, result.connects) == (6, 0, 2)
    assert sorted(replies) == list(range(6))
    assert sorted(r.message_id or "" for r in sink.messages) == [f"<m{n}@bench>" for n in range(6)]
    assert sorted(r.rcpt_tos[0] for r in sink.messages) == [f"n{n}@sink.example" for n in range(6)]
    assert 0.4 <= result.last_reply <= result.seconds  # the last two waited for their moment
    assert result.started_at <= min(r.at for r in sink.messages)


def test_accept_bench_quick_run_reports_in_the_shared_shape(cli: Any) -> None:
    report = cli.json("harness", "bench", "accept", "--quick", "--loop", "asyncio")
    assert report["bench"] == "accept" and report["parameters"]["connections"] == 4
    assert [r["label"] for r in report["runs"]] == ["raw aiosmtpd sink", "relay"]
    assert all(r["messages"] == 200 and r["failures"] == 0 for r in report["runs"])
    figures = {f["name"]: f for f in report["figures"]}
    assert figures["relay / raw sink"]["value"] > 0 and figures["relay / raw sink"]["target"] == "≥ 0.9"
    assert figures["acknowledged but not in the store"]["value"] == 0
