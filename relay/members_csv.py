"""Parsing a list's member file: CSV with an ``address[,name]`` header, or plain
one-address-per-line. Pure: takes the text, returns canonical rows.

Used by ``smtpplus lists members import`` and the console's import dialog.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from relay.policy import PolicyError, check_address, describe_address_problem

_ADDRESS_HEADERS = ("address", "email", "e-mail")


@dataclass(frozen=True, slots=True)
class MemberRows:
    """Members in file order, each address once; ``duplicates`` counts repeated rows."""

    rows: list[tuple[str, str]]  # (canonical address, display name)
    duplicates: int = 0


def parse_members(text: str) -> MemberRows:
    """Parse a member file. Blank lines and lines starting with ``#`` are skipped.

    Raises PolicyError naming the line of the first bad row: a whole import is
    refused rather than half-applied.
    """
    reader = csv.reader(io.StringIO(text))
    address_col: int | None = None
    name_col: int | None = None
    plain = True
    seen: dict[str, str] = {}
    duplicates = 0
    first = True
    for cells in reader:
        line = reader.line_num
        cells = [c.strip() for c in cells]
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
        if canonical in seen:
            duplicates += 1
        else:
            seen[canonical] = name
    return MemberRows(rows=list(seen.items()), duplicates=duplicates)


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
