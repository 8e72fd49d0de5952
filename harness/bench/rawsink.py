"""The raw aiosmtpd reference sink: STARTTLS, any AUTH accepted, nothing stored.

What the relay's acceptance rate is measured against: stock aiosmtpd doing the least
an SMTP server can (it replies ``250`` to every message and keeps nothing).

As a process (so it has an event loop and a CPU of its own, like the relay)::

    python -m harness.bench.rawsink --cert C --key K --ready-file F [--port 0] [--loop uvloop]

writes ``{"pid", "port"}`` to the ready file once listening, and exits 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session


class AcceptAll:
    """A handler that accepts every message without looking at it."""

    def __init__(self) -> None:
        self.accepted = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.accepted += 1
        return "250 2.0.0 Ok: queued"


def accept_any_auth(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    return AuthResult(success=True)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context


async def start_raw_sink(host: str, port: int, tls_context: ssl.SSLContext) -> tuple[asyncio.AbstractServer, int, AcceptAll]:
    """Serve the raw sink on ``host:port`` (0: ephemeral). Returns (server, port, handler)."""
    handler = AcceptAll()
    loop = asyncio.get_running_loop()
    # The same listening socket setup as the relay (TCP_NODELAY on accepted sockets).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(511)
    sock.setblocking(False)

    def factory() -> SMTP:
        return SMTP(
            handler,
            hostname="rawsink.localhost",
            tls_context=tls_context,
            authenticator=accept_any_auth,
            auth_required=True,
            loop=loop,
        )

    server = await loop.create_server(factory, sock=sock)
    return server, int(server.sockets[0].getsockname()[1]), handler


async def _main(args: argparse.Namespace) -> int:
    server, port, _ = await start_raw_sink(args.host, args.port, server_context(args.cert, args.key))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tmp = args.ready_file.with_name(f".{args.ready_file.name}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": port}))
    os.replace(tmp, args.ready_file)
    await stop.wait()
    server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Raw aiosmtpd reference sink (STARTTLS, any AUTH, no store).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="asyncio")
    args = parser.parse_args(argv)
    # aiosmtpd logs every command at INFO and a deprecation warning per AUTH: silence both.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    if args.loop == "uvloop":
        import uvloop

        return uvloop.run(_main(args))
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
