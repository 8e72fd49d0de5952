"""What tables and columns a PostgreSQL store has (for ``store copy``)."""

from __future__ import annotations

from typing import Any


def tables(db: Any) -> list[str]:
    rows = db.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace "
        "ORDER BY c.relname"
    )
    return [str(r[0]) for r in rows]


def columns(db: Any, table: str) -> list[str]:
    rows = db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = ? AND is_generated = 'NEVER' ORDER BY ordinal_position",
        (table,),
    )
    return [str(r[0]) for r in rows]


def primary_key(db: Any, table: str) -> list[str]:
    rows = db.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = (current_schema() || '.' || ?)::regclass AND i.indisprimary ORDER BY a.attnum",
        (table,),
    )
    return [str(r[0]) for r in rows]


def references(db: Any, table: str) -> set[str]:
    rows = db.execute(
        "SELECT confrelid::regclass::text FROM pg_constraint WHERE contype = 'f' "
        "AND conrelid = (current_schema() || '.' || ?)::regclass",
        (table,),
    )
    return {str(r[0]).split(".")[-1].strip('"') for r in rows}
