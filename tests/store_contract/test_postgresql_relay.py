"""A relay on a PostgreSQL store, as a real subprocess: it makes the schema in an
empty database, accepts mail, answers 4xx while the server is down (454 4.7.0 to AUTH,
451 4.3.0 to a message) and takes mail again once it is back — every message that got
250 is in the store, no other."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.store.postgres.connection import open_store
from tests.conftest import ROOT, Cli
from tests.pg import Cluster, find_bindir


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    bindir, source = find_bindir()
    cluster = Cluster(bindir, source).start()
    yield cluster
    cluster.stop()


def _send(port: int, username: str, password: str, n: int) -> int:
    """The SMTP code the relay gave message ``n`` (250, or the refusal's)."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.login(username, password)
            client.sendmail("a@example.com", ["x@dest.example"], f"From: a@example.com\r\nSubject: m{n}\r\n\r\nbody {n}\r\n")
    except smtplib.SMTPResponseException as exc:
        return int(exc.smtp_code)
    return 250


def test_a_relay_on_postgresql_survives_a_server_restart(own_cluster: Cluster, tmp_path: Path) -> None:
    url = own_cluster.new_database(template=None)  # empty: the first command makes the schema
    env = dict(os.environ, SMTPPLUS_DB=url, HOME=str(tmp_path), SMTPPLUS_DATA_DIR=str(tmp_path), NO_COLOR="1")
    env.pop("SMTPPLUS_CONFIG", None)
    cli = Cli(tmp_path / "unused.db", env)
    cli("lists", "add", "friends", check=True)
    added = cli("users", "add", "--list", "friends", "--active", "--domains", "example.com", check=True)
    password = re.search(r"Password: (\S+)", added.stdout)
    assert password is not None
    cli("senders", "approve", "example.com", "--reason", "test", check=True)

    ready = tmp_path / "ready.json"
    relay = subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "relay", "--host", "127.0.0.1", "--ports", "0",
         "--allow-plain-auth", "--ready-file", str(ready)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and relay.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the relay did not start"
        facts: dict[str, Any] = json.loads(ready.read_text())
        port = int(facts["served"][0])
        user = "friends-1"

        codes = {1: _send(port, user, password.group(1), 1)}
        own_cluster.halt("fast")
        codes[2] = _send(port, user, password.group(1), 2)
        own_cluster.restart()
        n = 3
        deadline = time.monotonic() + 60
        while (code := _send(port, user, password.group(1), n)) != 250 and time.monotonic() < deadline:
            codes[n] = code
            n += 1
            time.sleep(0.2)
        codes[n] = code
        codes[n + 1] = _send(port, user, password.group(1), n + 1)

        # The server is down at login: AUTH's temporary failure (RFC 4954 section 6).
        assert codes[1] == 250 and codes[2] == 454 and codes[n] == 250 and codes[n + 1] == 250
        assert relay.poll() is None, "the relay stopped on the outage"
        accepted = sorted(f"m{i}" for i, c in codes.items() if c == 250)
        db = open_store(url)
        try:
            stored = sorted(row[0] for row in db.execute("SELECT subject FROM messages").fetchall())
        finally:
            db.close()
        assert stored == accepted  # nothing acknowledged is lost, nothing refused was kept
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.communicate()


class _RawSession:
    """A byte-exact client on a blocking socket (the test runs no event loop)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.file = self.sock.makefile("rb")
        assert self.reply()[0] == 220

    def reply(self) -> tuple[int, str]:
        while True:
            line = self.file.readline().decode("utf-8", "replace").rstrip("\r\n")
            assert line, "the relay closed the connection"
            if len(line) < 4 or line[3] != "-":
                return int(line[:3]), line

    def command(self, line: str) -> tuple[int, str]:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_auth_while_the_server_is_down_is_454_and_the_session_may_retry(own_cluster: Cluster, tmp_path: Path) -> None:
    url = own_cluster.new_database(template=None)
    env = dict(os.environ, SMTPPLUS_DB=url, HOME=str(tmp_path), SMTPPLUS_DATA_DIR=str(tmp_path), NO_COLOR="1")
    env.pop("SMTPPLUS_CONFIG", None)
    cli = Cli(tmp_path / "unused.db", env)
    cli("lists", "add", "friends", check=True)
    added = cli("users", "add", "--list", "friends", "--active", "--domains", "example.com", check=True)
    password = re.search(r"Password: (\S+)", added.stdout)
    assert password is not None
    plain = "AUTH PLAIN " + base64.b64encode(f"\0friends-1\0{password.group(1)}".encode()).decode()

    ready = tmp_path / "ready.json"
    relay = subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "relay", "--host", "127.0.0.1", "--ports", "0",
         "--allow-plain-auth", "--ready-file", str(ready)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output = ""
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and relay.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the relay did not start"
        port = int(json.loads(ready.read_text())["served"][0])

        own_cluster.halt("fast")
        session = _RawSession(port)
        try:
            assert session.command("EHLO client.test")[0] == 250
            assert session.command(plain) == (454, "454 4.7.0 Temporary authentication failure")
            assert session.command("NOOP")[0] == 250  # the session goes on
            own_cluster.restart()
            # The client tries again on the same session until the store answers.
            deadline = time.monotonic() + 60
            while (answer := session.command(plain))[0] == 454 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert answer == (235, "235 2.7.0 Authentication successful")
            assert session.command("QUIT")[0] == 221
        finally:
            session.close()
        assert relay.poll() is None, "the relay stopped on the outage"
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            output, _ = relay.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            relay.kill()
            output, _ = relay.communicate()
    # One line about the outage, never a traceback or a "session error".
    assert "AUTH: the store is unavailable" in output
    assert "session error" not in output and "Traceback" not in output
