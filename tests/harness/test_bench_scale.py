"""``smtpplus harness bench scale``: relays on PostgreSQL and SQLite stores under the
same load, as real processes (relays, a PostgreSQL server, a capture sink)."""

from __future__ import annotations

import json
from typing import Any


def _quick(cli: Any, *args: str) -> dict[str, Any]:
    proc = cli("harness", "bench", "scale", "--quick", "--loop", "asyncio", "--json", *args, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    assert report["bench"] == "scale"
    runs = {r["label"]: r for r in report["runs"]}
    assert runs["accept: one relay, SQLite"]["failures"] == 0 and runs["accept: one relay, SQLite"]["messages"] > 0
    assert runs["accept: one relay, PostgreSQL"]["failures"] == 0 and runs["accept: one relay, PostgreSQL"]["messages"] > 0
    figures = {f["name"]: f for f in report["figures"]}
    assert figures["accept PostgreSQL / SQLite"]["value"] > 0 and figures["accept PostgreSQL / SQLite"]["target"] == "≥ 0.6"
    return report


def test_scale_bench_quick_run_on_a_private_server(cli: Any) -> None:
    # --queued and --dequeue-seconds given: the figures' labels name the count, and a
    # quick run keeps to them (never the default million).
    report = _quick(cli, "--queued", "2000", "--dequeue-seconds", "1")
    assert report["parameters"]["postgresql"].startswith("a private server, fsync on")
    assert report["parameters"]["queued"] == 2000 and report["parameters"]["dequeue_seconds"] == 1.0
    runs = {r["label"]: r for r in report["runs"]}
    assert runs["fill: 2,000 queued (bulk load, PostgreSQL)"]["messages"] == 2000
    rounds = runs["dequeue rounds with 2,000 queued (PostgreSQL)"]
    # The timed claim rounds (warm-up left out) and the delivered mail between them.
    assert rounds["messages"] >= 100 and rounds["delivered"] > rounds["messages"]
    figures = {f["name"]: f for f in report["figures"]}
    p99 = figures["dequeue p99 with 2,000 queued (PostgreSQL)"]
    assert p99["value"] > 0 and p99["target"] == "≤ 2 ms"
    assert figures["dequeue p50 with 2,000 queued (PostgreSQL)"]["value"] <= p99["value"]


def test_scale_bench_defaults_to_a_million_queued(cli: Any) -> None:
    proc = cli("harness", "bench", "scale", "--help")
    assert proc.returncode == 0 and "1000000" in proc.stdout and "--dequeue-seconds" in proc.stdout


def test_scale_bench_refuses_what_is_not_a_postgresql_url(cli: Any, tmp_path: Any) -> None:
    proc = cli("harness", "bench", "scale", "--pg", str(tmp_path / "x.db"))
    assert proc.returncode != 0 and "is not a postgresql:// URL" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
