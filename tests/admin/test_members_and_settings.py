"""relay.admin.members and relay.admin.settings against a real store file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay.admin.members import import_members_file
from relay.admin.settings import gather_client_settings
from relay.store import directory
from relay.store.errors import InvalidInput, NotFound
from relay.store.settings import Keys, set_setting


def test_import_adds_new_members_and_counts_the_rest(listed: Any, tmp_path: Path) -> None:
    file = tmp_path / "m.csv"
    file.write_text("address,name\na@example.com,A\nB@Example.com,B\na@example.com,again\n", encoding="utf-8")
    first = import_members_file(listed, "News", file)
    assert (first.list_name, first.added, first.already, first.repeated) == ("News", 2, 0, 1)
    second = import_members_file(listed, "News", file)
    assert (second.added, second.already) == (0, 2)
    assert directory.list_members(listed, "News") == [("a@example.com", "A"), ("b@example.com", "B")]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe not utf-8", "is not UTF-8 text"),
        (b"# only a comment\n", "has no addresses"),
        (b"ok@example.com\nnot an address\n", "line 2"),
    ],
)
def test_a_bad_file_is_refused_whole_in_one_line(listed: Any, tmp_path: Path, content: bytes, expected: str) -> None:
    file = tmp_path / "bad.csv"
    file.write_bytes(content)
    with pytest.raises(InvalidInput, match=expected) as caught:
        import_members_file(listed, "News", file)
    assert "\n" not in str(caught.value)
    assert directory.list_members(listed, "News") == []


def test_a_missing_file_or_list_is_said_first(listed: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read"):
        import_members_file(listed, "News", tmp_path / "absent.csv")
    with pytest.raises(NotFound, match="no list named 'Nope'"):
        import_members_file(listed, "Nope", tmp_path / "absent.csv")


def test_client_settings_read_what_the_relay_published(listed: Any) -> None:
    set_setting(listed, Keys.SERVER_NAME, "mail.example.net")
    settings = gather_client_settings(listed, "news-1")
    assert settings.server_name == "mail.example.net"
    assert "news-1" in settings.block
    assert "mail.example.net" in settings.block
