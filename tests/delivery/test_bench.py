"""Smoke runs of the delivery benchmarks (small sizes): they run end to end through
a real relay and sink and report their figures as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relay.store import campaigns, open_store


def test_e2e_bench_reports_rates_ratio_and_dequeue_cost(cli: Any) -> None:
    report = cli.json("harness", "bench", "e2e", "--messages", "200", "--connections", "4", "--dequeue-size", "2000")
    figures = report["figures"]
    assert report["bench"] == "e2e" and figures["messages"] == 200 and figures["dequeue_queued"] == 2000
    assert figures["accept_rate_msg_s"] > 0 and figures["delivered_rate_msg_s"] > 0
    assert figures["ratio"] > 0 and figures["dequeue_ms_p50"] > 0 and figures["dequeue_cpu_ms_p50"] > 0
    assert set(report["passed"]) == {"ratio", "dequeue_cpu_ms_p50"}


def test_priority_bench_measures_every_probe_in_its_db_scratch_store(cli: Any, tmp_path: Path) -> None:
    scratch = tmp_path / "bench" / "scratch.db"
    scratch.parent.mkdir()
    report = cli.json("harness", "bench", "priority", "--members", "300", "--probes", "5", "--rate", "200",
                      "--db", str(scratch))
    figures = report["figures"]
    assert report["bench"] == "priority" and figures["probes"] == 5
    assert 0 < figures["campaign_delivered_during_run"] <= 300  # the campaign was draining meanwhile
    assert 0 < figures["probe_latency_ms_p50"] <= figures["probe_latency_ms_p99"] <= figures["probe_latency_ms_max"]
    assert report["targets"]["probe_latency_ms_p99"].endswith("= 60 ms")
    # The run's store is where --db said, kept for inspection; the dequeue scratch is gone.
    db = open_store(scratch)
    try:
        [campaign] = campaigns.list_campaigns(db)
        assert (campaign.list_name, campaign.total, campaign.mail_from) == ("bench", 300, "news@bench.example")
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
