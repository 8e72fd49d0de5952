"""Values that look like Rich markup or emoji codes are printed literally."""

from __future__ import annotations

from typing import Any

from relay.store.settings import Keys, set_setting

FINGERPRINT = "SHA256:3B:C7:4C:AB:AB:7E:[bold]x[/bold]"


def test_fingerprints_and_names_print_literally(db: Any, cli: Any) -> None:
    set_setting(db, Keys.TLS_FINGERPRINT, FINGERPRINT)
    cli("lists", "add", "Shop", check=True)
    for args in (("lists", "show", "Shop"), ("lists", "show", "Shop", "--json")):
        out = cli(*args).stdout
        assert FINGERPRINT in out, (args, out)
        assert "\N{NEGATIVE SQUARED AB}" not in out
