"""Service tests: the relay as systemd, a log pipeline and a monitoring system see it."""

from __future__ import annotations

from tests.relay.conftest import seeded, seeded_template

__all__ = ["seeded", "seeded_template"]
