"""What tables and columns a SQLite store has (for ``store copy``)."""

from __future__ import annotations

from typing import Any


def tables(db: Any) -> list[str]:
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
    return [str(r[0]) for r in rows]


def columns(db: Any, table: str) -> list[str]:
    """The columns one may write (a generated one is computed: table_xinfo marks it hidden 2 or 3)."""
    return [str(r[1]) for r in db.execute(f'PRAGMA table_xinfo("{table}")') if int(r[6]) in (0, 1)]


def primary_key(db: Any, table: str) -> list[str]:
    rows = sorted((int(r[5]), str(r[1])) for r in db.execute(f'PRAGMA table_info("{table}")') if int(r[5]))
    return [name for _, name in rows]


def references(db: Any, table: str) -> set[str]:
    """The tables ``table``'s foreign keys point at."""
    return {str(r[2]) for r in db.execute(f'PRAGMA foreign_key_list("{table}")')}
