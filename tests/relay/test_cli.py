"""The `relay`, `status` and `tls export` commands as real subprocesses."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiosmtplib

from tests.conftest import ROOT, Cli
from tests.relay.support import PASSWORD, Seeded, message, stored_messages


class RelayProcess:
    """``smtpplus relay`` in a subprocess; ``ready`` is its ready file's content."""

    def __init__(self, cli: Cli, tmp_path: Path, *args: str, name: str = "relay") -> None:
        self.ready_path = tmp_path / f"{name}.ready.json"
        self.stderr_path = tmp_path / f"{name}.stderr"
        self.stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from console.cli import main; main()", "relay", "--host", "127.0.0.1",
             "--ready-file", str(self.ready_path), *args],
            env=cli.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.stderr,
        )
        self.ready: dict[str, Any] = {}

    def wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_path.exists():
                self.ready = json.loads(self.ready_path.read_text())
                return self.ready
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited {self.proc.returncode}: {self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"relay not ready after {timeout}s: {self.output()}")

    def output(self) -> str:
        if not self.stderr.closed:
            self.stderr.flush()
        return self.stderr_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.stderr.close()
        return code


async def test_daemon_ready_file_status_tls_export_and_sigterm(cli: Cli, seeded: Seeded, tmp_path: Path) -> None:
    relay = RelayProcess(cli, tmp_path, "--ports", "0*2")
    try:
        ready = relay.wait_ready()
        assert ready["pid"] == relay.proc.pid and ready["host"] == "127.0.0.1"
        assert len(ready["served"]) == 2 and ready["not_served"] == {}
        assert "serving 2 port(s)" in relay.output()

        status = cli.json("status")
        assert status["alive"] and status["pid"] == relay.proc.pid
        assert sorted(status["served"]) == sorted(ready["served"])
        assert status["tls_fingerprint"].startswith("SHA256:")

        # The self-signed certificate, exported, is what a client trusts.
        cert = tmp_path / "relay-cert.pem"
        cli("tls", "export", "--out", str(cert), check=True)
        assert cli("tls", "export", "--fingerprint", check=True).stdout.strip() == status["tls_fingerprint"]
        exported = cli.json("tls", "export")
        assert exported == {"pem": cert.read_text(), "fingerprint": status["tls_fingerprint"]}
        assert exported["pem"].startswith("-----BEGIN CERTIFICATE-----")
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ready["served"][1], start_tls=True,
                                 tls_context=ssl.create_default_context(cafile=str(cert)), timeout=10)
        await client.connect()
        await client.login("alice", PASSWORD["alice"])
        _, reply = await client.sendmail("x@a.example", ["r@d.example"], message())
        await client.quit()
        assert "queued as" in reply

        second = cli("relay", "--host", "127.0.0.1", "--ports", "0")
        assert second.returncode == 1
        [line] = second.stderr.strip().splitlines()
        assert "already running" in line and f"pid {relay.proc.pid}" in line
    finally:
        code = relay.stop(signal.SIGTERM)
    assert code == 0, relay.output()
    assert "stopped" in relay.output()
    stopped = cli("status", "--json")  # exit 3: no relay is running (LSB, as `systemctl status`)
    assert stopped.returncode == 3 and json.loads(stopped.stdout)["alive"] is False
    waited = cli("status", "--wait", "0.3")
    assert waited.returncode == 3 and "no live relay" in waited.stderr
    assert len(stored_messages(seeded.store_path)) == 1


