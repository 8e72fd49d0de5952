"""The store's integrity check: ``PRAGMA quick_check`` with progress.

Run by ``smtpplus store check`` and ``smtpplus relay --check``, never by a normal start:
on a big store it reads every page, and a restart after a crash must be immediate.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from relay.store.db import BUSY_TIMEOUT_MS, StoreError

# SQLite calls the progress handler every this many virtual-machine steps.
_STEPS = 20_000


@dataclass(frozen=True, slots=True)
class CheckResult:
    store: str
    ok: bool
    pages: int
    bytes: int
    seconds: float
    problems: list[str] = field(default_factory=list)  # quick_check's lines (at most 100)


def quick_check(
    path: str | os.PathLike[str],
    progress: Callable[[float, int], None] | None = None,
    *,
    every: float = 1.0,
) -> CheckResult:
    """Check the store at ``path``; ``progress(seconds so far, pages)`` is called about
    every ``every`` seconds while the check runs. A store SQLite cannot read at all
    ("not a database") is a failed check, not an exception."""
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"store {p} does not exist — check --db / SMTPPLUS_DB")
    started = time.monotonic()
    size = p.stat().st_size
    pages = 0
    try:
        # Not open_store: no migration, no journal-mode switch on a file that may be damaged.
        db = sqlite3.connect(p, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        return CheckResult(str(p), False, 0, size, 0.0, [str(exc)])
    try:
        last = started

        def tick() -> int:
            nonlocal last
            now = time.monotonic()
            if progress is not None and now - last >= every:
                last = now
                progress(now - started, pages)
            return 0  # 0: go on

        try:
            pages = int(db.execute("PRAGMA page_count").fetchone()[0])
            db.set_progress_handler(tick, _STEPS)
            lines = [str(row[0]) for row in db.execute("PRAGMA quick_check(100)")]
        except sqlite3.DatabaseError as exc:
            lines = [str(exc)]
        finally:
            db.set_progress_handler(None, 0)
    finally:
        db.close()
    ok = lines == ["ok"]
    return CheckResult(str(p), ok, pages, size, time.monotonic() - started, [] if ok else lines)
