"""Logs a pipeline can parse: JSON lines with the event's fields, client bytes escaped,
and a log file that logrotate can move (SIGHUP reopens it)."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from tests.conftest import ROOT, Cli
from tests.relay.support import PASSWORD, Raw, Seeded, client_context, message
from tests.relay.test_cli import RelayProcess
from tests.service.support import relay_toml

# An unknown command is logged by aiosmtpd ("unrecognised: …") with the client's bytes:
# OSC 0 would retitle the operator's terminal if it reached it raw.
HOSTILE = b"\x1b]0;OWNED\x07"


async def _send(port: int, tls_files: dict[str, Path], sender: str) -> tuple[int, str]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_context(tls_files), timeout=10)
    await client.connect()
    try:
        await client.login("alice", PASSWORD["alice"])
        try:
            _, reply = await client.sendmail(sender, ["r@d.example"], message(sender))
        except aiosmtplib.SMTPSenderRefused as refused:
            return refused.code, refused.message
        return 250, reply
    finally:
        await client.quit()


async def _hostile_login(port: int, tls_files: dict[str, Path]) -> None:
    """A failed AUTH whose user name carries OSC 0: its event's user= field must show it escaped."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_context(tls_files), timeout=10)
    await client.connect()
    try:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await client.login(HOSTILE.decode() + "alice", "wrong")
    finally:
        client.close()


async def _hostile_command(port: int) -> None:
    raw = await Raw.connect(port)
    code, _ = await raw.command(HOSTILE)
    assert code == 500
    await raw.close()


