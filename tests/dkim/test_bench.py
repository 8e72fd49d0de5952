"""``smtpplus harness bench dkim`` runs, verifies its signatures and reports CPU per
signature for both key types (the figures are reported, not asserted: CPU time on a
shared machine is no test)."""

from __future__ import annotations

from typing import Any


def test_the_dkim_bench_reports_cpu_per_signature(cli: Any) -> None:
    report = cli.json("harness", "bench", "dkim", "--quick")
    figures = {f["name"]: f for f in report["figures"]}
    assert set(figures) == {"ed25519 CPU per signature", "rsa-2048 CPU per signature"}
    assert figures["ed25519 CPU per signature"]["target"] == "≤ 1 ms"
    assert figures["rsa-2048 CPU per signature"]["target"] == "≤ 2 ms"
    assert all(f["value"] > 0 and f["unit"] == "ms" for f in figures.values())
    labels = [r["label"] for r in report["runs"]]
    assert labels == ["smtpplus ed25519", "smtpplus rsa-2048", "dkimpy rsa-2048 (pure Python RSA, reference)"]


def test_the_e2e_bench_signs_every_message_with_dkim(cli: Any) -> None:
    report = cli.json("harness", "bench", "e2e", "--messages", "60", "--connections", "2", "--dequeue-size", "100",
                      "--dkim", "ed25519")
    figures = {f["name"]: f["value"] for f in report["figures"]}
    assert report["parameters"]["dkim"] == "ed25519"
    assert figures["dkim_signed"] == 60 and figures["delivered_rate_msg_s"] > 0
