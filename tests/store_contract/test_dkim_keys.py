"""DKIM keys on both backends: a rotation's key waits for its record (pending), signs
once activated; one active and one pending key per domain at most."""

from __future__ import annotations

from typing import Any

import pytest

from relay import dkim as rules
from relay.store import transaction
from relay.store.errors import InvalidInput, StoreError
from tests.store_contract.conftest import ops


def _signing(db: Any) -> list[tuple[str, str]]:
    return [(k.domain, k.selector) for k in ops(db).dkim.active_keys(db)]


def test_a_staged_key_signs_only_once_activated(db: Any) -> None:
    keys = ops(db).dkim
    pair = rules.generate("ed25519")
    keys.add_key(db, "example.org", "one", pair, now=1_800_000_000.0)
    pending, signing = keys.stage_key(db, "example.org", "two", rules.generate("ed25519"), now=1_800_000_100.0)
    assert pending.pending and not pending.active and signing.selector == "one"
    assert keys.pending_key(db, "example.org") == pending
    assert _signing(db) == [("example.org", "one")]  # the signer never sees a pending key
    with pytest.raises(InvalidInput, match="already has key two waiting for its record"):
        keys.stage_key(db, "example.org", "three", rules.generate("ed25519"))
    new, retired = keys.activate_key(db, "example.org", "two", now=1_800_000_200.0)
    assert new.active and retired is not None and retired.selector == "one" and retired.retired_at == 1_800_000_200.0
    assert _signing(db) == [("example.org", "two")] and keys.pending_key(db, "example.org") is None
    with pytest.raises(InvalidInput, match="is active, not waiting"):
        keys.activate_key(db, "example.org", "two")
    with pytest.raises(InvalidInput, match="is retired, not waiting"):
        keys.activate_key(db, "example.org", "one")


def test_activation_takes_only_the_key_that_was_checked(db: Any) -> None:
    # The record of a pending key was checked; meanwhile another operator removed it
    # and staged a new key under the same selector: that one is not activated.
    keys = ops(db).dkim
    keys.add_key(db, "example.org", "one", rules.generate("ed25519"))
    checked, _ = keys.stage_key(db, "example.org", "two", rules.generate("ed25519"))
    keys.remove_key(db, "example.org", "two")
    keys.stage_key(db, "example.org", "two", rules.generate("ed25519"))
    with pytest.raises(InvalidInput, match="changed meanwhile"):
        keys.activate_key(db, "example.org", "two", public_key=checked.public_key)
    assert _signing(db) == [("example.org", "one")]  # rolled back: the old key still signs
    assert keys.pending_key(db, "example.org") is not None


def test_with_only_a_waiting_key_left_add_and_rotate_point_to_it(db: Any) -> None:
    keys = ops(db).dkim
    keys.add_key(db, "example.org", "one", rules.generate("ed25519"))
    keys.stage_key(db, "example.org", "two", rules.generate("ed25519"))
    keys.remove_key(db, "example.org", "one")  # the active key is gone; "two" still waits
    for attempt in (keys.add_key, keys.stage_key, keys.rotate_key):
        with pytest.raises(InvalidInput, match="has key two waiting for its record .* dkim activate example.org"):
            attempt(db, "example.org", "three", rules.generate("ed25519"))
    new, retired = keys.activate_key(db, "example.org", "two")
    assert new.active and retired is None and _signing(db) == [("example.org", "two")]


def test_an_immediate_rotation_is_refused_while_a_key_waits(db: Any) -> None:
    keys = ops(db).dkim
    keys.add_key(db, "example.org", "one", rules.generate("ed25519"))
    keys.stage_key(db, "example.org", "two", rules.generate("ed25519"))
    with pytest.raises(InvalidInput, match="has key two waiting for its record .* activate example.org --force"):
        keys.rotate_key(db, "example.org", "three", rules.generate("ed25519"))
    assert _signing(db) == [("example.org", "one")]


def test_the_schema_allows_one_pending_key_per_domain(db: Any) -> None:
    # The database itself refuses a second pending key (two operators rotating at once).
    keys = ops(db).dkim
    keys.add_key(db, "example.org", "one", rules.generate("ed25519"))
    keys.stage_key(db, "example.org", "two", rules.generate("ed25519"))
    with pytest.raises(StoreError), transaction(db):  # the transaction translates the driver's error
        db.execute(
            "INSERT INTO dkim_keys(domain, selector, algorithm, private_key, public_key, active, created_at, retired_at) "
            "VALUES ('example.org', 'three', 'ed25519', 'x', 'y', 0, 1.0, NULL)"
        )


def _upgrade_to_13_keeps_the_keys(raw: Any, schema: Any, unique: type[Exception], check: type[Exception]) -> None:
    """A version-12 store with an active and a retired key, upgraded: both kept, a
    pending key allowed, still one active and one pending per domain."""
    schema.migrate(raw, target=12)
    raw.execute(
        "INSERT INTO dkim_keys VALUES ('example.org', 'one', 'ed25519', 'k1', 'p1', 0, 1.0, 2.0), "
        "('example.org', 'two', 'ed25519', 'k2', 'p2', 1, 2.0, NULL)"
    )
    assert schema.migrate(raw) == schema.SCHEMA_VERSION
    rows = raw.execute("SELECT selector, active, retired_at FROM dkim_keys ORDER BY selector").fetchall()
    assert [tuple(r) for r in rows] == [("one", 0, 2.0), ("two", 1, None)]
    raw.execute("INSERT INTO dkim_keys VALUES ('example.org', 'three', 'ed25519', 'k3', 'p3', 0, 3.0, NULL)")
    for second in ("'four', 'ed25519', 'k4', 'p4', 1, 4.0, NULL", "'five', 'ed25519', 'k5', 'p5', 0, 5.0, NULL"):
        with pytest.raises(unique):  # one active, one pending per domain
            raw.execute(f"INSERT INTO dkim_keys VALUES ('example.org', {second})")
    with pytest.raises(check):  # an active key is never retired
        raw.execute("INSERT INTO dkim_keys VALUES ('example.net', 'six', 'ed25519', 'k6', 'p6', 1, 6.0, 7.0)")


def test_version_13_keeps_the_keys_of_an_older_sqlite_store(tmp_path: Any) -> None:
    # SQLite changes a CHECK only by building the table anew: the keys come along.
    import sqlite3

    from relay.store.sqlite import schema

    raw = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    try:
        _upgrade_to_13_keeps_the_keys(raw, schema, sqlite3.IntegrityError, sqlite3.IntegrityError)
    finally:
        raw.close()


def test_version_13_keeps_the_dkim_keys_of_a_version_12_postgresql_store(pg_cluster: Any) -> None:
    # V6's table CHECK, unnamed, is dkim_keys_check on every store: V13 replaces it.
    import psycopg

    from relay.store.postgres import schema

    url = pg_cluster.new_database(template=None)  # empty: migrated step by step
    raw = psycopg.connect(url, autocommit=True)
    try:
        _upgrade_to_13_keeps_the_keys(raw, schema, psycopg.errors.UniqueViolation, psycopg.errors.CheckViolation)
    finally:
        raw.close()
        pg_cluster.drop_database(url)
