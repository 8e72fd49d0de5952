"""``smtpplus harness bench accept``: the relay's acceptance rate against a raw aiosmtpd sink.

Both servers run as their own process on 127.0.0.1 with the same event-loop type and
the same certificate: the raw sink (:mod:`harness.bench.rawsink`: STARTTLS, any AUTH,
nothing stored) and the relay (``smtpplus relay`` on a scratch store, delivery
paused, so only acceptance is measured: policy, priority and the durable enqueue).
The same load drives both (:mod:`harness.bench.loadgen`): by default 32
connections, STARTTLS + AUTH once per connection, 2 KB messages, one recipient;
with ``new_connection`` a connection + STARTTLS + AUTH for every message; with
``pipeline`` N, N messages per round trip on each connection
(:mod:`harness.bench.pipeline`: raw pipelined bytes over the TLS stream). A short
warm-up precedes each measured run. The report gives both rates and the ratio
(target ≥ 0.9 on reused connections, the headline mode; ≥ 0.5 with a new connection
per message; ≥ 0.75 pipelined), and checks that every message the relay acknowledged
is in its store. With ``stored`` the relay also runs on a second store already holding
that many messages (same process tree, right after the empty-store run), and the
report gives its rate over the empty store's (target ≥ 0.85): acceptance must not
slow down as the store grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.bench.loadgen import LoadResult, LoadSpec, run_load
from harness.bench.pipeline import run_pipelined
from harness.bench.report import BenchError, BenchReport, Measurement

USER = "bench"
PASSWORD = "bench-password-not-a-secret"
DOMAIN = "bench.example"
SINK_LABEL = "raw aiosmtpd sink"
RELAY_LABEL = "relay"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class AcceptParams:
    connections: int = 32
    messages: int = 20_000  # per measured run (upper bound)
    seconds: float = 15.0  # per measured run (upper bound)
    size: int = 2048
    recipients: int = 1
    new_connection: bool = False
    pipeline: int = 0  # N > 1: N messages per round trip on each connection (0: one at a time)
    loop: str = "uvloop" if sys.platform.startswith("linux") else "asyncio"
    rounds: int = 1  # alternate sink/relay this many times; the best run of each counts
    warmup_messages: int = 300
    stored: int = 0  # also run the relay on a store already holding this many messages

    @property
    def target(self) -> float:
        if self.new_connection:
            return 0.5
        return 0.75 if self.pipeline else 0.9

    @property
    def mode(self) -> str:
        if self.new_connection:
            return "new connection per message"
        if self.pipeline:
            return f"pipelined, {self.pipeline} messages per round trip"
        return "reused connections"


STORED_TARGET = 0.85  # acceptance with the store already full, over an empty store

_FILL = (
    "import sys\n"
    "from relay.store import open_store\n"
    "from relay.store.bulk import queue_bulk\n"
    "db = open_store(sys.argv[1])\n"
    "queue_bulk(db, int(sys.argv[2]))\n"
    "db.close()\n"
)


def fill_store(store: Path | str, count: int) -> float:
    """Queue ``count`` bench messages into ``store`` (a child process: one transaction,
    rows from generators); returns the seconds it took."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", _FILL, str(store), str(count)], cwd=ROOT, check=True, timeout=1800)
    return time.perf_counter() - started


def prepare_store(workdir: Path, name: str = "bench.db", *, location: str | None = None) -> tuple[Path, Path, Path]:
    """A scratch store with one active user and a verified domain, delivery paused, and
    a certificate pair. Returns (store, cert, key). ``location``: that store (a
    postgresql:// URL) instead of the file ``workdir / name``."""
    from relay.admin import users as user_admin
    from relay.admin import verification as verification_admin
    from relay.store import directory, open_store, transaction
    from relay.store.settings import Keys, set_setting
    from relay.tls import load_tls

    store = workdir / name
    db = open_store(location if location is not None else store)
    try:
        directory.create_list(db, "bench")
        user_admin.create_user(
            db, list_name="bench", username=USER, credentials=user_admin.new_credentials(PASSWORD),
            domains=[DOMAIN], active=True,
        )
        verification_admin.approve(db, [DOMAIN], "benchmark")
        with transaction(db):
            set_setting(db, Keys.PAUSED, True)
    finally:
        db.close()
    material = load_tls(None, None, workdir / "data", "localhost")
    return store, material.cert_path, material.key_path


