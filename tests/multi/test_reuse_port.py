"""``--reuse-port``: several relays' listeners on one port (SO_REUSEPORT), and the
one-line refusal on a SQLite store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from relay.listen import ListenError, bind_all


class _Hello(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.name.encode())
        transport.close()


def test_two_listeners_share_one_port_and_the_kernel_spreads_connections() -> None:
    async def main() -> set[str]:
        loop = asyncio.get_running_loop()
        first = await bind_all(loop, lambda: _Hello("a"), "127.0.0.1", [0], strict=True, reuse_port=True)
        port = first.served[0]
        second = await bind_all(loop, lambda: _Hello("b"), "127.0.0.1", [port], strict=True, reuse_port=True)
        assert second.served == [port]
        with pytest.raises(ListenError, match="in use"):  # a listener without SO_REUSEPORT is refused the port
            await bind_all(loop, lambda: _Hello("c"), "127.0.0.1", [port])
        heard = set()
        for _ in range(200):  # the kernel hashes each connection's source port to one of them
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            heard.add((await reader.read(1)).decode())
            writer.close()
            if heard == {"a", "b"}:
                break
        for listeners in (first, second):
            listeners.close()
        return heard

    assert asyncio.run(main()) == {"a", "b"}


def test_reuse_port_is_refused_on_a_sqlite_store(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from console.cli import main; main()", "relay", "--reuse-port",
         "--host", "127.0.0.1", "--ports", "0", "--db", str(tmp_path / "s.db")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "smtpplus: error: --reuse-port needs a PostgreSQL store (--db postgresql://…): one relay serves a SQLite store"
    ]
