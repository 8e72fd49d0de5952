"""Configuration layering and listening: ports, reasons, the open-file limit."""

from __future__ import annotations

import asyncio
import resource
import socket
from pathlib import Path

import pytest

from relay.config import ConfigError, RelayConfig, load_config
from relay.listen import ListenError, bind_all, expand_ports, listen_plan, raise_open_file_limit
from relay.ports import DEFAULT_SPEC
from tests.relay.support import client_context


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


def test_default_listen_spec_is_starttls_on_25_587_1025_5000_and_implicit_tls_on_465() -> None:
    config = load_config(None, environ={})
    assert (config.ports, config.tls_ports, config.resolved_tls_ports()) == ("25,587,1025-5000", None, "465")
    starttls, implicit = listen_plan(config.ports, config.resolved_tls_ports())
    assert (len(starttls), implicit) == (3978, [465]) and starttls[:3] == [25, 587, 1025]


@pytest.mark.parametrize(
    ("overrides", "env", "toml", "expected"),
    [
        ({"ports": "2525"}, {}, "", ""),  # --ports alone: that port only
        ({"ports": "0"}, {}, "", ""),
        ({}, {"SMTPPLUS_PORTS": "2525"}, "", ""),  # from the environment too
        ({}, {}, 'ports = "2525"', ""),  # and from TOML
        ({"ports": "2525", "tls_ports": "4650"}, {}, "", "4650"),
        ({"tls_ports": "none"}, {}, "", ""),  # the default ports without 465
        ({"tls_ports": ""}, {}, "", ""),
        ({}, {"SMTPPLUS_TLS_PORTS": "10465"}, "", "10465"),
        ({}, {}, 'tls_ports = "465,10465"', "465,10465"),
    ],
)
def test_tls_ports_only_with_the_default_ports_or_when_given(
    tmp_path: Path, overrides: dict[str, str], env: dict[str, str], toml: str, expected: str
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(toml + "\n")
    assert load_config(path, overrides, environ=env).resolved_tls_ports() == expected
    # Built directly (tests, the harness): other ports mean no implicit TLS either.
    assert RelayConfig(ports="0").resolved_tls_ports() == "" and RelayConfig().resolved_tls_ports() == "465"


def test_a_port_in_both_specs_is_refused() -> None:
    with pytest.raises(ListenError, match="port 465 is in both ports and tls_ports"):
        listen_plan("25,465", "465")
    assert listen_plan("0", "0") == ([0], [0])  # two distinct ephemeral ports
    assert listen_plan("2525", "") == ([2525], [])


async def test_bind_all_serves_implicit_tls_on_its_ports(tls_files: dict[str, Path]) -> None:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])

    class Hello(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            encrypted = transport.get_extra_info("ssl_object") is not None
            transport.write(b"tls\n" if encrypted else b"clear\n")  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    listeners = await bind_all(loop, Hello, "127.0.0.1", [0], tls_ports=[0], tls_factory=Hello, ssl_context=context)
    try:
        assert len(listeners.served) == 2 and len(listeners.implicit_tls) == 1
        (tls_port,) = listeners.implicit_tls
        (plain_port,) = [p for p in listeners.served if p != tls_port]
        reader, writer = await asyncio.open_connection("127.0.0.1", tls_port, ssl=client_context(tls_files), server_hostname="localhost")
        assert await reader.readline() == b"tls\n"
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", plain_port)
        assert await reader.readline() == b"clear\n"
        writer.close()
    finally:
        listeners.close()


def test_expand_ports() -> None:
    assert len(expand_ports(DEFAULT_SPEC)) == 3978
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


async def test_an_implicit_tls_handshake_that_never_comes_frees_its_slot(tls_files: dict[str, Path]) -> None:
    """The implicit-TLS port counts a connection before its handshake (admit) and
    gives its slot back (abandon) when the handshake times out; over the cap the
    connection is closed at once."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    seen: list[str] = []

    class Counted(asyncio.Protocol):
        def admit(self, peer: object, local: object) -> bool:
            seen.append("admit")
            return seen.count("admit") == 1  # one slot

        def abandon(self, *refusal: object) -> None:
            seen.append("abandon" + (f" {refusal[0]}" if refusal else ""))

    loop = asyncio.get_running_loop()
    listeners = await bind_all(
        loop, Counted, "127.0.0.1", [], tls_ports=[0], tls_factory=Counted, ssl_context=context, handshake_timeout=0.5
    )
    try:
        (port,) = listeners.implicit_tls
        first_reader, first = await asyncio.open_connection("127.0.0.1", port)
        second_reader, second = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(second_reader.read(), 10) == b""  # over the cap: closed at once
        assert await asyncio.wait_for(first_reader.read(), 10) == b""  # no handshake: closed after 0.5 s
        for _ in range(100):
            if len(seen) == 4:
                break
            await asyncio.sleep(0.05)
        # (The two abandons may come in either order on a loaded machine.)
        assert seen[:2] == ["admit", "admit"] and sorted(seen[2:]) == ["abandon", "abandon connection-limit"]
        first.close()
        second.close()
    finally:
        listeners.close()


async def test_an_implicit_tls_port_serves_on_after_one_connection_failed(tls_files: dict[str, Path]) -> None:
    """A session that cannot be made for one connection (the factory raises) closes
    that connection; the port goes on serving the next."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    made: list[int] = []

    class Hello(asyncio.Protocol):
        def __init__(self) -> None:
            made.append(1)
            if len(made) == 1:
                raise RuntimeError("the first session cannot be made")

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(b"tls\n")  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    listeners = await bind_all(loop, Hello, "127.0.0.1", [], tls_ports=[0], tls_factory=Hello, ssl_context=context)
    try:
        (port,) = listeners.implicit_tls
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed: no session for it
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(tls_files), server_hostname="localhost")
        assert await asyncio.wait_for(reader.readline(), 10) == b"tls\n"
        writer.close()
    finally:
        listeners.close()