def _wait_ready(proc: subprocess.Popen[bytes], ready: Path, what: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            return dict(json.loads(ready.read_text()))
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before it was ready")
        time.sleep(0.05)
    raise BenchError(f"{what} was not ready after {timeout:.0f}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def raw_sink_process(workdir: Path, cert: Path, key: Path, loop: str) -> Any:
    ready = workdir / "rawsink.ready.json"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.bench.rawsink", "--cert", str(cert), "--key", str(key),
         "--ready-file", str(ready), "--loop", loop],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield [int(_wait_ready(proc, ready, "the raw sink")["port"])], proc.pid
    finally:
        _stop(proc)


@contextlib.contextmanager
def relay_process(workdir: Path, store: Path, cert: Path, key: Path, loop: str) -> Any:
    ready = workdir / "relay.ready.json"
    ready.unlink(missing_ok=True)
    config = workdir / "relay.toml"
    config.write_text(
        f'host = "127.0.0.1"\nports = "0"\nserver_name = "bench.localhost"\n'
        f'tls_cert = "{cert}"\ntls_key = "{key}"\ndata_dir = "{workdir / "data"}"\n'
    )
    env = dict(os.environ, SMTPPLUS_EVENT_LOOP=loop)
    env.pop("SMTPPLUS_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "relay", "--config", str(config),
         "--db", str(store), "--ready-file", str(ready)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield list(_wait_ready(proc, ready, "the relay")["served"]), proc.pid
    finally:
        _stop(proc)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), from /proc; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(
    label: str, ports: list[int], pid: int, params: AcceptParams, context: ssl.SSLContext, replies: list[str] | None
) -> Measurement:
    def spec(messages: int, seconds: float | None) -> LoadSpec:
        return LoadSpec(
            ports=ports, connections=params.connections, messages=messages, seconds=seconds, size=params.size,
            recipients=params.recipients, starttls=True, tls_context=context, username=USER, password=PASSWORD,
            mail_from=f"load@{DOMAIN}", new_connection=params.new_connection,
            on_reply=(lambda _n, text: replies.append(text)) if replies is not None else None,
        )

    async def load(messages: int, seconds: float | None) -> LoadResult:
        if params.pipeline:
            return await run_pipelined(spec(messages, seconds), params.pipeline)
        return await run_load(spec(messages, seconds))

    await load(params.warmup_messages, 10.0)
    cpu_before, client_before = cpu_seconds(pid), cpu_seconds(os.getpid())
    result = await load(params.messages, params.seconds)
    cpu_after, client_after = cpu_seconds(pid), cpu_seconds(os.getpid())
    extra: dict[str, Any] = {
        "p50_ms": round(result.percentile(0.5) * 1000, 2),
        "p99_ms": round(result.percentile(0.99) * 1000, 2),
        "connects": result.connects,
    }
    if cpu_before is not None and cpu_after is not None and result.sent:
        # The server's own CPU per message: steadier than rates on a shared machine.
        extra["server_cpu_us_per_msg"] = round((cpu_after - cpu_before) / result.sent * 1e6, 1)
    if client_before is not None and client_after is not None and result.sent:
        # The load generator's (this process): the two share the machine's cores, so
        # a server that makes its client work harder per message is slower too.
        extra["client_cpu_us_per_msg"] = round((client_after - client_before) / result.sent * 1e6, 1)
    if result.errors:
        extra["errors"] = dict(result.errors.most_common(5))
    return Measurement(label, result.sent, result.seconds, result.failed, extra)


async def run_accept_bench(params: AcceptParams, workdir: Path | None = None) -> BenchReport:
    """Run the benchmark; everything (store, certificate, processes) lives in ``workdir``
    (a temporary directory when None) and is stopped before returning."""
    async with _workdir(workdir) as where:
        store, cert, key = await asyncio.to_thread(prepare_store, where)
        full_store: Path | None = None
        fill_seconds = 0.0
        if params.stored:
            full, _, _ = await asyncio.to_thread(prepare_store, where, "stored.db")
            fill_seconds = await asyncio.to_thread(fill_store, full, params.stored)
            full_store = full
        context = ssl.create_default_context(cafile=str(cert))
        report = BenchReport(
            "accept",
            title="Relay acceptance rate (delivery paused) against a raw aiosmtpd sink, same load",
            params={
                "connections": params.connections, "size": params.size, "recipients": params.recipients,
                "mode": params.mode,
                "loop": params.loop, "messages_max": params.messages, "seconds_max": params.seconds,
                "rounds": params.rounds, **({"stored": params.stored} if params.stored else {}),
            },
        )
        if full_store is not None:
            report.add(Measurement(f"fill the store with {params.stored:,} (child process)", params.stored, fill_seconds))
        sink_runs: list[Measurement] = []
        relay_runs: list[Measurement] = []
        full_runs: list[Measurement] = []
        replies: list[str] = []
        full_replies: list[str] = []
        full_label = f"relay, {params.stored:,} already stored"
        for _ in range(params.rounds):
            with raw_sink_process(where, cert, key, params.loop) as (ports, pid):
                sink_runs.append(await _measure(SINK_LABEL, ports, pid, params, context, None))
            with relay_process(where, store, cert, key, params.loop) as (ports, pid):
                relay_runs.append(await _measure(RELAY_LABEL, ports, pid, params, context, replies))
            if full_store is not None:
                with relay_process(where, full_store, cert, key, params.loop) as (ports, pid):
                    full_runs.append(await _measure(full_label, ports, pid, params, context, full_replies))
        best = [max(runs, key=lambda m: m.rate) for runs in (sink_runs, relay_runs, full_runs) if runs]
        for run in best:
            report.add(run)
            if run.extra.get("errors"):
                report.notes.append(f"{run.label} failures: " + ", ".join(f"{n} × {e}" for e, n in run.extra["errors"].items()))
        report.compare("relay / raw sink", RELAY_LABEL, SINK_LABEL, at_least=params.target,
                       about="the relay's acceptance rate over the raw sink's")
        if full_store is not None:
            report.compare(f"relay {params.stored:,} stored / empty store", full_label, RELAY_LABEL, at_least=STORED_TARGET,
                           about="acceptance with the store already full over acceptance on an empty store")
            empty_cpu = report.measurement(RELAY_LABEL).extra.get("server_cpu_us_per_msg")
            full_cpu = report.measurement(full_label).extra.get("server_cpu_us_per_msg")
            if empty_cpu and full_cpu:
                report.figure("relay CPU per message, stored / empty", round(full_cpu / empty_cpu, 3),
                              about="the relay's own CPU per accepted message (steadier than rates on a busy machine)")
        missing = await asyncio.to_thread(_stored_queue_ids, store, replies)
        if full_store is not None:
            missing += await asyncio.to_thread(_stored_queue_ids, full_store, full_replies, params.stored)
        report.figure("acknowledged but not in the store", missing, "messages", at_most=0,
                      about="a 250 the relay gave for a message its store does not hold")
        if params.rounds > 1:
            report.notes.append(f"best of {params.rounds} alternating runs per side")
        return report


def _stored_queue_ids(store: Path, replies: list[str], stored_before: int = 0) -> int:
    """How many acknowledged queue ids are missing from the store (should be 0)."""
    from relay.store import open_store
    from relay.store.intake import count_messages

    db = open_store(store)
    try:
        return max(0, len(replies) - (count_messages(db) - stored_before))
    finally:
        db.close()


@contextlib.asynccontextmanager
async def _workdir(path: Path | None) -> AsyncIterator[Path]:
    if path is not None:
        await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="smtpplus-bench-accept-") as tmp:
        yield Path(tmp)
