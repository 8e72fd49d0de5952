"""Settings: JSON values by key, seeded only when unset, read one, some or all."""

from __future__ import annotations

from typing import Any

from tests.store_contract.conftest import Case


def test_a_missing_key_reads_as_the_default(backend: Case, conn: Any) -> None:
    settings = backend.backend.settings
    assert settings.get_setting(conn, "contract.none") is None
    assert settings.get_setting(conn, "contract.none", 7) == 7


def test_values_round_trip_as_json(backend: Case, conn: Any) -> None:
    settings = backend.backend.settings
    values = {"contract.bool": True, "contract.float": 2.5, "contract.text": "ü <x>", "contract.map": {"a": [1, None]}}
    for key, value in values.items():
        settings.set_setting(conn, key, value)
    assert {key: settings.get_setting(conn, key) for key in values} == values
    settings.set_setting(conn, "contract.float", 0)
    assert settings.get_setting(conn, "contract.float") == 0


def test_seed_sets_only_an_unset_key(backend: Case, conn: Any) -> None:
    settings = backend.backend.settings
    assert settings.seed_setting(conn, "contract.seed", 1) is True
    assert settings.seed_setting(conn, "contract.seed", 2) is False
    assert settings.get_setting(conn, "contract.seed") == 1


def test_read_some_or_all_and_delete(backend: Case, conn: Any) -> None:
    settings = backend.backend.settings
    settings.set_setting(conn, "contract.a", "A")
    settings.set_setting(conn, "contract.b", "B")
    assert settings.get_settings(conn, ["contract.a", "contract.none"]) == {"contract.a": "A"}
    everything = settings.get_settings(conn)
    assert everything["contract.a"] == "A" and everything["contract.b"] == "B"
    settings.delete_setting(conn, "contract.a")
    assert settings.get_setting(conn, "contract.a") is None
    assert settings.get_settings(conn, ["contract.a", "contract.b"]) == {"contract.b": "B"}


def test_a_setting_is_seen_by_another_connection(backend: Case, conn: Any) -> None:
    backend.backend.settings.set_setting(conn, "contract.shared", [1, 2])
    other = backend.open()
    try:
        assert backend.backend.settings.get_setting(other, "contract.shared") == [1, 2]
    finally:
        other.close()
