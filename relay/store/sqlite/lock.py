"""The SQLite backend's relay lock: an exclusive ``flock`` on ``<store>-relay.lock``
beside the store file, held by the relay for its whole life (the kernel drops it the
instant the process dies, kill -9 included). What the lock means for the lease is
told in :mod:`relay.store.lease`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from relay.store.errors import RelayAlreadyRunning, StoreError
from relay.store.interfaces import LockState
from relay.store.sqlite.db import Connection


def lock_path(store_path: str | os.PathLike[str]) -> Path:
    """``<store>-relay.lock``: the file whose exclusive flock a live relay holds."""
    # Named like SQLite's own sidecars (-wal, -shm): whatever handles those sees it too.
    return Path(f"{os.fspath(store_path)}-relay.lock")


# A status probe holds a shared lock for microseconds; a starting relay retries past it.
_LOCK_TRIES = 20
_LOCK_PAUSE = 0.025


def _read_facts(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 65536, 0)
        value = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def lock_state(store_path: str | os.PathLike[str]) -> LockState:
    """Whether a live process holds the store's lock (probed with a shared lock that
    is let go at once), and what the lock file says."""
    try:
        fd = os.open(lock_path(store_path), os.O_RDONLY)
    except OSError:
        return LockState(None)
    try:
        facts = _read_facts(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return LockState(True, facts)
            return LockState(None, facts)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return LockState(False, facts)
    finally:
        os.close(fd)


class StoreLock:
    """The relay's exclusive lock on ``<store>-relay.lock``, held from start to stop
    (a :class:`relay.store.interfaces.RelayLock`)."""

    def __init__(self, store_path: str | os.PathLike[str]) -> None:
        self.path = lock_path(store_path)
        self._fd: int | None = None
        self._facts: dict[str, Any] = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, facts: dict[str, Any]) -> None:
        """Take the lock or raise :class:`RelayAlreadyRunning` naming its holder."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                f"cannot create the relay lock {self.path}: {exc.strerror or exc} — check the store directory's permissions"
            ) from None
        for attempt in range(_LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise StoreError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
                if attempt == _LOCK_TRIES - 1:
                    holder = _read_facts(fd)
                    os.close(fd)
                    raise RelayAlreadyRunning(
                        f"a relay is already running on this store (pid {holder.get('pid', '?')} on "
                        f"{holder.get('host', '?')}, listening on {holder.get('listen_host', '?')}; it holds "
                        f"{self.path.name}) — stop it first, or use another --db",
                        owner=str(holder.get("owner") or ""),
                        pid=holder.get("pid"),
                        host=holder.get("host"),
                        age=0.0,
                    ) from None
                time.sleep(_LOCK_PAUSE)
        self._fd = fd
        self.note(**facts)

    def note(self, **facts: Any) -> None:
        """Rewrite the lock file's text (who holds it; a reason to stop). Best effort:
        a full disk must not stop a relay here."""
        if self._fd is None:
            return
        self._facts.update(facts)
        data = json.dumps(self._facts).encode("utf-8")
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def store_lock_state(db: Connection) -> LockState:
    """The OS lock beside the file ``db`` is open on (none for an in-memory store)."""
    row = db.execute("PRAGMA database_list").fetchone()
    path = row[2] if row is not None else ""
    return lock_state(path) if path else LockState(None)