def test_ports_not_served_are_reported_and_strict_ports_is_fatal(cli: Cli, seeded: Seeded, tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        relay = RelayProcess(cli, tmp_path, "--ports", f"{taken},0")
        try:
            ready = relay.wait_ready()
            assert ready["not_served"] == {str(taken): "in use"} and len(ready["served"]) == 1
            assert f"port {taken} not served: in use" in relay.output()
            status = cli.json("status")
            assert status["not_served"] == {str(taken): "in use"}
        finally:
            assert relay.stop() == 0
        strict = cli("relay", "--host", "127.0.0.1", "--ports", f"0,{taken}", "--strict-ports")
        assert strict.returncode == 1
        [line] = [x for x in strict.stderr.splitlines() if "error" in x.lower()]
        assert line.startswith("smtpplus: error:") and f"port {taken}: in use" in line
    finally:
        holder.close()


def test_bad_config_and_port_spec_are_one_line_errors(cli: Cli, tmp_path: Path) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text("prots = '2525'\n")
    bad = cli("relay", "--config", str(toml))
    assert bad.returncode == 1 and "prots" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    env_bad = cli("relay", "--ports", "25-x")
    assert env_bad.returncode == 1 and len(env_bad.stderr.strip().splitlines()) == 1
    hop = cli("relay", "--next-hop", "nohost")
    assert hop.returncode == 1 and "HOST:PORT" in hop.stderr


def test_status_and_tls_export_without_a_relay(cli: Cli) -> None:
    cli("lists", "add", "L", check=True)  # a store without a relay (`status` alone would not create one)
    status = cli("status")
    assert status.returncode == 3 and "not running" in status.stdout
    assert "stopped — no relay is running" in status.stdout and "running\n" not in status.stdout
    export = cli("tls", "export")
    assert export.returncode == 1 and "start the relay once" in export.stderr


def test_server_name_flag_names_the_relay_in_its_greeting_and_ehlo(cli: Cli, seeded: Seeded, tmp_path: Path) -> None:
    relay = RelayProcess(cli, tmp_path, "--ports", "0", "--server-name", "mx.flag.example")
    try:
        port = relay.wait_ready()["served"][0]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            stream = raw.makefile("rb")
            greeting = stream.readline().decode()
            raw.sendall(b"EHLO client.example\r\n")
            ehlo = stream.readline().decode()
            raw.sendall(b"QUIT\r\n")
        assert greeting.startswith("220 mx.flag.example ") and ehlo.startswith("250-mx.flag.example"), (greeting, ehlo)
    finally:
        assert relay.stop() == 0


def test_sigint_also_stops_cleanly(cli: Cli, seeded: Seeded, tmp_path: Path) -> None:
    relay = RelayProcess(cli, tmp_path, "--ports", "0", "--next-hop", "127.0.0.1:9")
    relay.wait_ready()
    assert cli.json("status")["next_hop"] == "127.0.0.1:9"  # the flag seeded the setting
    assert relay.stop(signal.SIGINT) == 0


def test_missing_tls_files_are_named(cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    def relay_error(cert: Path, key: Path) -> str:
        toml = tmp_path / "relay.toml"
        toml.write_text(f"tls_cert = {str(cert)!r}\ntls_key = {str(key)!r}\ndata_dir = {str(tmp_path / 'data')!r}\n")
        proc = cli("relay", "--host", "127.0.0.1", "--ports", "0", "--config", str(toml))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        [line] = [x for x in proc.stderr.splitlines() if "error" in x.lower()]
        assert "None" not in line
        return line

    cert, key = tmp_path / "gone" / "cert.pem", tmp_path / "gone" / "key.pem"
    both = relay_error(cert, key)
    assert f"tls_cert {cert} does not exist" in both and f"tls_key {key} does not exist" in both
    only_key = relay_error(tls_files["cert"], key)
    assert f"tls_key {key} does not exist" in only_key and str(tls_files["cert"]) not in only_key


async def test_after_sigterm_a_finishing_session_may_still_quit(cli: Cli, seeded: Seeded, tmp_path: Path) -> None:
    """SIGTERM: idle sessions get 421 at once; a transaction under way completes, and
    then QUIT gets 221 (not an unsolicited 421 read as QUIT's reply); a new MAIL gets 421."""
    from tests.relay.support import Raw

    relay = RelayProcess(cli, tmp_path, "--ports", "0", "--allow-plain-auth")
    try:
        port = relay.wait_ready()["served"][0]
        idle = await Raw.connect(port)
        assert (await idle.login("alice"))[0] == 235
        finishers = []
        for _ in range(2):
            session = await Raw.connect(port)
            assert (await session.login("alice"))[0] == 235
            assert (await session.command("MAIL FROM:<x@a.example>"))[0] == 250
            assert (await session.command("RCPT TO:<r@d.example>"))[0] == 250
            assert (await session.command("DATA"))[0] == 354
            await session.send(b"From: x@a.example\r\nTo: r@d.example\r\nSubject: t\r\n\r\nfirst half\r\n")
            finishers.append(session)

        relay.proc.send_signal(signal.SIGTERM)
        assert await idle.reply() == (421, "421 4.3.2 Service shutting down, try again later")
        assert await idle.closed()

        quitter, restarter = finishers
        for session in finishers:
            await session.send(b"second half\r\n.\r\n")
            code, text = await session.reply()
            assert code == 250 and "queued as" in text
        assert await quitter.command("QUIT") == (221, "221 2.0.0 Bye")
        assert await quitter.closed()
        assert (await restarter.command("MAIL FROM:<x@a.example>"))[0] == 421
        assert await restarter.closed()
        for session in (idle, quitter, restarter):
            await session.close()
    finally:
        code = relay.stop(signal.SIGTERM)
    assert code == 0, relay.output()
    assert len(stored_messages(seeded.store_path)) == 2


def test_status_wait_means_ready_ports_and_settings_published(cli: Cli, tmp_path: Path) -> None:
    # Started before the relay (and its store): the relay takes its lock and lease before
    # it makes its TLS certificate and binds its ports; `--wait` waits for all of it.
    waiter = subprocess.Popen(
        [sys.executable, "-c", "from console.cli import main; main()", "status", "--wait", "20"],
        env=cli.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    relay = RelayProcess(cli, tmp_path, "--ports", "0*3")
    try:
        out, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, err
        assert re.search(r"ports served +3 \(", out), out
        assert not re.search(r"server name +-", out) and re.search(r"TLS fingerprint +SHA256:", out), out
        ready = relay.wait_ready()
        status = cli.json("status")
        assert status["ready"] and sorted(status["served"]) == sorted(ready["served"])
    finally:
        assert relay.stop() == 0, relay.output()
    stopped = cli("status", "--json")
    assert stopped.returncode == 3 and json.loads(stopped.stdout)["ready"] is False
