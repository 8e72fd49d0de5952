"""``smtpplus harness``: scenario runs and benchmarks. Each subcommand lives in its own module."""

from __future__ import annotations

from console.cli.common import LazyGroup

bench = LazyGroup(
    name="bench",
    commands_spec={
        "accept": ("console.cli.bench_accept:accept", "Acceptance rate of the relay against a raw aiosmtpd sink."),
        "e2e": ("console.cli.bench_delivery:e2e", "Unthrottled accept→delivered rate as a ratio of the accept rate."),
        "priority": ("console.cli.bench_delivery:priority", "Priority-1 probe latency through a throttled campaign."),
        "dkim": ("console.cli.bench_delivery:dkim", "DKIM signing CPU per message, Ed25519 and RSA-2048."),
        "console": ("console.cli.bench_console:console_bench", "Console first paint and refresh cost with 100,000 queued."),
        "scale": ("console.cli.bench_scale:scale", "Many relays on one PostgreSQL store: accept, delivery, CPU, dequeue."),
    },
    help="Benchmarks: each measures a ratio against a reference run in the same process tree.",
)

harness = LazyGroup(
    name="harness",
    commands_spec={
        "run": ("console.cli.harness_run:run", "Run scenario files against a relay; table, JSON, JUnit."),
    },
    help="End-to-end scenario runs and benchmarks.",
)
harness.add_command(bench)
