"""smtpplus harness: the swaks-like client, the capture sink, scenarios and benchmarks."""
