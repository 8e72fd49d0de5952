"""Benchmarks: one load generator (:mod:`harness.bench.loadgen`) and one report format
(:mod:`harness.bench.report`, JSON plus a rich table) that every bench reuses.

- :mod:`harness.bench.rawsink`: the raw aiosmtpd reference sink (STARTTLS, any AUTH).
- :mod:`harness.bench.accept`: ``smtpplus harness bench accept`` — the relay's
  acceptance rate as a ratio of the raw sink's, under the same load.
"""
