"""A relay on a PostgreSQL store, as a real subprocess: it makes the schema in an
empty database, accepts mail, answers 4xx while the server is down (454 4.7.0 to AUTH,
451 4.3.0 to a message) within seconds, and takes mail again once it is back — every message that got
250 is in the store, no other. Also with four MTAs sending while the server stops
(fast, or immediate: a crash) and starts again."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.store.postgres.connection import open_store
from tests.conftest import ROOT, Cli
from tests.pg import Cluster


def _send(port: int, username: str, password: str, n: int) -> int:
    """The SMTP code the relay gave message ``n`` (250, or the refusal's)."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.login(username, password)
            client.sendmail("a@example.com", ["x@dest.example"], f"From: a@example.com\r\nSubject: m{n}\r\n\r\nbody {n}\r\n")
    except smtplib.SMTPResponseException as exc:
        return int(exc.smtp_code)
    return 250


@dataclass
class _Served:
    url: str
    port: int
    user: str
    password: str
    relay: subprocess.Popen[str]
    output: str = ""


@contextlib.contextmanager
def _relay_on_a_new_store(cluster: Cluster, tmp_path: Path, *options: str) -> Iterator[_Served]:
    """A relay subprocess on an empty database of ``cluster`` (its first command makes
    the schema), with one active user and ``options`` on its command line; stopped on
    leaving, its output kept."""
    url = cluster.new_database(template=None)
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
         "--allow-plain-auth", "--ready-file", str(ready), *options],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    served = _Served(url, 0, "friends-1", password.group(1), relay)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and relay.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the relay did not start"
        facts: dict[str, Any] = json.loads(ready.read_text())
        served.port = int(facts["served"][0])
        yield served
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            served.output, _ = relay.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            relay.kill()
            served.output, _ = relay.communicate()


def test_a_relay_on_postgresql_survives_a_server_restart(own_cluster: Cluster, tmp_path: Path) -> None:
    with _relay_on_a_new_store(own_cluster, tmp_path) as served:
        port, user, password = served.port, served.user, served.password
        codes = {1: _send(port, user, password, 1)}
        own_cluster.halt("fast")
        codes[2] = _send(port, user, password, 2)
        own_cluster.restart()
        n = 3
        deadline = time.monotonic() + 60
        while (code := _send(port, user, password, n)) != 250 and time.monotonic() < deadline:
            codes[n] = code
            n += 1
            time.sleep(0.2)
        codes[n] = code
        codes[n + 1] = _send(port, user, password, n + 1)

        # The server is down at login: AUTH's temporary failure (RFC 4954 section 6).
        assert codes[1] == 250 and codes[2] == 454 and codes[n] == 250 and codes[n + 1] == 250
        assert served.relay.poll() is None, "the relay stopped on the outage"
        accepted = sorted(f"m{i}" for i, c in codes.items() if c == 250)
        assert _stored_subjects(served.url) == accepted  # nothing acknowledged is lost, nothing refused was kept


@pytest.mark.timeout(300)
def test_delivery_goes_on_after_an_outage_longer_than_the_relays_periodic_duties(own_cluster: Cluster, tmp_path: Path) -> None:
    """The engine's once-every-few-seconds duties (counting the live relays) met the
    outage outside a round's own retry: the scheduler ended, unlogged, and the relay
    went on answering 250 to mail it never delivered. The outage outlasts those duties'
    period (5 s), the mail sent after it must reach the next hop."""
    ready, record = tmp_path / "sink.ready.json", tmp_path / "sink.jsonl"
    sink = subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "sink", "--port", "0", "--ready-file", str(ready),
         "--record", str(record), "--quiet"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _until(ready.exists, 60, "the sink listening")
        hop = f"127.0.0.1:{json.loads(ready.read_text())['port']}"
        with _relay_on_a_new_store(own_cluster, tmp_path, "--next-hop", hop) as served:
            def arrived() -> list[str]:
                lines = record.read_text().splitlines() if record.exists() else []
                return sorted(str(json.loads(line).get("subject")) for line in lines)

            assert _send(served.port, served.user, served.password, 1) == 250
            _until(lambda: arrived() == ["m1"], 60, "delivery before the outage")
            own_cluster.halt("fast")
            time.sleep(12)  # well past the engine's periodic duties (every 5 s; a call may first wait out its connect timeout)
            own_cluster.restart()
            deadline = time.monotonic() + 60
            while _send(served.port, served.user, served.password, 2) != 250:
                assert time.monotonic() < deadline, "no 250 after the server came back"
                time.sleep(0.5)
            _until(lambda: arrived() == ["m1", "m2"], 60, "delivery after the outage")
            assert served.relay.poll() is None
        assert "Traceback" not in served.output
    finally:
        sink.terminate()
        sink.wait(30)


