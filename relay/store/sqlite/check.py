"""The store's integrity check: ``PRAGMA quick_check`` with progress.

Run by ``smtpplus store check`` and ``smtpplus relay --check``, never by a normal start:
on a big store it reads every page, and a restart after a crash must be immediate.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.store.errors import StoreError
from relay.store.interfaces import CheckResult
from relay.store.sqlite.db import BUSY_TIMEOUT_MS

__all__ = ["CheckResult", "quick_check"]


def quick_check(
    path: str | os.PathLike[str],
    progress: Callable[[float, int], None] | None = None,
    *,
    every: float = 1.0,
) -> CheckResult:
    """Check the store at ``path``; ``progress(seconds so far, pages)`` is called when
    the check starts and then about every ``every`` seconds until it ends. (SQLite runs
    the whole check as one step, so the check runs on a thread and the caller's thread
    reports.) A store SQLite cannot read at all ("not a database") is a failed check,
    not an exception."""
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"store {p} does not exist — check --db / SMTPPLUS_DB")
    started = time.monotonic()
    size = p.stat().st_size
    outcome: dict[str, Any] = {"pages": 0, "lines": ["check did not run"]}
    counted = threading.Event()

    def run() -> None:
        try:
            # Not open_store: no migration, no journal-mode switch on a file that may be damaged.
            db = sqlite3.connect(p, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            outcome["lines"] = [str(exc)]
            counted.set()
            return
        try:
            outcome["pages"] = int(db.execute("PRAGMA page_count").fetchone()[0])
            counted.set()
            outcome["lines"] = [str(row[0]) for row in db.execute("PRAGMA quick_check(100)")]
        except sqlite3.DatabaseError as exc:
            outcome["lines"] = [str(exc)]
        finally:
            counted.set()
            db.close()

    worker = threading.Thread(target=run, name="smtpplus-store-check", daemon=True)
    worker.start()
    counted.wait()
    if progress is not None:
        progress(0.0, outcome["pages"])
    while True:
        worker.join(every)
        if not worker.is_alive():
            break
        if progress is not None:
            progress(time.monotonic() - started, outcome["pages"])
    lines: list[str] = outcome["lines"]
    ok = lines == ["ok"]
    return CheckResult(str(p), ok, outcome["pages"], size, time.monotonic() - started, [] if ok else lines)
