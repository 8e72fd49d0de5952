"""Suppressions (through the backend's ``Suppressions`` interface): added once,
looked up in canonical form, listed, removed, each an operator event."""

from __future__ import annotations

from typing import Any

import pytest

from relay.reasons import EventKind, Reason
from relay.store.errors import AlreadyExists, NotFound
from tests.store_contract.conftest import ops

T0 = 1_800_000_000.0


def test_an_address_is_suppressed_once_found_in_canonical_form_and_removed(db: Any) -> None:
    s = ops(db).suppressions
    entry, removed = s.add_suppression(db, "gone@example.org", detail="asked by phone", now=T0)
    assert (entry.address, entry.reason, entry.detail, removed) == (
        "gone@example.org", str(Reason.SUPPRESSION_ADDED), "asked by phone", 0
    )
    with pytest.raises(AlreadyExists, match="already suppressed"):
        s.add_suppression(db, "gone@example.org", now=T0 + 1)
    assert s.suppressed_among(db, ["Gone@Example.org", "kept@example.org"]) == {"gone@example.org"}
    assert [x.address for x in s.list_suppressions(db)] == ["gone@example.org"]
    assert s.remove_suppression(db, "gone@example.org", now=T0 + 2).detail == "asked by phone"
    with pytest.raises(NotFound, match="not suppressed"):
        s.remove_suppression(db, "gone@example.org")
    assert s.suppressed_among(db, ["gone@example.org"]) == set() and s.list_suppressions(db) == []
    reasons = [e.reason for e in ops(db).events.find_events(db, kind=str(EventKind.OPERATOR))]
    assert reasons == [str(Reason.SUPPRESSION_REMOVED), str(Reason.SUPPRESSION_ADDED)]


def test_members_suppressed_are_counted_per_list(db: Any) -> None:
    directory = ops(db).directory
    shop = directory.create_list(db, "Shop")
    directory.import_members(db, "Shop", [("a@example.org", ""), ("b@example.org", "")])
    directory.create_list(db, "Other")
    ops(db).suppressions.add_suppression(db, "b@example.org", now=T0)
    assert ops(db).suppressions.suppressed_per_list(db) == {shop.id: 1}
