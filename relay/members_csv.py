"""Parsing a list's member file: CSV with an ``address[,name]`` header, or plain
one-address-per-line. Pure: takes the text, returns canonical rows.

Used by ``smtpplus lists members import`` and the console's import dialog.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from relay.display import MAX_MEMBER_NAME, BadName, check_name
from relay.policy import PolicyError, check_address, describe_address_problem

_ADDRESS_HEADERS = ("address", "email", "e-mail")

# A member row is an address and a name: a field this long is not a member file
# (csv's own limit, 128 KiB, would otherwise surface as an internal error).
MAX_FIELD = 4096
MAX_COLUMNS = 64


@dataclass(frozen=True, slots=True)
class MemberRows:
    """Members in file order, each address once; ``duplicates`` counts repeated rows."""

    rows: list[tuple[str, str]]  # (canonical address, display name)
    duplicates: int = 0


def parse_members(source: str | Iterable[str]) -> MemberRows:
    """Parse a member file: its text, or its lines as read (an open file streams).
    Blank lines and lines starting with ``#`` are skipped.

    Raises PolicyError naming the line of the first bad row: a whole import is
    refused rather than half-applied.
    """
    seen: dict[str, str] = {}
    duplicates = 0
    for canonical, name in iter_members(source):
        if canonical in seen:
            duplicates += 1
        else:
            seen[canonical] = name
    return MemberRows(rows=list(seen.items()), duplicates=duplicates)


def iter_members(source: str | Iterable[str]) -> Iterator[tuple[str, str]]:
    """The file's (canonical address, name) rows one at a time, repeats included — for
    an import that streams (``relay.store.directory.import_member_stream``). Raises
    PolicyError naming the line of the first bad row when it reaches it."""
    reader = csv.reader(io.StringIO(source) if isinstance(source, str) else source)
    address_col: int | None = None
    name_col: int | None = None
    plain = True
    first = True
    for cells in _rows(reader):
        line = reader.line_num
        cells = [_from_csv_cell(c.strip()) for c in cells]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if first:
            first = False
            header = [c.lower() for c in cells]
            found = next((h for h in _ADDRESS_HEADERS if h in header), None)
            if found is not None:
                plain = False
                address_col = header.index(found)
                name_col = header.index("name") if "name" in header else None
                continue
        address, name = _row_fields(cells, line, plain, address_col, name_col)
        canonical = _member_address(address, line)
        try:
            name = check_name(name, "member name", MAX_MEMBER_NAME)
        except BadName as exc:
            raise PolicyError(f"line {line}: {exc}") from None
        yield canonical, name


# A cell starting with one of these is a formula to a spreadsheet (=HYPERLINK(…),
# +cmd|…, @SUM, and TAB/CR that some of them skip before looking): exported cells get a
# leading apostrophe, which spreadsheets show as text and the import takes off again.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: str) -> str:
    """``value`` safe to open in a spreadsheet (OWASP's CSV-injection rule)."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _from_csv_cell(value: str) -> str:
    """Undo :func:`csv_cell`, so an exported file imports as it was."""
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_STARTS) else value


def write_members_csv(rows: Iterable[tuple[str, str]], out: Any) -> int:
    """Write ``address,name`` CSV (header first) to the text stream ``out``, row by
    row, with formulas neutralized. Returns the number of rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["address", "name"])
    count = 0
    for address, name in rows:
        writer.writerow([csv_cell(address), csv_cell(name)])
        count += 1
    return count


def _rows(reader: Any) -> Iterator[list[str]]:
    """The reader's rows, with csv's own errors (a field over its limit, a NUL, an
    unclosed quote) and oversized rows as one-line PolicyErrors naming the line."""
    previous = csv.field_size_limit()
    csv.field_size_limit(MAX_FIELD)
    try:
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise PolicyError(f"line {reader.line_num}: not a readable CSV row ({_csv_problem(exc)})") from None
            if len(cells) > MAX_COLUMNS:
                raise PolicyError(f"line {reader.line_num}: {len(cells)} columns — a member file has an address and a name")
            yield cells
    finally:
        csv.field_size_limit(previous)


def _csv_problem(exc: csv.Error) -> str:
    text = str(exc)
    if "field larger than field limit" in text:
        return f"a field is over {MAX_FIELD:,} characters — a member row is an address and a name"
    return text


def _row_fields(
    cells: list[str], line: int, plain: bool, address_col: int | None, name_col: int | None
) -> tuple[str, str]:
    if plain:
        if len(cells) > 2:
            raise PolicyError(
                f"line {line}: expected an address and an optional name, got {len(cells)} columns "
                "— add a header row `address,name` to import a wider CSV"
            )
        return cells[0], cells[1] if len(cells) == 2 else ""
    if address_col is None or address_col >= len(cells) or not cells[address_col]:
        raise PolicyError(f"line {line}: no address in this row")
    name = cells[name_col] if name_col is not None and name_col < len(cells) else ""
    return cells[address_col], name


def _member_address(address: str, line: int) -> str:
    check = check_address(address)
    if check.address is None:
        raise PolicyError(
            f"line {line}: {address!r} is not a valid address ({describe_address_problem(check.problem)})"
        )
    return check.address
