"""Over SSH: a dropped terminal ends the console instead of leaving it spinning."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start_console(store: Path, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The real console on a pseudo-terminal (no relay), like an SSH session."""
    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm-256color", HOME=str(tmp_path), COLUMNS="80", LINES="24")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "console", "--no-relay", "--db", str(store)],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, start_new_session=True,
    )
    os.close(slave)
    return proc, master


def wait_started(master: int, within: float = 20.0) -> bytes:
    """Read the terminal until the console has drawn its status bar."""
    seen = b""
    deadline = time.monotonic() + within
    while b"relay" not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"the console did not start: {seen[-300:]!r}")
        try:
            seen += os.read(master, 65536)
        except OSError:
            break
    return seen


def keep_reading(master: int) -> threading.Thread:
    """Drain the terminal like a live SSH client does. Unread, the pseudo-terminal's buffer
    fills with the console's later frames and its goodbye, the console blocks writing them,
    and only the hang-up deadline's forced exit ends it (a CI run hit exactly that)."""

    def drain() -> None:
        while True:
            try:
                if not os.read(master, 65536):
                    return
            except OSError:  # the console exited: the slave side is closed (EIO)
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    return reader


def test_hangup_signal_ends_the_console(seeded_store: Path, tmp_path: Path) -> None:
    proc, master = start_console(seeded_store, tmp_path)
    try:
        wait_started(master)
        reader = keep_reading(master)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 129
        reader.join(timeout=10)  # the slave side closed with the process: the read ends
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_a_closed_terminal_ends_the_console(seeded_store: Path, tmp_path: Path) -> None:
    proc, master = start_console(seeded_store, tmp_path)
    try:
        wait_started(master)
        os.close(master)  # the SSH connection drops: the terminal hangs up
        master = -1
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
        if master >= 0:
            os.close(master)
