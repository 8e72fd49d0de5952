"""Benchmarks: one load generator (:mod:`harness.bench.loadgen`) and one report format
(:mod:`harness.bench.report`, JSON plus a rich table) that every bench reuses.

- :mod:`harness.bench.rawsink`: the raw aiosmtpd reference sink (STARTTLS, any AUTH).
- :mod:`harness.bench.accept`: ``smtpplus harness bench accept`` — the relay's
  acceptance rate as a ratio of the raw sink's, under the same load.
- :mod:`harness.bench.delivery`: ``… bench e2e`` (delivered rate against accept rate,
  dequeue cost) and ``… bench priority`` (priority-1 probe latency through a campaign).
- ``… bench console`` lives with the console (:mod:`console.cli.bench_console`).

Every ``smtpplus harness bench …`` command takes ``--json``, ``--check`` (exit 1 when a
target is missed) and ``--quick`` (a smoke run in seconds).
"""
