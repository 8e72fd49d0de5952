"""List members: import a member file, streamed (a million rows in constant memory)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from relay.members_csv import iter_members
from relay.policy import PolicyError
from relay.store import Connection, directory
from relay.store.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class MembersImported:
    list_name: str
    added: int
    already: int  # on the list before
    repeated: int  # rows of the file whose address came earlier in it


def import_members_file(db: Connection, list_name: str, file: Path) -> MembersImported:
    """Add the members of ``file`` (CSV: a header ``address[,name]``, or one address per
    line) to ``list_name``. Addresses already there are left as they are; one bad row
    refuses the whole file (its line named), so nothing is half-imported. Every
    refusal is an InvalidInput naming the fix."""
    # The list first: a typo in its name is said before a big file is read.
    target = directory.get_list(db, list_name)
    try:
        # Streamed (newline="" as csv wants): never the whole file, nor all its rows, in memory.
        with file.open(encoding="utf-8-sig", newline="") as stream:
            result = directory.import_member_stream(db, target.name, iter_members(stream))
    except UnicodeDecodeError:
        raise InvalidInput(f"{file} is not UTF-8 text — save it as UTF-8 CSV") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror or exc}") from None
    except PolicyError as exc:
        raise InvalidInput(f"{file} {exc}") from None
    if not result.added + result.already:
        raise InvalidInput(f"{file} has no addresses — one address per line, or a header `address,name`")
    return MembersImported(target.name, result.added, result.already, result.repeated)
