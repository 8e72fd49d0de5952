"""The CLI on a PostgreSQL store, as an operator types it: a URL with no host
(``postgresql:///db?host=…``) names its database — pathlib never gets to drop a slash —
``status --wait`` and ``relay --check`` work on a server (and say so when it is down),
and the demo neither prints the password nor makes directories named after the URL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.postgres import SUPERUSER, free_port
from relay.store.postgres.connection import connect, open_store
from relay.store.postgres.location import database_name
from tests.conftest import ROOT, Cli
from tests.pg import Cluster

SECRET = "s3cret-Pw"


def _tables(url: str) -> set[str]:
    conn = connect(url)  # not open_store: it would make the schema
    try:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()
        return {row[0] for row in rows}
    finally:
        conn.close()


def _no_host(url: str) -> str:
    """``url`` as ``postgresql:///DB?host=…&port=…&user=…``: the form pathlib broke."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"postgresql:///{database_name(url)}?host={parts.hostname}&port={parts.port}&user={parts.username}&password={SECRET}"


def test_a_url_with_no_host_makes_the_store_in_its_database_and_nowhere_else(pg_cluster: Cluster, cli: Cli) -> None:
    # The user's default database (named after the user) is where postgresql:/DB?…
    # read as host DB landed: it exists here, empty, so a wrong store would show in it.
    with contextlib.suppress(Exception):
        pg_cluster.admin(f"CREATE DATABASE {SUPERUSER} TEMPLATE template0")
    default = pg_cluster.url(SUPERUSER)
    by_flag = pg_cluster.new_database(template=None)
    by_env = pg_cluster.new_database(template=None)
    try:
        added = cli("lists", "add", "Right", "--db", _no_host(by_flag))
        assert added.returncode == 0, added.stderr
        cli.env["SMTPPLUS_DB"] = _no_host(by_env)
        assert cli("lists", "add", "Right", check=True).returncode == 0
        for url in (by_flag, by_env):
            db = open_store(url, create=False)
            try:
                assert [row[0] for row in db.execute("SELECT name FROM lists").fetchall()] == ["Right"]
            finally:
                db.close()
        assert not {"lists", "messages"} & _tables(default)
        status = cli("status", "--db", f"postgresql:///{database_name(by_flag)}?host=127.0.0.1&port={pg_cluster.port}&user={SUPERUSER}")
        assert status.returncode == 3, status.stderr  # no relay on it: the store was found
        assert "not running" in status.stdout
        for proc in (added, status):
            assert SECRET not in proc.stdout + proc.stderr
    finally:
        pg_cluster.drop_database(default)
        pg_cluster.drop_database(by_flag)
        pg_cluster.drop_database(by_env)


def test_status_wait_and_relay_check_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    url = pg_url.replace(f"{SUPERUSER}@", f"{SUPERUSER}:{SECRET}@")
    env = dict(os.environ, SMTPPLUS_DB=url, HOME=str(tmp_path), SMTPPLUS_DATA_DIR=str(tmp_path), NO_COLOR="1")
    env.pop("SMTPPLUS_CONFIG", None)
    cli = Cli(tmp_path / "unused.db", env)
    ready = tmp_path / "ready.json"
    relay = subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "relay", "--check", "--host", "127.0.0.1",
         "--ports", "0", "--ready-file", str(ready)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output = ""
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and relay.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the relay did not start"
        assert json.loads(ready.read_text())["served"]
        waited = cli("status", "--wait", "20")
        assert waited.returncode == 0, waited.stderr
        assert "alive" in waited.stdout
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            output, _ = relay.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            relay.kill()
            output, _ = relay.communicate()
    # --check checked the PostgreSQL store (it used to skip it without a word).
    checked = [line for line in output.splitlines() if "store check:" in line]
    assert len(checked) == 1 and "is sound" in checked[0] and f"{SUPERUSER}:***@" in checked[0], output
    assert SECRET not in output + waited.stdout + waited.stderr

    # No server: --wait waits, then says unavailable (not "no store"), one line, exit 1.
    down = f"postgresql://{SUPERUSER}:{SECRET}@127.0.0.1:{free_port()}/smtpplus"
    began = time.monotonic()
    gone = cli("status", "--wait", "2", "--db", down)
    assert gone.returncode == 1 and time.monotonic() - began >= 2
    assert gone.stderr.count("\n") == 1 and "unavailable" in gone.stderr and "no store" not in gone.stderr, gone.stderr
    assert SECRET not in gone.stdout + gone.stderr


def test_the_demo_on_postgresql_prints_no_password_and_makes_no_directory_named_after_the_url(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from console.demo import demo_data_dir, demo_farewell

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    url = f"postgresql://mailer:{SECRET}@127.0.0.1:55432/mailstore"
    where = demo_data_dir(url)
    assert where == tmp_path / "xdg" / "smtpplus" / "demo-postgresql-mailstore-data"
    assert SECRET not in str(where) and "postgresql:" not in str(where)
    line = demo_farewell(url)
    assert SECRET not in line
    assert "postgresql://mailer:***@127.0.0.1:55432/mailstore" in line  # both slashes
    assert demo_data_dir("postgresql:///mailstore?host=h&password=x").name == "demo-postgresql-mailstore-data"
    # A SQLite store keeps its data beside the file, as before.
    assert demo_data_dir(tmp_path / "demo.db") == tmp_path / "demo-data"
    assert demo_farewell(tmp_path / "demo.db").endswith(f"--db {tmp_path / 'demo.db'}")
