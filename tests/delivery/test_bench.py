"""Smoke runs of the delivery benchmarks (small sizes): they run end to end through
a real relay and sink and report their figures as JSON."""

from __future__ import annotations

from typing import Any


def test_e2e_bench_reports_rates_ratio_and_dequeue_cost(cli: Any) -> None:
    report = cli.json("harness", "bench", "e2e", "--messages", "200", "--connections", "4", "--dequeue-size", "2000")
    figures = report["figures"]
    assert report["bench"] == "e2e" and figures["messages"] == 200 and figures["dequeue_queued"] == 2000
    assert figures["accept_rate_msg_s"] > 0 and figures["delivered_rate_msg_s"] > 0
    assert figures["ratio"] > 0 and figures["dequeue_ms_p50"] > 0 and figures["dequeue_cpu_ms_p50"] > 0
    assert set(report["passed"]) == {"ratio", "dequeue_cpu_ms_p50"}


def test_priority_bench_measures_every_probe(cli: Any) -> None:
    report = cli.json("harness", "bench", "priority", "--members", "300", "--probes", "5", "--rate", "200")
    figures = report["figures"]
    assert report["bench"] == "priority" and figures["probes"] == 5
    assert 0 < figures["campaign_delivered_during_run"] <= 300  # the campaign was draining meanwhile
    assert 0 < figures["probe_latency_ms_p50"] <= figures["probe_latency_ms_p99"] <= figures["probe_latency_ms_max"]
    assert report["targets"]["probe_latency_ms_p99"].endswith("= 60 ms")
