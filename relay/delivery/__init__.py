"""Delivery: the queue manager and the hosts it talks to (the Postfix split).

- :mod:`relay.delivery.engine` — :class:`DeliveryEngine`: rounds, flights, counters.
- :mod:`relay.delivery.hop` — :class:`HopConnection` / :class:`NextHop`: SMTP to one host.
- :mod:`relay.delivery.outcome` — pure decisions: reply classes, attempt summaries, new states.
- :mod:`relay.delivery.prepare` — the bytes and parameters one hop gets.

The names other modules imported from ``relay.delivery`` stay importable here.
"""

from relay.delivery.engine import DeliveryConfig, DeliveryEngine, EngineCounters
from relay.delivery.hop import HopConnection, HopFailure, NextHop, is_own_address
from relay.delivery.outcome import AttemptResult
from relay.delivery.prepare import Prepared, prepare

__all__ = [
    "AttemptResult",
    "DeliveryConfig",
    "DeliveryEngine",
    "EngineCounters",
    "HopConnection",
    "HopFailure",
    "NextHop",
    "Prepared",
    "is_own_address",
    "prepare",
]
