"""Smoke runs of the delivery benchmarks (small sizes): they run end to end through
a real relay and sink and report their figures in the shared bench JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relay.store import campaigns, open_store


def _figures(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert set(report) == {"bench", "title", "parameters", "machine", "runs", "figures", "notes", "ok"}
    return {f["name"]: f for f in report["figures"]}


def test_e2e_bench_reports_rates_ratio_and_dequeue_cost(cli: Any) -> None:
    report = cli.json("harness", "bench", "e2e", "--messages", "200", "--connections", "4", "--dequeue-size", "2000")
    figures = _figures(report)
    assert report["bench"] == "e2e" and report["parameters"] == {
        "messages": 200, "connections": 4, "parallel": 8, "dequeue_queued": 2000,
    }
    accepted, delivered = report["runs"]
    assert accepted["messages"] == delivered["messages"] == 200 and accepted["failures"] == 0
    assert delivered["seconds"] >= accepted["seconds"] > 0  # the last arrival follows the last 250
    assert abs(figures["accept_rate_msg_s"]["value"] - accepted["rate"]) < 0.1  # the run's rate, unrounded
    assert figures["delivered_rate_msg_s"]["value"] > 0 and figures["ratio"]["value"] > 0
    assert figures["dequeue_ms_p50"]["value"] > 0 and figures["dequeue_cpu_ms_p50"]["value"] > 0
    targeted = {name: (f["target"], f["ok"]) for name, f in figures.items() if f["target"]}
    assert {name: target for name, (target, _) in targeted.items()} == {"ratio": "≥ 0.5", "dequeue_cpu_ms_p50": "≤ 0.5 ms"}
    assert report["ok"] == all(ok for _, ok in targeted.values())


def test_e2e_destinations_bench_compares_mx_with_the_smarthost(cli: Any) -> None:
    """MX delivery over the loopback DNS to 10 destinations on 127.0.0.2-9, against the
    smarthost, and with one destination slow and deferring (its mail never arrives)."""
    report = cli.json("harness", "bench", "e2e", "--destinations", "10", "--messages", "100", "--connections", "4")
    figures = _figures(report)
    assert report["bench"] == "e2e-destinations" and report["parameters"]["destinations"] == 10
    smarthost, mx, slow = report["runs"]
    assert smarthost["messages"] == mx["messages"] == 100 and slow["messages"] == 90  # d000's 10 wait
    assert figures["mx_ratio"]["target"] == "≥ 0.7" and figures["mx_ratio"]["value"] > 0
    assert figures["others_p99_ratio"]["target"] == "≤ 1.2" and figures["others_p99_ratio"]["value"] > 0


def test_priority_bench_measures_every_probe_in_its_db_scratch_store(cli: Any, tmp_path: Path) -> None:
    scratch = tmp_path / "bench" / "scratch.db"
    scratch.parent.mkdir()
    report = cli.json("harness", "bench", "priority", "--members", "300", "--probes", "5", "--rate", "200",
                      "--db", str(scratch))
    figures = _figures(report)
    assert report["bench"] == "priority" and report["parameters"]["probes"] == 5
    probes, campaign = report["runs"]
    assert probes["messages"] == 5 and probes["failures"] == 0  # sent through the shared load generator
    delivered = figures["campaign_delivered_during_run"]["value"]
    assert 0 < delivered <= 300 and campaign["messages"] == delivered  # the campaign was draining meanwhile
    p50, p99, worst = (figures[f"probe_latency_ms_{k}"]["value"] for k in ("p50", "p99", "max"))
    assert 0 < p50 <= p99 <= worst
    assert figures["probe_latency_ms_p99"]["target"] == "≤ 60 ms"  # 2/R + 50 ms at R = 200
    assert figures["probe_latency_ms_p99"]["ok"] == (p99 <= 60) == report["ok"]
    # The run's store is where --db said, kept for inspection; the dequeue scratch is gone.
    db = open_store(scratch)
    try:
        [campaign_row] = campaigns.list_campaigns(db)
        assert (campaign_row.list_name, campaign_row.total, campaign_row.mail_from) == ("bench", 300, "news@bench.example")
    finally:
        db.close()
    assert sorted(p.name for p in scratch.parent.iterdir() if not p.name.startswith("scratch.db-")) == [
        "scratch-bench-data", "scratch.db"
    ]


def test_benches_refuse_an_existing_store_and_document_db(cli: Any, tmp_path: Path) -> None:
    existing = tmp_path / "real.db"
    existing.write_bytes(b"")
    for bench in ("e2e", "priority"):
        refused = cli("harness", "bench", bench, "--db", str(existing))
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert refused.stderr.strip() == (
            f"smtpplus: error: --db {existing} already exists — the bench needs a new scratch store; "
            "give a path that does not exist"
        )
        assert "--db PATH" in cli("harness", "bench", bench, "--help", check=True).stdout
    assert existing.read_bytes() == b""
