"""``Type=notify``: the relay's sd_notify datagrams, received on a socket the test owns."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from relay.sdnotify import Notifier, socket_address
from tests.conftest import ROOT, Cli
from tests.relay.test_cli import RelayProcess
from tests.service.support import relay_toml


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = socket_address(name)
        assert address is not None
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.received: list[dict[str, str]] = []

    def wait_for(self, key: str, timeout: float = 30, after: int = 0) -> tuple[int, dict[str, str]]:
        """The first datagram (from index ``after`` on) that sets ``key``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, fields in enumerate(self.received[after:], start=after):
                if key in fields:
                    return i, fields
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {key} in {timeout}s; got {self.received}")
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def close(self) -> None:
        self.sock.close()


def _env(cli: Cli, notify: str, **extra: str) -> Cli:
    env = dict(cli.env)
    env.pop("WATCHDOG_USEC", None)
    env.pop("WATCHDOG_PID", None)
    env.update(NOTIFY_SOCKET=notify, **extra)
    return Cli(cli.store, env)


def test_ready_watchdog_and_stopping_on_an_abstract_socket(
    cli: Cli, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    notify = NotifySocket(f"@smtpplus-test-{uuid.uuid4().hex}")
    relay = RelayProcess(
        _env(cli, notify.name, WATCHDOG_USEC="400000"), tmp_path, "--config", str(relay_toml(tmp_path, tls_files))
    )
    try:
        index, ready = notify.wait_for("READY")
        assert ready["READY"] == "1"
        assert "serving 2 port(s)" in ready["STATUS"]
        # READY comes after the ports are bound and the ready file is written.
        served = relay.wait_ready(timeout=0.1)["served"]
        for port in served:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                assert conn.recv(4).startswith(b"220")
        # WATCHDOG_USEC=0.4 s: a ping every 0.2 s, from the event loop.
        first, _ = notify.wait_for("WATCHDOG", after=index + 1)
        second, ping = notify.wait_for("WATCHDOG", after=first + 1)
        assert ping == {"WATCHDOG": "1"}
        assert not any("STOPPING" in fields for fields in notify.received)
        relay.proc.send_signal(signal.SIGTERM)
        _, stopping = notify.wait_for("STOPPING", after=second + 1)
        assert stopping["STOPPING"] == "1"
        assert relay.stop() == 0
    finally:
        if relay.proc.poll() is None:
            relay.stop(signal.SIGKILL)
        notify.close()


def test_ready_and_stopping_on_a_path_socket_without_watchdog(
    cli: Cli, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    # A short directory: a socket path must fit in sun_path (108 bytes).
    with tempfile.TemporaryDirectory(prefix="sd-") as short:
        notify = NotifySocket(str(Path(short) / "notify"))
        relay = RelayProcess(_env(cli, notify.name), tmp_path, "--config", str(relay_toml(tmp_path, tls_files)))
        try:
            notify.wait_for("READY")
            assert relay.stop() == 0
            notify.wait_for("STOPPING")
            assert not any("WATCHDOG" in fields for fields in notify.received)
        finally:
            if relay.proc.poll() is None:
                relay.stop(signal.SIGKILL)
            notify.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    assert not Notifier({}).enabled
    assert not Notifier({}).ready("x")
    assert Notifier({"NOTIFY_SOCKET": "relative/path"}).address is None
    assert Notifier({"NOTIFY_SOCKET": "@x"}).address == b"\0x"


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's watchdog
    ],
)
def test_watchdog_interval_is_half_the_timeout(environ: dict[str, str], interval: float | None) -> None:
    assert Notifier({"NOTIFY_SOCKET": "@x", **environ}).watchdog_interval == interval


def test_the_unit_file_runs_the_relay_as_the_sysusers_user_with_only_cap_net_bind_service() -> None:
    systemd = ROOT / "docs" / "systemd"
    unit = _settings((systemd / "smtpplus.service").read_text())
    assert unit["Type"] == ["notify"] and unit["WatchdogSec"] and unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["AmbientCapabilities"] == unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["ProtectSystem"] == ["strict"] and "/var/lib/smtpplus" in unit["ReadWritePaths"]
    sysusers = [line.split() for line in (systemd / "smtpplus.sysusers.conf").read_text().splitlines() if line and line[0] != "#"]
    assert [(row[0], row[1]) for row in sysusers] == [("u", unit["User"][0])]
    tmpfiles = [line.split() for line in (systemd / "smtpplus.tmpfiles.conf").read_text().splitlines() if line and line[0] != "#"]
    assert ["d", "/var/lib/smtpplus", "0750", "smtpplus", "smtpplus", "-", "-"] in tmpfiles
    # Every option ExecStart passes is one `smtpplus relay` accepts.
    command = unit["ExecStart"][0].split()
    assert command[1] == "relay"
    help_text = subprocess.run(
        [sys.executable, "-c", "from console.cli import main; main()", "relay", "--help"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout
    for option in (word for word in command[2:] if word.startswith("--")):
        assert option in help_text, option


def _settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed: the unit is checked by the test above only")
def test_systemd_analyze_verifies_the_unit_file(tmp_path: Path) -> None:
    """systemd's own parser accepts every line (an unknown or misspelt setting is an error
    it prints), with ExecStart pointed at this venv's smtpplus (verify wants it to exist)."""
    smtpplus = Path(sys.executable).parent / "smtpplus"
    assert smtpplus.exists()
    text = (ROOT / "docs" / "systemd" / "smtpplus.service").read_text()
    assert "/opt/smtpplus/bin/smtpplus" in text
    unit = tmp_path / "smtpplus.service"
    unit.write_text(text.replace("/opt/smtpplus/bin/smtpplus", str(smtpplus)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
