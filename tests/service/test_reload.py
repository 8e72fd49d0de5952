"""SIGHUP re-reads the configuration file: what can change live does (a new session sees
the new SIZE), what cannot is named in one warning line, an invalid file keeps the old
configuration; every reload is an event."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from relay.config import RUNTIME_SEEDS, RelayConfig
from relay.service import LIVE, NEW_SESSIONS, RESTART
from tests.conftest import ROOT, Cli
from tests.interop.test_tls import der_fingerprint, install_pair
from tests.relay.support import Seeded, client_context, events, message, smtp_client
from tests.relay.test_cli import RelayProcess
from tests.service.support import relay_toml

MIB = 1024 * 1024


def reload_events(store_path: Path) -> list[Any]:
    return [e for e in events(store_path) if e.reason in ("config-reloaded", "config-reload-failed")]


def hang_up(relay: RelayProcess, store_path: Path, count: int) -> Any:
    """SIGHUP, then the ``count``-th reload event once it is committed."""
    relay.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = reload_events(store_path)
        if len(seen) >= count:
            return seen[count - 1]
        time.sleep(0.05)  # the relay is another process: blocking here holds nothing up
    raise AssertionError(f"no reload event #{count} after 30 s: {relay.output()}")


async def ehlo_size(port: int, tls_files: dict[str, Path]) -> tuple[aiosmtplib.SMTP, int]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_context(tls_files), timeout=10)
    await client.connect()
    await client.ehlo()
    return client, int(client.esmtp_extensions["size"])


def test_every_setting_is_live_new_sessions_restart_or_a_store_seed() -> None:
    groups = [LIVE, NEW_SESSIONS, RESTART, frozenset(RUNTIME_SEEDS)]
    names = [f.name for f in dataclasses.fields(RelayConfig)]
    assert sorted(names) == sorted(name for group in groups for name in group)  # each exactly once


async def test_sighup_applies_a_new_size_to_new_sessions_and_records_the_reload(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    toml = relay_toml(tmp_path, tls_files, f"max_message_size = {10 * MIB}\n")
    relay = RelayProcess(cli, tmp_path, "--config", str(toml))
    try:
        port = relay.wait_ready()["served"][0]
        before, size = await ehlo_size(port, tls_files)
        assert size == 10 * MIB
        toml.write_text(toml.read_text().replace(f"max_message_size = {10 * MIB}", f"max_message_size = {2 * MIB}"))
        event = hang_up(relay, seeded.store_path, 1)
        assert (event.kind, event.reason) == ("relay", "config-reloaded")
        assert "1 setting(s) changed (max_message_size)" in event.detail and "restart" not in event.detail
        after, size = await ehlo_size(port, tls_files)
        assert size == 2 * MIB
        await after.quit()
        # The session open across the reload goes on, with the size it was offered.
        assert (await before.ehlo())[0] == 250 and int(before.esmtp_extensions["size"]) == 10 * MIB
        await before.quit()
    finally:
        assert relay.stop() == 0
    assert "configuration reloaded: 1 setting(s) changed (max_message_size)" in relay.output()
    assert "config reload:" not in relay.output()  # nothing needs a restart: no warning


async def test_an_invalid_file_keeps_the_old_configuration_and_says_why_in_one_line(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    toml = relay_toml(tmp_path, tls_files, f"max_message_size = {10 * MIB}\n")
    good = toml.read_text()
    relay = RelayProcess(cli, tmp_path, "--config", str(toml))
    try:
        port = relay.wait_ready()["served"][0]
        broken = [
            ("max_message_size = 2\nheader_size_limit = [", "is not valid TOML"),
            ("max_message_size = 2\nmax_mesage_size = 3", "unknown key 'max_mesage_size' — did you mean 'max_message_size'?"),
            ('max_message_size = "big"', "'big' is not a valid int"),
        ]
        for number, (text, why) in enumerate(broken, start=1):
            toml.write_text(good.replace(f"max_message_size = {10 * MIB}", text))
            event = hang_up(relay, seeded.store_path, number)
            assert (event.kind, event.reason) == ("relay", "config-reload-failed")
            assert why in event.detail and "the previous one stays in use" in event.detail
            client, size = await ehlo_size(port, tls_files)
            assert size == 10 * MIB
            await client.quit()
    finally:
        assert relay.stop() == 0
    failures = [line for line in relay.output().splitlines() if "configuration not reloaded" in line]
    assert len(failures) == 3, relay.output()
    assert "Traceback" not in relay.output()


async def test_a_change_that_needs_a_restart_is_named_in_one_warning(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    toml = relay_toml(tmp_path, tls_files, "max_recipients = 100\n")
    relay = RelayProcess(cli, tmp_path, "--config", str(toml))
    try:
        served = relay.wait_ready()["served"]
        client = await smtp_client(served[0], tls_files, login="alice")  # open across the reload
        toml.write_text(
            toml.read_text().replace('ports = "0*2"', 'ports = "0*3"').replace("paused = true", "paused = false")
            .replace("max_recipients = 100", "max_recipients = 5")
        )
        event = hang_up(relay, seeded.store_path, 1)
        assert event.reason == "config-reloaded"
        assert "(max_recipients)" in event.detail
        assert "needs a restart, kept: ports" in event.detail and "kept: paused" in event.detail
        assert sorted(cli.json("status")["served"]) == sorted(served)  # still the ports bound at start
        # A live limit reaches the session opened before the reload.
        assert (await client.mail("x@a.example"))[0] == 250
        codes = [(await client.rcpt(f"r{n}@d.example"))[0] for n in range(5)]
        assert codes == [250] * 5
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("r5@d.example")
        assert refused.value.code == 452
        await client.quit()
    finally:
        assert relay.stop() == 0
    warnings = [line for line in relay.output().splitlines() if "config reload:" in line]
    assert len(warnings) == 1 and "needs a restart, kept: ports" in warnings[0], relay.output()


def test_a_new_log_format_applies_without_a_restart(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    toml = relay_toml(tmp_path, tls_files, 'log_format = "text"\n')
    relay = RelayProcess(cli, tmp_path, "--config", str(toml))
    try:
        relay.wait_ready()
        toml.write_text(toml.read_text().replace('log_format = "text"', 'log_format = "json"'))
        assert "(log_format)" in hang_up(relay, seeded.store_path, 1).detail
    finally:
        assert relay.stop() == 0
    lines = relay.output().splitlines()
    assert not lines[0].startswith("{")  # text until the reload
    stopped = [line for line in lines if "relay-stopped" in line]
    assert len(stopped) == 1 and json.loads(stopped[0])["reason"] == "relay-stopped"


def test_a_new_log_level_applies_without_a_restart(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    toml = relay_toml(tmp_path, tls_files, 'log_level = "warning"\n')
    relay = RelayProcess(cli, tmp_path, "--config", str(toml))
    try:
        relay.wait_ready()
        toml.write_text(toml.read_text().replace('log_level = "warning"', 'log_level = "info"'))
        assert "(log_level)" in hang_up(relay, seeded.store_path, 1).detail
    finally:
        assert relay.stop() == 0
    output = relay.output()
    assert "relay-started" not in output  # an info line, while the level was warning
    assert "relay-stopped" in output  # info again after the reload


def test_a_log_file_that_cannot_be_opened_keeps_the_old_destination_and_the_new_level_applies(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    toml = relay_toml(tmp_path, tls_files, 'log_level = "warning"\n')
    relay = RelayProcess(cli, tmp_path, "--config", str(toml))
    missing = tmp_path / "no-such-dir" / "relay.log"
    try:
        relay.wait_ready()
        toml.write_text(
            toml.read_text().replace('log_level = "warning"', f'log_level = "info"\nlog_file = "{missing}"')
        )
        assert "(log_file, log_level)" in hang_up(relay, seeded.store_path, 1).detail
    finally:
        assert relay.stop() == 0
    output = relay.output()
    [failure] = [line for line in output.splitlines() if "cannot open the log file" in line]
    assert str(missing) in failure and "the previous log destination stays in use" in failure
    assert "relay-started" not in output  # an info line, while the level was warning
    assert "relay-stopped" in output  # still on stderr, at the new level
    assert not missing.parent.exists()


def test_log_level_comes_from_the_file_the_environment_or_the_flag_and_a_bad_one_is_one_line(
    cli: Cli, tmp_path: Path
) -> None:
    from relay.config import ConfigError, load_config

    assert load_config(None, environ={}).log_level == "info"
    assert load_config(None, environ={"SMTPPLUS_LOG_LEVEL": "WARNING"}).log_level == "warning"
    assert load_config(None, {"log_level": "debug"}, environ={"SMTPPLUS_LOG_LEVEL": "error"}).log_level == "debug"
    with pytest.raises(ConfigError, match="log_level 'loud' is not a log level: use debug, info, warning, error"):
        load_config(None, environ={"SMTPPLUS_LOG_LEVEL": "loud"})
    result = cli("relay", "--log-level", "loud", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr


def peer_fingerprint(client: aiosmtplib.SMTP) -> str:
    assert client.transport is not None
    der = client.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest()


async def test_sighup_with_a_new_certificate_reaches_new_clients_while_an_open_session_completes(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path], tls_ca: Any
) -> None:
    pair = {**tls_files, "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    shutil.copyfile(tls_files["cert"], pair["cert"])
    shutil.copyfile(tls_files["key"], pair["key"])
    toml = relay_toml(tmp_path, pair, "tls_reload_interval = 0\n")  # no polling: only SIGHUP reloads
    relay = RelayProcess(cli, tmp_path, "--config", str(toml))
    try:
        port = relay.wait_ready()["served"][0]
        before = await smtp_client(port, tls_files, login="alice")  # mid-transaction across the reload
        old = peer_fingerprint(before)
        assert old == der_fingerprint(tls_files["cert"])
        assert (await before.mail("x@a.example"))[0] == 250
        assert (await before.rcpt("r@d.example"))[0] == 250
        install_pair(tls_ca, pair["cert"], pair["key"])
        event = hang_up(relay, seeded.store_path, 1)
        assert event.reason == "config-reloaded"  # the configuration is read before the pair
        deadline = time.monotonic() + 30
        while not [e for e in events(seeded.store_path) if e.reason == "tls-reloaded"]:
            assert time.monotonic() < deadline, relay.output()
            await asyncio.sleep(0.05)
        after = await smtp_client(port, tls_files)
        assert peer_fingerprint(after) == der_fingerprint(pair["cert"]) != old
        await after.quit()
        # The session opened before the reload finishes its message on the old certificate.
        assert (await before.data(message("x@a.example")))[0] == 250
        assert peer_fingerprint(before) == old
        await before.quit()
    finally:
        assert relay.stop() == 0
    assert [e.reason for e in events(seeded.store_path)].count("accepted") == 1


def test_the_reload_table_in_the_docs_puts_every_setting_where_the_relay_does() -> None:
    """docs/production.md's SIGHUP table: every setting in one row, and the rows that say
    "new sessions", "need a restart" and "seeds only" hold exactly those of relay/service.py."""
    section = (ROOT / "docs" / "production.md").read_text().split("## Reloading the configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[str]] = {"live": set(), "new": set(), "restart": set(), "seeds": set()}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names_cell, effect = (cell.strip() for cell in line.strip().strip("|").split(" | ", 1))
        group = (
            "restart" if "need a restart" in effect else "seeds" if effect.startswith("seeds only")
            else "new" if effect.startswith("new sessions") else "live"
        )
        rows[group] |= set(re.findall(r"`([a-z_]+)`", names_cell))
    assert rows == {"live": set(LIVE), "new": set(NEW_SESSIONS), "restart": set(RESTART), "seeds": set(RUNTIME_SEEDS)}


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("max_mesage_size = 3", "unknown key 'max_mesage_size' — did you mean 'max_message_size'?"),
        ("[relay]\nprots = 1", "unknown key 'relay.prots' — did you mean 'ports'?"),
        ("colour = 1", "unknown key 'colour' — every setting is in docs/configuration.md"),
    ],
)
def test_an_unknown_key_names_the_setting_it_most_likely_meant(tmp_path: Path, text: str, fix: str) -> None:
    """An installed relay has no source tree to look in: the error names the fix itself."""
    from relay.config import ConfigError, load_config

    toml = tmp_path / "relay.toml"
    toml.write_text(text + "\n")
    with pytest.raises(ConfigError) as error:
        load_config(toml, environ={})
    assert str(error.value) == f"config file {toml}: {fix}"