def _stored_subjects(url: str) -> list[str]:
    db = open_store(url)
    try:
        return sorted(row[0] for row in db.execute("SELECT subject FROM messages WHERE origin = 'smtp'").fetchall())
    finally:
        db.close()


class _Mta(threading.Thread):
    """One sending MTA: message after message, each on a connection of its own; a 4xx
    or a dropped connection is tried again shortly (as an MTA's queue would, sooner),
    a 5xx is a failure. ``attempts`` is every try's (subject, code)."""

    def __init__(self, served: _Served, name: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.served, self.stop = served, stop
        self.attempts: list[tuple[str, int]] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            subject = f"{self.name}-{n}"
            deadline = time.monotonic() + 300
            while True:
                code = _try(self.served, subject)
                self.attempts.append((subject, code))
                if code == 250 or code >= 500 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if code != 250:
                return

    def accepted(self) -> list[str]:
        return [subject for subject, code in list(self.attempts) if code == 250]


def _try(served: _Served, subject: str) -> int:
    """The code one delivery attempt of ``subject`` ended with (421: the connection
    dropped). The client waits a minute for a reply — less than RFC 5321 4.5.3.2 asks
    (5 minutes a command), as impatient real clients do: while the server is down the
    relay answers its 4xx within its outage bound (3 s), so a reply never comes near
    it (a client that waited in vain is ``TIMED_OUT``)."""
    try:
        with smtplib.SMTP("127.0.0.1", served.port, timeout=60) as client:
            client.login(served.user, served.password)
            client.sendmail("a@example.com", ["x@dest.example"], f"From: a@example.com\r\nSubject: {subject}\r\n\r\nbody\r\n")
    except smtplib.SMTPRecipientsRefused as exc:
        return min(int(code) for code, _ in exc.recipients.values())
    except smtplib.SMTPResponseException as exc:
        return int(exc.smtp_code)
    except TimeoutError:  # socket.timeout: no reply within the client's patience
        return TIMED_OUT
    except (smtplib.SMTPServerDisconnected, OSError):
        return 421
    return 250


TIMED_OUT = 0  # the "code" of an attempt whose client gave up waiting for a reply


def _until(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {within:.0f} s"
        time.sleep(0.05)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_server_restart_under_load_loses_no_acknowledged_message(own_cluster: Cluster, tmp_path: Path, mode: str) -> None:
    """Four MTAs send while PostgreSQL stops (``pg_ctl stop -m fast``, or ``immediate``:
    a crash, recovered at start) and starts again: each sees 4xx meanwhile and tries
    again; afterwards every message that got 250 is in the store, a message stored
    twice is one whose earlier try failed (its COMMIT's answer lost), and the relay
    kept running."""
    with _relay_on_a_new_store(own_cluster, tmp_path) as served:
        stop = threading.Event()
        mtas = [_Mta(served, f"mta{i}", stop) for i in range(4)]
        try:
            for mta in mtas:
                mta.start()
            _until(lambda: all(len(m.accepted()) >= 2 for m in mtas), 120, "every MTA sending")
            own_cluster.halt(mode)
            # The outage is seen by the load (a 4xx or a dropped connection) before the server returns.
            _until(lambda: any(code != 250 for m in mtas for _, code in list(m.attempts)), 240, "a 4xx while down")
            before = sum(len(m.accepted()) for m in mtas)
            own_cluster.restart()
            _until(lambda: sum(len(m.accepted()) for m in mtas) >= before + 8, 120, "mail accepted again")
        finally:
            stop.set()
            for mta in mtas:
                mta.join(timeout=180)
        assert served.relay.poll() is None, "the relay stopped on the outage"
        attempts = [a for m in mtas for a in m.attempts]
        assert not [a for a in attempts if a[1] >= 500], "a permanent refusal under an outage"
        assert not [a for a in attempts if a[1] == TIMED_OUT], "a client waited a minute for a reply"
        assert all(m.attempts[-1][1] == 250 for m in mtas), "an MTA gave up: its last message never got 250"
        accepted = {subject for subject, code in attempts if code == 250}
        failed = {subject for subject, code in attempts if code != 250}
        assert failed, "the load never met the outage"
        stored = _stored_subjects(served.url)
        assert accepted <= set(stored)  # nothing acknowledged is lost
        assert set(stored) <= accepted  # every stored message was acknowledged in the end
        twice = {subject for subject in stored if stored.count(subject) > 1}
        assert twice <= failed  # a duplicate only where an earlier try's answer was lost


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
    with _relay_on_a_new_store(own_cluster, tmp_path) as served:
        plain = "AUTH PLAIN " + base64.b64encode(f"\0{served.user}\0{served.password}".encode()).decode()
        own_cluster.halt("fast")
        session = _RawSession(served.port)
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
        assert served.relay.poll() is None, "the relay stopped on the outage"
    # One line about the outage, never a traceback or a "session error".
    assert "AUTH: the store is unavailable" in served.output
    assert "session error" not in served.output and "Traceback" not in served.output


def _timed(session: _RawSession, line: str) -> tuple[tuple[int, str], float]:
    started = time.monotonic()
    answer = session.command(line)
    return answer, time.monotonic() - started


# A reply that needs the store comes within the store's outage bound (OUTAGE_WAIT, 3 s)
# while the server is down: asserted with a wide margin, far below the 30 s a busy pool
# is waited for (and a client's patience for a reply).
_PROMPT = 10.0


def test_an_outage_is_answered_within_seconds_and_the_server_back_takes_mail(own_cluster: Cluster, tmp_path: Path) -> None:
    """With the server down, every command that needs the store is answered 4xx
    promptly — the end of DATA (the group commit), AUTH, MAIL; the first after the drop
    and each one after it (a fresh connection the pool cannot make) — never after the
    pool's 30 s wait for a busy pool; once the
    server is back the same relay takes mail again (250 only after COMMIT: the
    message is in the store)."""
    with _relay_on_a_new_store(own_cluster, tmp_path) as served:
        plain = "AUTH PLAIN " + base64.b64encode(f"\0{served.user}\0{served.password}".encode()).decode()
        assert _send(served.port, served.user, served.password, 1) == 250
        authed = _RawSession(served.port)  # signed in while the server is up
        fresh = _RawSession(served.port)
        sending = [_RawSession(served.port) for _ in range(2)]  # at DATA when the server stops
        try:
            assert authed.command("EHLO client.test")[0] == 250
            assert authed.command(plain)[0] == 235
            assert fresh.command("EHLO client.test")[0] == 250
            for session in sending:
                assert session.command("EHLO client.test")[0] == 250
                assert session.command(plain)[0] == 235
                assert session.command("MAIL FROM:<a@example.com>")[0] == 250
                assert session.command("RCPT TO:<x@dest.example>")[0] == 250
                assert session.command("DATA")[0] == 354
            own_cluster.halt("fast")
            slowest = 0.0
            for n, session in enumerate(sending):  # the group commit's first write, then its next
                answer, took = _timed(session, f"From: a@example.com\r\nSubject: lost{n}\r\n\r\nbody\r\n.")
                assert answer[0] == 451 and answer[1].startswith("451 4.3.0"), answer
                slowest = max(slowest, took)
            for _ in range(3):  # each try meets the outage again: none waits for the pool
                answer, took = _timed(fresh, plain)
                assert answer == (454, "454 4.7.0 Temporary authentication failure"), answer
                slowest = max(slowest, took)
            time.sleep(1.5)  # past the relay's cache of the user (re-read at most every second)
            for _ in range(3):  # a signed-in session: MAIL re-reads the user from the store
                answer, took = _timed(authed, "MAIL FROM:<a@example.com>")
                assert answer[0] == 451 and answer[1].startswith("451 4.3.0"), answer
                slowest = max(slowest, took)
            assert slowest < _PROMPT, f"a reply during the outage took {slowest:.1f} s"
            assert authed.command("RSET")[0] == 250  # the sessions go on
            own_cluster.restart()
            deadline = time.monotonic() + 60
            while (answer := fresh.command(plain))[0] == 454 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert answer[0] == 235, answer
            assert authed.command("MAIL FROM:<a@example.com>")[0] == 250
            assert authed.command("RCPT TO:<x@dest.example>")[0] == 250
            assert authed.command("DATA")[0] == 354
            answer = authed.command("From: a@example.com\r\nSubject: m2\r\n\r\nbody 2\r\n.")
            assert answer[0] == 250, answer
            assert authed.command("QUIT")[0] == 221
        finally:
            for session in (authed, fresh, *sending):
                session.close()
        assert served.relay.poll() is None, "the relay stopped on the outage"
        assert _stored_subjects(served.url) == ["m1", "m2"]  # nothing refused was kept
