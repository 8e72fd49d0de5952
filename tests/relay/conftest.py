"""Relay test fixtures: a seeded store and an in-process relay on ephemeral loopback ports."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.service import RelayService
from tests.relay.support import Seeded, relay_config, running_relay, seed_store


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded store, made once (argon2 hashing is slow on purpose) and copied per test."""
    path = tmp_path_factory.mktemp("seeded") / "template.db"
    seed_store(path)  # closes its connection: the WAL is checkpointed into the file
    return path


@pytest.fixture
def seeded(store_path: Path, seeded_template: Path) -> Seeded:
    shutil.copyfile(seeded_template, store_path)
    return Seeded(store_path)


@pytest.fixture
async def relay(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> AsyncIterator[RelayService]:
    """A relay on two ephemeral 127.0.0.1 ports with the test CA's certificate; delivery paused."""
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files)) as service:
        yield service