def _wait_for(path: Path, text: str, timeout: float = 20) -> str:
    """The file's content once it exists and holds ``text``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            content = path.read_text(encoding="utf-8")
            if text in content:
                return content
        time.sleep(0.05)  # the relay is another process: blocking here holds nothing up
    raise AssertionError(f"{text!r} not in {path} after {timeout}s")


async def test_json_logs_parse_line_by_line_with_the_event_fields(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    relay = RelayProcess(cli, tmp_path, "--config", str(relay_toml(tmp_path, tls_files)), "--log-format", "json")
    try:
        port = relay.wait_ready()["served"][0]
        refused = await _send(port, tls_files, "x@z.example")
        accepted = await _send(port, tls_files, "x@a.example")
        await _hostile_command(port)
    finally:
        assert relay.stop() == 0
    assert refused[0] == 550 and accepted[0] == 250
    queue_id = accepted[1].rsplit(" ", 1)[1]
    raw = relay.output()
    assert "\x1b" not in raw and "\x07" not in raw
    lines = [json.loads(line) for line in raw.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert all(line["time"].endswith("Z") for line in lines)

    [refusal] = [line for line in lines if line.get("reason") == "sender-not-authorized"]
    assert refusal == refusal | {
        "level": "info", "logger": "smtpplus.events", "kind": "refused", "user": "alice", "client": "127.0.0.1", "port": port,
    }
    assert "x@z.example" in refusal["message"]
    [acceptance] = [line for line in lines if line.get("reason") == "accepted"]
    assert acceptance == acceptance | {
        "kind": "queued", "queue_id": queue_id, "user": "alice", "client": "127.0.0.1", "port": port,
    }
    [login] = [line for line in lines if line.get("reason") == "auth-ok"][:1]
    assert login["kind"] == "auth" and login["user"] == "alice"
    [hostile] = [line for line in lines if "unrecognised" in line["message"]]
    assert "\\x1b]0;OWNED\\x07" in hostile["message"] and hostile["level"] == "warning"
    kinds = [(line.get("kind"), line.get("reason")) for line in lines]
    assert ("relay", "relay-started") in kinds and kinds[-2:] == [("relay", "relay-stopped"), (None, None)]
    assert lines[-1]["message"] == "stopped"


async def test_the_log_file_is_reopened_on_sighup_and_text_lines_are_escaped(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    log_file = tmp_path / "logs" / "relay.log"
    log_file.parent.mkdir()
    relay = RelayProcess(cli, tmp_path, "--config", str(relay_toml(tmp_path, tls_files)), "--log-file", str(log_file))
    rotated = log_file.with_name("relay.log.1")
    try:
        port = relay.wait_ready()["served"][0]
        assert "serving 2 port(s)" in _wait_for(log_file, "serving")
        await _hostile_command(port)
        _wait_for(log_file, "unrecognised")
        log_file.rename(rotated)  # what logrotate does
        relay.proc.send_signal(signal.SIGHUP)
        _wait_for(log_file, "")  # the reopen makes a new file at the path
        refused = await _send(port, tls_files, "x@z.example")
        assert refused[0] == 550
        await _hostile_login(port, tls_files)
        fresh = _wait_for(log_file, "auth-unknown-user")
        assert "sender-not-authorized" in fresh
    finally:
        assert relay.stop() == 0
    assert relay.output() == ""  # nothing on stderr: it all went to the file
    old = rotated.read_text(encoding="utf-8")
    assert "sender-not-authorized" not in old and "serving 2 port(s)" not in log_file.read_text(encoding="utf-8")
    for text in (old, fresh):
        assert "\x1b" not in text and "\x07" not in text
    [hostile] = [line for line in old.splitlines() if "unrecognised" in line]
    assert "\\x1b]0;OWNED\\x07" in hostile and " WARNING " in hostile
    [refusal] = [line for line in fresh.splitlines() if "sender-not-authorized" in line]
    assert " INFO refused sender-not-authorized: " in refusal
    assert f"kind=refused reason=sender-not-authorized user=alice client=127.0.0.1 port={port}" in refusal
    # A control byte in user= is shown as in the message: \x1b, as docs/production.md says (not "?").
    # aiosmtplib tries each offered mechanism in turn (PLAIN, then LOGIN): one line per try,
    # and the file may be read between them.
    logins = [line for line in fresh.splitlines() if "auth-unknown-user" in line]
    assert logins
    for login in logins:
        assert f"kind=auth reason=auth-unknown-user user=\\x1b]0;OWNED\\x07alice client=127.0.0.1 port={port}" in login
    assert log_file.read_text(encoding="utf-8").rstrip().endswith("stopped")


@pytest.mark.parametrize("value", ["xml", "JSON "])
def test_a_bad_log_format_is_a_one_line_error(cli: Cli, tmp_path: Path, tls_files: dict[str, Path], value: Any) -> None:
    toml = relay_toml(tmp_path, tls_files, f'log_format = "{value}"\n')
    proc = cli("relay", "--config", str(toml))
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "log_format" in proc.stderr and "text or json" in proc.stderr
    flag = cli("relay", "--log-format", "xml")
    assert flag.returncode == 2 and "text" in flag.stderr and "json" in flag.stderr


def test_an_unwritable_log_file_is_a_one_line_error(cli: Cli, tmp_path: Path) -> None:
    proc = cli("relay", "--log-file", str(tmp_path / "missing" / "relay.log"))
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "log file" in proc.stderr and "--log-file" in proc.stderr


def _section(title: str) -> str:
    return (ROOT / "docs" / "production.md").read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_documented_json_fields_are_the_ones_the_relay_writes() -> None:
    """docs/production.md's field table names exactly what JsonFormatter writes, and its
    example lines are JSON objects with those fields."""
    from relay.logs import EVENT_FIELDS

    section = _section("Logs")
    documented = {
        name
        for line in section.splitlines() if line.startswith("| `")
        for name in re.findall(r"`([a-z_]+)`", line.split(" | ", 1)[0])
    }
    assert documented == {"time", "level", "logger", "message", "exception", *EVENT_FIELDS}
    [example] = _blocks(section, "json")
    for line in example.splitlines():
        fields = json.loads(line)
        assert {"time", "level", "logger", "message"} <= fields.keys() <= documented


def test_the_documented_relay_toml_loads_with_465_as_implicit_tls(tmp_path: Path) -> None:
    from relay.config import load_config
    from relay.metrics import parse_listen

    [example] = _blocks(_section("systemd"), "toml")
    toml = tmp_path / "relay.toml"
    toml.write_text(example)
    config = load_config(toml, environ={})
    # 465 is implicit TLS ("SSL/TLS" in mail clients): in `ports` it would offer STARTTLS.
    assert config.ports == "25,587" and config.resolved_tls_ports() == "465"
    assert parse_listen(str(config.metrics_listen)) == ("127.0.0.1", 9325)
