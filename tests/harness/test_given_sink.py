"""A scenario against a sink someone else runs: a real ``smtpplus sink --record``
subprocess as the relay's next hop, read through its record file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.raw import RawSend, raw_send
from harness.report import failure_details
from harness.scenario import RunOptions, run_files
from harness.sink import CaptureSink
from tests.conftest import ROOT


@pytest.fixture
def running_sink(cli: Any, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``smtpplus sink --port 0 --record … --ready-file …`` as a real subprocess; its
    record file already holds a record of an earlier run."""
    record = tmp_path / "sink.jsonl"
    record.write_text(json.dumps({"seq": 1, "mail_from": "old@run.example", "harness_id": None}) + "\n")
    ready = tmp_path / "sink-ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "sink", "--port", "0", "--quiet",
         "--record", str(record), "--ready-file", str(ready)],
        env=cli.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the sink did not write its ready file"
            time.sleep(0.05)
        yield json.loads(ready.read_text())["port"], record
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


GIVEN_SINK = """
[scenario]
name = "given_sink"
ports = "served"
pause_delivery_until_queued = true
[setup]
settings = {{ "delivery.parallel" = 1 }}
lists = [{{ name = "given" }}]
users = [{{ username = "given-user", list = "given", domains = "given.example" }}]
[sink]
address = "127.0.0.1:{port}"
record = "sink.jsonl"
[[sends]]
name = "low"
user = "given-user"
mail_from = "a@given.example"
to = ["b@dest.example"]
headers = {{ "X-Priority" = "5" }}
expect = "250"
[[sends]]
name = "urgent"
user = "given-user"
mail_from = "a@given.example"
to = ["b@dest.example"]
headers = {{ "X-Priority" = "1" }}
expect = "250"
[expect]
order = ["urgent", "low"]
counts = {{ accepted = 4, delivered = 4, at_sink = 4 }}
"""


async def test_a_scenario_checks_delivery_at_a_sink_someone_else_runs(running_sink: tuple[int, Path], tmp_path: Path) -> None:
    port, record = running_sink
    scenario = tmp_path / "given_sink.toml"  # record = "sink.jsonl" is beside it
    scenario.write_text(GIVEN_SINK.format(port=port))
    report = await run_files([str(scenario)], RunOptions(store_path=None, timeout=10), start_relay=True, listen="0*2")
    assert report.passed, "\n".join(failure_details(report))
    checks = {c.name: c for c in report.checks}
    assert checks["low.delivered"].observed == "2 arrived" and checks["urgent.delivered"].observed == "2 arrived"
    assert checks["count.at_sink"].observed == "4"  # the earlier run's record is not counted

    records = [json.loads(line) for line in record.read_text().splitlines()][1:]
    assert len(records) == 4
    # Fields of their own, and no misleading empty "data" (the sink was not asked to keep it).
    assert all("data" not in r for r in records)
    assert [r["x_priority"] for r in records] == ["1", "1", "5", "5"]
    assert [r["harness_id"].split()[1] for r in records] == ["urgent", "urgent", "low", "low"]
    assert all(r["subject"] in ("harness low", "harness urgent") and r["message_id"] for r in records)


async def test_without_its_record_file_the_given_sink_is_a_failed_check(tmp_path: Path) -> None:
    scenario = tmp_path / "no_record.toml"
    scenario.write_text(GIVEN_SINK.format(port=9).replace('record = "sink.jsonl"', 'record = "missing.jsonl"'))
    report = await run_files([str(scenario)], RunOptions(store_path=None, timeout=10), start_relay=True, listen="0*1")
    failed = {c.name: c for c in report.failures}
    assert set(failed) == {"sink"}
    assert failed["sink"].observed == f"no file {tmp_path / 'missing.jsonl'}"
    assert "smtpplus sink --record" in failed["sink"].detail


@pytest.mark.parametrize("keep_data", [False, True])
async def test_the_record_file_has_data_only_when_kept(tmp_path: Path, keep_data: bool) -> None:
    path = tmp_path / "rec.jsonl"
    async with CaptureSink("127.0.0.1", 0, path, keep_data=keep_data) as sink:
        payload = b"X-Harness-Id: run send 25 0\r\nSubject: kept?\r\n\r\nbody"  # + CRLF.CRLF
        result = await raw_send(RawSend("127.0.0.1", sink.port, b"a@b.example", [b"c@d.example"], payload, timeout=10))
        assert result.ok, result.error
    [line] = path.read_text().splitlines()
    recorded = json.loads(line)
    assert recorded["harness_id"] == "run send 25 0" and recorded["subject"] == "kept?"
    assert ("data" in recorded) is keep_data
    if keep_data:
        assert recorded["data"] == payload.decode() + "\r\n"


def test_an_unknown_chaos_key_names_the_valid_ones(cli: Any) -> None:
    proc = cli("sink", "--port", "0", "--chaos", "bogus=1")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "smtpplus: error: unknown chaos key 'bogus' — valid keys: "
        "4xx, 5xx, 4xx-match, 5xx-match, 4xx-first, 4xx-reply, 5xx-reply, seed"
    )
    assert os.linesep not in proc.stderr.strip()
