"""Configuration layering and listening: ports, reasons, the open-file limit."""

from __future__ import annotations

import asyncio
import resource
import socket
from pathlib import Path

import pytest

from relay.config import ConfigError, RelayConfig, load_config
from relay.listen import ListenError, bind_all, expand_ports, raise_open_file_limit
from relay.ports import DEFAULT_SPEC


def test_defaults_are_documented_and_sane() -> None:
    config = RelayConfig()
    assert (config.host, config.ports, config.allow_plain_auth) == ("0.0.0.0", DEFAULT_SPEC, False)
    assert config.max_recipients == 100 and config.stale_after == 10.0 and config.heartbeat_interval == 1.0
    # A 64-connection loopback load test passes with the defaults.
    assert config.max_connections >= 1024 and config.max_connections_per_client >= 128


def test_layers_defaults_toml_environment_flags(tmp_path: Path) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text('host = "127.0.0.1"\nports = "2525"\n[delivery]\nretry_base = 5\nnext_hop = "hop.example:25"\n')
    env = {"SMTPPLUS_CONFIG": str(toml), "SMTPPLUS_PORTS": "2526", "SMTPPLUS_ALLOW_PLAIN_AUTH": "yes"}
    config = load_config(None, {"ports": "2527", "host": None}, environ=env)
    assert config.host == "127.0.0.1"  # TOML (the flag was not given)
    assert config.ports == "2527"  # flag over environment over TOML
    assert config.allow_plain_auth is True  # environment
    assert config.retry_base == 5.0 and config.next_hop == "hop.example:25"  # [delivery] table
    assert load_config(toml, environ={}).ports == "2525"


def test_unknown_toml_key_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text('host = "127.0.0.1"\nmax_recipeints = 5\n')
    with pytest.raises(ConfigError) as error:
        load_config(toml, environ={})
    assert "max_recipeints" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [('max_recipients = "many"', "max_recipients"), ("host = [1]", "host"), ("allow_plain_auth = 3", "allow_plain_auth"),
     ("this is not toml", "not valid TOML")],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text(text + "\n")
    with pytest.raises(ConfigError) as error:
        load_config(toml, environ={})
    assert fragment in str(error.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_expand_ports() -> None:
    assert len(expand_ports(DEFAULT_SPEC)) == 3977
    assert expand_ports("0") == [0]
    assert expand_ports("2525,0*2") == [2525, 0, 0]


async def test_a_port_in_use_is_reported_and_the_rest_served() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        listeners = await bind_all(loop, asyncio.Protocol, "127.0.0.1", [taken, 0, 0])
        try:
            assert listeners.not_served == {taken: "in use"}
            assert len(listeners.served) == 2 and all(s.sockets for s in listeners.servers)
            # Each served port really accepts connections.
            for port in listeners.served:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
        finally:
            listeners.close()
        with pytest.raises(ListenError, match=f"port {taken}: in use"):
            await bind_all(loop, asyncio.Protocol, "127.0.0.1", [0, taken], strict=True)
        with pytest.raises(ListenError, match="no port could be bound"):
            await bind_all(loop, asyncio.Protocol, "127.0.0.1", [taken])
    finally:
        holder.close()


def test_open_file_limit_is_raised_or_a_clear_error() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert raise_open_file_limit(min(soft, 64)) >= min(soft, 64)
    if hard != resource.RLIM_INFINITY:
        with pytest.raises(ListenError, match="open-file limit"):
            raise_open_file_limit(hard + 1)
