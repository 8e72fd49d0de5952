"""Delivery to the next hop. (Placeholder until the delivery issue lands: the
interface RelayService relies on.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class DeliveryEngine:
    """Scheduler + next-hop delivery, run by :class:`relay.service.RelayService`.

    ``owner`` is the relay's lease owner id; ``reclaim_from`` names a dead relay whose
    in-flight messages are reclaimed at once on takeover; ``own_addresses`` are the
    relay's listening (host, port) pairs, refused as next hop.
    """

    def __init__(
        self,
        store_path: Path,
        config: Any,
        *,
        owner: str,
        reclaim_from: str | None = None,
        own_addresses: list[tuple[str, int]] | None = None,
    ) -> None:
        self.store_path = store_path
        self.config = config
        self.owner = owner
        self.reclaim_from = reclaim_from
        self.own_addresses = own_addresses or []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
