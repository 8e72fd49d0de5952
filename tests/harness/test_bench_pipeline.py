"""`smtpplus harness bench accept --pipeline N` (several messages per round trip, raw
pipelined bytes over the TLS stream) as a real subprocess, smoke-sized (--quick)."""

from __future__ import annotations

from typing import Any


def test_accept_bench_pipelined_quick(cli: Any) -> None:
    report = cli.json("harness", "bench", "accept", "--quick", "--pipeline", "4", "--loop", "asyncio")
    assert report["parameters"]["mode"] == "pipelined, 4 messages per round trip"
    sink, relay = report["runs"]
    assert (sink["label"], relay["label"]) == ("raw aiosmtpd sink", "relay")
    # Every message of both runs answered 250 at its place in the pipelined replies.
    assert sink["messages"] == relay["messages"] == 200 and sink["failures"] == relay["failures"] == 0
    assert sink["connects"] == relay["connects"] == 4  # one connection each, reused for every batch
    figures = {f["name"]: f for f in report["figures"]}
    assert figures["relay / raw sink"]["target"] == "≥ 0.75" and figures["relay / raw sink"]["value"] > 0
    assert figures["acknowledged but not in the store"]["value"] == 0


def test_pipeline_and_new_connection_contradict(cli: Any) -> None:
    proc = cli("harness", "bench", "accept", "--quick", "--pipeline", "4", "--new-connection")
    assert proc.returncode == 1 and "contradict" in proc.stderr and "Traceback" not in proc.stderr
