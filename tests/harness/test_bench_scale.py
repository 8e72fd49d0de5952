"""``smtpplus harness bench scale``: the relay on PostgreSQL against the relay on
SQLite, same load, as real processes (relays, a PostgreSQL server)."""

from __future__ import annotations

from typing import Any


def _check_quick_report(report: dict[str, Any]) -> None:
    assert report["bench"] == "scale" and report["parameters"]["connections"] == 4
    assert [r["label"] for r in report["runs"]] == ["relay on SQLite", "relay on PostgreSQL"]
    assert all(r["messages"] == 200 and r["failures"] == 0 for r in report["runs"])
    figures = {f["name"]: f for f in report["figures"]}
    assert figures["PostgreSQL / SQLite accept"]["value"] > 0
    assert figures["PostgreSQL / SQLite accept"]["target"] == "≥ 0.6"
    assert figures["acknowledged but not in the store"]["value"] == 0


def test_scale_bench_quick_run_into_an_empty_database_given(cli: Any, pg_cluster: Any) -> None:
    url = pg_cluster.new_database(template=None)
    try:
        report = cli.json("harness", "bench", "scale", "--quick", "--loop", "asyncio", "--db", url)
    finally:
        pg_cluster.drop_database(url)
    _check_quick_report(report)
    assert report["parameters"]["postgresql"] == "the server of --db"


def test_scale_bench_quick_run_on_a_private_server(cli: Any) -> None:
    report = cli.json("harness", "bench", "scale", "--quick", "--loop", "asyncio")
    _check_quick_report(report)
    assert report["parameters"]["postgresql"].startswith("a private server, fsync on")


def test_scale_bench_refuses_a_database_holding_a_store(cli: Any, pg_url: str) -> None:
    proc = cli("harness", "bench", "scale", "--quick", "--db", pg_url)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "already holds a smtpplus store — give an empty database" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_scale_bench_refuses_a_file_as_db(cli: Any, tmp_path: Any) -> None:
    proc = cli("harness", "bench", "scale", "--db", str(tmp_path / "x.db"))
    assert proc.returncode != 0 and "is not a PostgreSQL URL" in proc.stderr and "Traceback" not in proc.stderr
