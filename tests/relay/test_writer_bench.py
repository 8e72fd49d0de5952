"""The group-commit writer, all-or-nothing enqueue, and the accept benchmark end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

from harness.bench.accept import AcceptParams, run_accept_bench
from harness.bench.loadgen import make_message
from harness.bench.report import BenchReport, Measurement
from relay.reasons import Reason
from relay.service import RelayService
from relay.store import AsyncStore
from relay.store.intake import NewMessage
from relay.writer import StoreWriter, WriteFailed
from tests.relay.support import Raw, Seeded, settle, stored_body, stored_messages, stored_recipients


async def test_concurrent_enqueues_share_commits(seeded: Seeded) -> None:
    async with AsyncStore(seeded.store_path) as store:
        writer = StoreWriter(store)
        writer.start()
        messages = [NewMessage(mail_from="x@a.example", recipients=[f"r{i}@d.example"], data=b"x\r\n") for i in range(40)]
        queued = await asyncio.gather(*(writer.enqueue(m) for m in messages))
        await writer.close()
    assert [q.queue_id for q in queued] == [m.queue_id for m in messages]
    assert writer.messages_written == 40 and writer.batches <= 3
    assert len(stored_messages(seeded.store_path)) == 40


async def test_a_failed_commit_raises_with_the_reply_and_stores_nothing(seeded: Seeded) -> None:
    async with AsyncStore(seeded.store_path) as store:
        await store.run(lambda db: db.execute("PRAGMA query_only = ON"))
        writer = StoreWriter(store)
        writer.start()
        results = await asyncio.gather(
            *(writer.enqueue(NewMessage(mail_from="x@a.example", recipients=["r@d.example"], data=b"x\r\n")) for _ in range(3)),
            return_exceptions=True,
        )
        await writer.close()
    assert all(isinstance(r, WriteFailed) and r.reply.startswith("451 4.3.0 ") and r.reason is Reason.STORE_UNAVAILABLE for r in results)
    assert stored_messages(seeded.store_path) == []


async def test_clients_vanishing_at_end_of_data_leave_whole_messages_or_none(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    async def vanish(n: int) -> None:
        raw = await Raw.connect(relay.served[n % 2])
        await raw.starttls(tls_files)
        assert (await raw.login("alice"))[0] == 235
        await raw.send(b"MAIL FROM:<x@a.example>\r\nRCPT TO:<a@d.example>\r\nRCPT TO:<b@d.example>\r\nDATA\r\n")
        for _ in range(4):
            await raw.reply()
        await raw.send(b"From: x@a.example\r\n\r\n" + b"line\r\n" * 200 + b".\r\n")
        raw.writer.transport.abort()  # gone before the reply

    await asyncio.gather(*(vanish(n) for n in range(10)))
    await settle(relay)
    for row in stored_messages(seeded.store_path):
        assert stored_recipients(seeded.store_path, row["queue_id"]) == ["a@d.example", "b@d.example"]
        assert stored_body(seeded.store_path, row["queue_id"]).endswith(b"line\r\n" * 200)


def test_load_messages_have_the_requested_size() -> None:
    for size in (200, 2048, 10_000):
        data = make_message(size, "a@b.example", "c@d.example")
        assert abs(len(data) - size) <= 2 and data.endswith(b"\r\n")


def test_report_json_and_targets() -> None:
    report = BenchReport("demo", params={"n": 1})
    report.add(Measurement("reference", messages=100, seconds=1.0))
    report.add(Measurement("subject", messages=80, seconds=1.0))
    assert report.compare("ratio", "subject", "reference", at_least=0.75) == 0.8
    report.figure("p99", 60.0, "ms", at_most=50)
    data = report.to_json()
    assert [f["value"] for f in data["figures"]] == [0.8, 60.0] and data["ok"] is False
    assert [(f["target"], f["ok"]) for f in data["figures"]] == [("≥ 0.75", True), ("≤ 50 ms", False)]
    assert [r["rate"] for r in data["runs"]] == [100.0, 80.0]


async def test_accept_bench_runs_both_sides_with_the_same_load(tmp_path: Path) -> None:
    params = AcceptParams(connections=4, messages=40, seconds=20, warmup_messages=8, loop="asyncio")
    report = await run_accept_bench(params, tmp_path / "bench")
    sink, relay = report.runs
    assert isinstance(sink, Measurement) and isinstance(relay, Measurement)
    assert (sink.label, relay.label) == ("raw aiosmtpd sink", "relay")
    assert sink.messages == relay.messages == 40 and sink.failures == relay.failures == 0
    assert report.value("acknowledged but not in the store") == 0
    assert report.value("relay / raw sink") > 0
    assert [f.target for f in report.figures] == ["≥ 0.9", "≤ 0 messages"]
