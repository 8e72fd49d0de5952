"""Operator-entered names, member files and CSV export (issue 11 item 7): control
characters and oversized names are one-line errors, CSV limits never an internal error,
exported cells never run as spreadsheet formulas, member listing pages in constant memory."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from relay.display import MAX_MEMBER_NAME, BadName, check_name
from relay.members_csv import csv_cell, parse_members, write_members_csv
from relay.policy import PolicyError
from relay.store import directory
from relay.store.errors import InvalidInput
from tests.foundation.test_cli import ok, one_line_error


@pytest.mark.parametrize("bad", ["Line1\nLine2", "esc\x1b]0;x\x07", "nul\x00", "bidi\u202e", "tab\there", "c1\x9b"])
def test_names_with_control_characters_are_refused(db: Any, bad: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        directory.create_list(db, bad)
    assert "control character" in str(refused.value) and "\n" not in str(refused.value)
    directory.create_list(db, "fine")
    with pytest.raises(InvalidInput):
        directory.edit_list(db, "fine", description=bad)
    with pytest.raises(InvalidInput):
        directory.edit_list(db, "fine", new_name=bad)
    with pytest.raises(InvalidInput) as member:
        directory.import_members(db, "fine", [("a@example.com", "ok"), ("b@example.com", bad)])
    assert "row 2" in str(member.value)
    assert [info.name for info in directory.all_lists(db)] == ["fine"]
    assert directory.list_members(db, "fine") == []  # nothing half-imported


def test_name_length_caps(db: Any) -> None:
    with pytest.raises(InvalidInput, match="100 or fewer"):
        directory.create_list(db, "x" * 101)
    directory.create_list(db, "x" * 100, "plain description — ünïcode fine")
    with pytest.raises(BadName, match=f"{MAX_MEMBER_NAME} or fewer"):
        check_name("n" * 100_000, "member name", MAX_MEMBER_NAME)
    assert check_name("  Ann Lee  ", "member name", MAX_MEMBER_NAME) == "Ann Lee"


def test_member_file_limits_are_one_line_errors() -> None:
    with pytest.raises(PolicyError, match=r"line 2: .*over 4,096 characters"):
        parse_members("address,name\na@example.com," + "x" * 200_000 + "\n")
    with pytest.raises(PolicyError, match=f"line 2: member name is 300 characters — keep it to {MAX_MEMBER_NAME}"):
        parse_members("address,name\na@example.com," + "x" * 300 + "\n")
    with pytest.raises(PolicyError, match="line 3: member name contains a control character"):
        parse_members("address,name\na@example.com,Ann\nb@example.com,\x1b]52;c;x\x07\n")
    with pytest.raises(PolicyError, match="line 1: 100 columns"):
        parse_members(",".join(["a@example.com"] * 100) + "\n")


def test_exported_cells_never_run_as_formulas_and_import_back() -> None:
    assert csv_cell("=HYPERLINK(\"http://evil\")") == "'=HYPERLINK(\"http://evil\")"
    for start in ("=", "+", "-", "@", "\t", "\r"):
        assert csv_cell(f"{start}cmd").startswith("'")
    assert csv_cell("Ann") == "Ann" and csv_cell("'quoted") == "'quoted"
    rows = [("-dash@example.com", "=1+1"), ("ann@example.com", "@SUM(A1)"), ("bob@example.com", "Bob")]
    out = io.StringIO()
    assert write_members_csv(rows, out) == 3
    cells = [cell for row in csv.reader(io.StringIO(out.getvalue())) for cell in row]
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in cells), cells
    assert parse_members(out.getvalue()).rows == rows  # the apostrophes come off again


def test_cli_names_members_and_csv(cli: Any, tmp_path: Path) -> None:
    one_line_error(cli("lists", "add", "Line1\nLine2"), "control character", "\\x0a")
    one_line_error(cli("lists", "add", "x" * 101), "100 or fewer")
    ok(cli("lists", "add", "Shop"))
    one_line_error(cli("lists", "edit", "Shop", "--description", "a\x1b[31mb"), "control character", "\\x1b")
    assert [row["name"] for row in cli.json("lists", "ls")] == ["Shop"]

    big = tmp_path / "big.csv"
    big.write_text("address,name\na@example.com," + "x" * (129 * 1024) + "\n")
    one_line_error(cli("lists", "members", "import", "Shop", str(big)), "big.csv line 2", "4,096 characters")
    formulas = tmp_path / "formulas.csv"
    formulas.write_text("address,name\nann@example.com,=HYPERLINK(\"http://evil\")\nbob@example.com,+cmd|' /C calc'!A0\n")
    ok(cli("lists", "members", "import", "Shop", str(formulas)))
    exported = ok(cli("lists", "members", "ls", "Shop", "--csv"))
    assert exported.splitlines()[0] == "address,name"
    assert "'=HYPERLINK" in exported and "'+cmd" in exported
    again = tmp_path / "again.csv"
    again.write_text(exported)
    assert "0 added, 2 already there" in ok(cli("lists", "members", "import", "Shop", str(again)))
    assert [m["name"] for m in cli.json("lists", "members", "ls", "Shop")] == ["=HYPERLINK(\"http://evil\")", "+cmd|' /C calc'!A0"]


def test_members_import_names_a_missing_list_before_reading_the_file(cli: Any, tmp_path: Path) -> None:
    # The file does not even exist: the list is checked first, so that is what is said.
    one_line_error(cli("lists", "members", "import", "Nope", str(tmp_path / "missing.csv")), "no list named 'Nope'")


def test_members_ls_pages_with_limit_and_after(cli: Any, tmp_path: Path) -> None:
    ok(cli("lists", "add", "Big"))
    members = tmp_path / "members.csv"
    members.write_text("".join(f"m{n:04d}@example.com,Member {n}\n" for n in range(2500)))
    assert "2500 added" in ok(cli("lists", "members", "import", "Big", str(members)))
    everyone = cli.json("lists", "members", "ls", "Big")  # streamed over three store pages
    assert [m["address"] for m in everyone] == [f"m{n:04d}@example.com" for n in range(2500)]
    page = cli.json("lists", "members", "ls", "Big", "--limit", "2", "--after", "m0999@example.com")
    assert page == [{"address": "m1000@example.com", "name": "Member 1000"}, {"address": "m1001@example.com", "name": "Member 1001"}]
    text = ok(cli("lists", "members", "ls", "Big", "--limit", "3"))
    assert "m0002@example.com" in text and "m0003@example.com" not in text
    assert "--after m0002@example.com" in text  # how to ask for the next page
    assert cli.json("lists", "members", "ls", "Big", "--after", "m2499@example.com") == []


def test_member_stream_import_counts_keeps_the_first_name_and_is_all_or_nothing(db: Any) -> None:
    from relay.members_csv import iter_members

    directory.create_list(db, "Stream")
    directory.import_members(db, "Stream", [("old@example.com", "Old")])
    text = "address,name\nann@example.com,Ann\nold@example.com,Again\nann@example.com,Second\nbob@example.com,Bob\n"
    result = directory.import_member_stream(db, "Stream", iter_members(text))
    assert (result.added, result.already, result.repeated) == (2, 1, 1)
    assert directory.list_members(db, "Stream") == [
        ("ann@example.com", "Ann"), ("bob@example.com", "Bob"), ("old@example.com", "Old")
    ]
    with pytest.raises(PolicyError, match="line 3"):
        directory.import_member_stream(db, "Stream", iter_members("cy@example.com\ndi@example.com\nnot an address\n"))
    assert len(directory.list_members(db, "Stream")) == 3  # nothing of the bad file
