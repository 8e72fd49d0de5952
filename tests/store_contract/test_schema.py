"""One list of schema versions (relay/store/migrations.py): every backend has one DDL
step per version, and a new store is at the newest version."""

from __future__ import annotations

from typing import Any

import pytest

from relay.store.migrations import SCHEMA_VERSION, VERSIONS, steps_of
from tests.store_contract.conftest import BACKENDS, Case


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_has_one_step_per_version(name: str) -> None:
    assert [v.number for v in VERSIONS] == list(range(1, SCHEMA_VERSION + 1))
    steps = steps_of(name)
    assert len(steps) == SCHEMA_VERSION and all(step.strip() for step in steps)


def test_a_new_store_is_at_the_newest_version_and_opens_again(backend: Case, conn: Any) -> None:
    assert backend.backend.schema_version(conn) == SCHEMA_VERSION
    again = backend.open()
    try:
        assert backend.backend.schema_version(again) == SCHEMA_VERSION
    finally:
        again.close()
