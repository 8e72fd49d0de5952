"""A corrupt store (issue 11 item 7): checked on demand with progress, never at a normal
start; met while serving, it stops the relay with one line, and ``status`` says why."""

from __future__ import annotations

import json
from pathlib import Path

import aiosmtplib
import pytest

from relay.store import open_store
from relay.store.sqlite.check import quick_check
from tests.conftest import Cli
from tests.foundation.test_cli import ok, one_line_error
from tests.relay.support import PASSWORD, Seeded, client_context
from tests.relay.test_cli import RelayProcess


def corrupt_table(store_path: Path, table: str) -> None:
    """Scribble over the root page of ``table`` (as a failing disk or a bad copy would)."""
    db = open_store(store_path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.close()
    with store_path.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * 64)


def test_store_check_passes_a_sound_store_and_names_a_corrupt_one(cli: Cli, seeded: Seeded) -> None:
    assert "is sound" in ok(cli("store", "check"))
    assert cli.json("store", "check")["ok"] is True
    corrupt_table(seeded.store_path, "users")
    line = one_line_error(cli("store", "check"), "failed its integrity check", "restore the latest backup")
    assert "Traceback" not in line
    result = quick_check(seeded.store_path)
    assert not result.ok and result.problems


def test_quick_check_reports_progress_while_it_runs(seeded: Seeded) -> None:
    seen: list[tuple[float, int]] = []
    result = quick_check(seeded.store_path, lambda seconds, pages: seen.append((seconds, pages)), every=0.001)
    assert result.ok and result.pages > 0
    assert seen[0] == (0.0, result.pages)  # told at once how much there is to read
    assert all(pages == result.pages for _, pages in seen)


def test_relay_check_refuses_a_corrupt_store(cli: Cli, seeded: Seeded) -> None:
    corrupt_table(seeded.store_path, "users")
    one_line_error(cli("relay", "--check", "--host", "127.0.0.1", "--ports", "0"), "failed its integrity check")


async def test_a_corrupt_store_met_while_serving_stops_the_relay_and_status_says_so(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    corrupt_table(seeded.store_path, "users")
    # A normal start does not check: it serves at once (a restart after a crash must).
    relay = RelayProcess(cli, tmp_path, "--ports", "0", "--config", str(_config(tmp_path, tls_files)))
    try:
        port = relay.wait_ready()["served"][0]
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                                 tls_context=client_context(tls_files), timeout=10)
        await client.connect()
        with pytest.raises(aiosmtplib.SMTPException):  # AUTH reads the damaged users table
            await client.login("alice", PASSWORD["alice"])
        client.close()
        code = relay.proc.wait(30)
    finally:
        relay.stop()
    assert code == 1
    output = relay.output()
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("smtpplus: error:")]
    assert len(errors) == 1 and "is corrupt" in errors[0] and "smtpplus store check" in errors[0], output
    shown = cli("status", "--json")
    status = json.loads(shown.stdout)
    assert shown.returncode == 3 and not status["alive"] and "corrupt" in status["stopped_reason"]
    assert "not running — stopped: store" in cli("status").stdout


def _config(tmp_path: Path, tls_files: dict[str, Path]) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(f'server_name = "relay.test"\ntls_cert = "{tls_files["cert"]}"\ntls_key = "{tls_files["key"]}"\n')
    return path
