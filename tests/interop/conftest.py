"""Interop fixtures: a seeded store for the relays these tests start."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.relay.support import Seeded, seed_store


@pytest.fixture
def seeded(store_path: Path) -> Seeded:
    return seed_store(store_path)
