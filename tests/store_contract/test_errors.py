"""Errors come out as the store's own (relay.store.errors), never a driver's."""

from __future__ import annotations

from typing import Any

import pytest

from relay.store import directory
from relay.store.errors import (
    AlreadyExists,
    Conflict,
    NotFound,
    StoreError,
    StoreFull,
    StoreUnavailable,
)
from tests.store_contract.conftest import Case

BIG = "z" * 400_000  # more than the pages a fresh store has


def test_a_taken_name_is_a_conflict(backend: Case, conn: Any) -> None:
    directory.create_list(conn, "contract")
    with pytest.raises(AlreadyExists) as caught:
        directory.create_list(conn, "contract")
    assert isinstance(caught.value, Conflict)


def test_a_missing_name_is_not_found(backend: Case, conn: Any) -> None:
    with pytest.raises(NotFound, match="no list named 'nothing'"):
        directory.get_list(conn, "nothing")


def test_a_full_store_is_store_full_in_a_transaction(backend: Case, conn: Any) -> None:
    backend.fill_up(conn)
    with pytest.raises(StoreFull) as caught, backend.backend.transaction(conn):
        backend.backend.settings.set_setting(conn, "contract.big", BIG)
    assert isinstance(caught.value, StoreUnavailable)  # a relay answers 4xx to both
    assert "\n" not in str(caught.value)
    assert backend.backend.settings.get_setting(conn, "contract.big") is None  # nothing of it written


async def test_a_full_store_is_store_full_through_the_async_bridge(backend: Case) -> None:
    async with backend.backend.async_store(backend.location) as store:
        await store.run(backend.fill_up)

        def write_big(db: Any) -> None:
            with backend.backend.transaction(db):
                backend.backend.settings.set_setting(db, "contract.big", BIG)

        with pytest.raises(StoreFull):
            await store.run(write_big)
        # A store error outside any transaction is translated too.
        with pytest.raises(StoreFull):
            await store.run(backend.backend.settings.set_setting, "contract.big", BIG)


async def test_other_errors_pass_the_bridge_as_they_are(backend: Case) -> None:
    def refuse(db: Any) -> None:
        raise ValueError("not a store error")

    async with backend.backend.async_store(backend.location) as store:
        with pytest.raises(ValueError, match="not a store error"):
            await store.run(refuse)
        assert await store.run(backend.backend.settings.get_setting, "contract.none", 3) == 3
    with pytest.raises(StoreError, match="not open"):
        await store.run(backend.backend.settings.get_setting, "contract.none")


def test_a_missing_store_is_one_line_naming_the_fix(backend: Case) -> None:
    with pytest.raises(StoreError, match="no store at .* — check --db") as caught:
        backend.backend.open(backend.missing, create=False)
    assert "\n" not in str(caught.value)
