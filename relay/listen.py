"""Listening on every port of a spec: one loop, one protocol factory, clear per-port reasons.

``expand_ports(spec)`` turns a spec into ports, where ``0`` is one ephemeral port and
``0*N`` is N of them (tests and benchmarks: the ready file / the store then tell the
real numbers). ``listen_plan(ports, tls_ports)`` expands both specs of a config and
refuses a port in both. ``raise_open_file_limit(needed)`` lifts RLIMIT_NOFILE's soft
limit toward the hard one. ``bind_all(loop, factory, host, ports, strict=…,
tls_ports=…, tls_factory=…, ssl_context=…)`` binds them and returns a
:class:`Listeners`: the servers, the ports served (``implicit_tls``: those of them that
speak TLS from the first byte, RFC 8314) and, for every port not served, the reason
with its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import resource
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.display import clean
from relay.ports import parse_port_spec
from relay.reasons import Reason
from relay.store import StoreError

log = logging.getLogger("smtpplus.relay")

# File descriptors kept free beyond the listening sockets: the store, TLS files, logs.
FD_MARGIN = 64
BACKLOG = 511
HANDSHAKE_TIMEOUT = 30.0  # seconds an implicit-TLS client gets to finish its handshake


class ImplicitTlsServer:
    """An implicit-TLS port (RFC 8314): its connections counted against the caps
    before their handshake.

    A server with ``ssl=`` runs the handshake before its protocol sees the connection,
    so the caps would count a client only once it finished one: clients that connect
    and never start TLS would each hold a socket for the whole handshake timeout, past
    every cap. Here each accepted connection is counted first — the session's
    ``admit``; over a cap it is closed at once, unencrypted, with nothing said (a
    client expecting TLS could not read a ``421``) — and only then is the handshake
    run (``loop.connect_accepted_socket``), at most ``timeout`` seconds. A protocol
    without ``admit``/``abandon`` (not a ``relay.smtp.RelaySMTP``) is served uncounted.
    Closed like an ``asyncio.Server`` (``close``, ``wait_closed``)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, factory: Callable[[], Any],
        context: ssl.SSLContext, timeout: float,
    ) -> None:
        self.sockets = [sock]
        self._loop, self._factory, self._context, self._timeout = loop, factory, context, timeout
        self._handshakes: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        self._accepting = loop.create_task(self._accept(sock))

    def close(self) -> None:
        self._accepting.cancel()
        # The sockets close once the accept loop has stopped: under asyncio its reader
        # stays registered until then, and a closed descriptor's number may be reused.
        self._accepting.add_done_callback(lambda _: self._close_sockets())

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    async def wait_closed(self) -> None:
        await asyncio.wait({self._accepting})

    async def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, peer = await self._loop.sock_accept(sock)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as exc:  # EMFILE and the like: as asyncio's servers, wait and go on
                log.warning("implicit-TLS port: accept failed (%s); retrying in 1 s", exc.strerror or exc)
                await asyncio.sleep(1.0)
                continue
            try:
                self._take(conn, peer)
            except Exception:  # one connection's trouble must not end the port's service
                log.exception("implicit-TLS port: a new connection failed")
                conn.close()

    def _take(self, conn: socket.socket, peer: Any) -> None:
        session = self._factory()
        admit = getattr(session, "admit", None)
        if admit is not None and not admit(peer, _local(conn)):
            conn.close()
            session.abandon(Reason.CONNECTION_LIMIT, "connection cap reached (before the TLS handshake)")
            return
        task = self._loop.create_task(self._handshake(conn, session, peer))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)
        # A task cancelled before its first step never runs its own clean-up.
        task.add_done_callback(lambda t: _abandon(conn, session) if t.cancelled() else None)
        if admit is not None:
            session.handshake = task  # a relay that stops cancels it (RelaySMTP.say_goodbye)

    async def _handshake(self, conn: socket.socket, session: Any, peer: Any) -> None:
        try:
            await self._loop.connect_accepted_socket(
                lambda: session, conn, ssl=self._context, ssl_handshake_timeout=self._timeout
            )
        except Exception as exc:  # failed or timed out: the slot is freed
            _abandon(conn, session)
            address = peer[0] if isinstance(peer, tuple) and peer else "?"
            log.info("%s: TLS handshake failed: %s", clean(address), clean(str(exc) or type(exc).__name__, 300))


def _abandon(conn: socket.socket, session: Any) -> None:
    conn.close()
    abandon = getattr(session, "abandon", None)
    if abandon is not None:
        abandon()  # once: a second call finds the slot released


def _local(conn: socket.socket) -> Any:
    with contextlib.suppress(OSError):
        return conn.getsockname()
    return None


class ListenError(StoreError):
    """Listening cannot go ahead (strict ports, no port at all, open-file limit)."""


@dataclass
class Listeners:
    servers: list[asyncio.AbstractServer | ImplicitTlsServer] = field(default_factory=list)
    served: list[int] = field(default_factory=list)  # every served port, implicit TLS included
    not_served: dict[int, str] = field(default_factory=dict)
    implicit_tls: list[int] = field(default_factory=list)  # served ports with TLS from the first byte

    def close(self) -> None:
        for server in self.servers:
            server.close()


def expand_ports(spec: str) -> list[int]:
    """``25,1025-5000`` → ports; ``0`` / ``0*N`` → that many ephemeral ports (as 0s)."""
    ephemeral = 0
    rest: list[str] = []
    for item in spec.split(","):
        text = item.strip()
        if text == "0":
            ephemeral += 1
        elif text.startswith("0*") and text[2:].isdigit():
            ephemeral += int(text[2:])
        else:
            rest.append(item)
    ports = parse_port_spec(",".join(rest)) if rest else []
    return ports + [0] * ephemeral


def listen_plan(ports_spec: str, tls_spec: str) -> tuple[list[int], list[int]]:
    """(STARTTLS ports, implicit-TLS ports) of a config's two specs (``tls_spec`` "" = none).
    A port in both is a ListenError: a port speaks STARTTLS or implicit TLS, not both."""
    ports = expand_ports(ports_spec)
    tls_ports = expand_ports(tls_spec) if tls_spec.strip() else []
    both = sorted(set(ports) & set(tls_ports) - {0})
    if both:
        raise ListenError(
            f"port {both[0]} is in both ports and tls_ports — a port speaks STARTTLS or implicit TLS, "
            "not both: take it out of one of them (--ports / --tls-ports)"
        )
    return ports, tls_ports


def raise_open_file_limit(required: int, wanted: int | None = None) -> int:
    """Raise the soft RLIMIT_NOFILE toward ``wanted`` (at least ``required``), capped
    by the hard limit. Returns the soft limit now in force; raises ListenError when
    even the hard limit is below ``required``."""
    goal = max(required, wanted or 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < goal:
        target = goal if hard == resource.RLIM_INFINITY else min(hard, goal)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < required:
        raise ListenError(
            f"the open-file limit is {soft} (hard limit {hard}) but {required} are needed — "
            "raise it (ulimit -n, or LimitNOFILE= in the service unit) or narrow --ports"
        )
    return soft


def port_reason(port: int, exc: OSError) -> str:
    """Why a port could not be bound, and the fix."""
    code = exc.errno
    if code == errno.EACCES or code == errno.EPERM:
        return "permission denied — run as root or grant CAP_NET_BIND_SERVICE"
    if code == errno.EADDRINUSE:
        return "in use"
    if code == errno.EADDRNOTAVAIL:
        return "address not available — check --host"
    if code in (errno.EMFILE, errno.ENFILE):
        return "too many open files — raise the open-file limit (ulimit -n)"
    return f"{exc.strerror or exc} (errno {code})"


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return infos[0][0]


def _listening_socket(family: socket.AddressFamily, host: str, port: int, reuse_port: bool = False) -> socket.socket:
    # proto=IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted sockets (Nagle would
    # hold small replies back for 40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # several relays serve this port: the kernel spreads the connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def bind_all(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    ports: list[int],
    *,
    strict: bool = False,
    connections: int = 0,
    tls_ports: list[int] | None = None,
    tls_factory: Callable[[], asyncio.BaseProtocol] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    reuse_port: bool = False,
) -> Listeners:
    """Serve ``factory`` on every port of ``ports`` and ``tls_factory`` with TLS from the
    first byte (``ssl_context``) on every port of ``tls_ports``; report each port that
    cannot be bound.

    ``connections`` (the connection cap) is added to the open-file limit wanted."""
    tls_ports = list(tls_ports or [])
    if tls_ports and (tls_factory is None or ssl_context is None):
        raise ValueError("tls_ports need a tls_factory and an ssl_context")
    count = len(ports) + len(tls_ports)
    raise_open_file_limit(count + FD_MARGIN, count + FD_MARGIN + connections)
    family = _family(host)
    listeners = Listeners()
    plan = [(port, False) for port in ports] + [(port, True) for port in tls_ports]
    try:
        for port, implicit in plan:
            try:
                sock = _listening_socket(family, host, port, reuse_port)
            except OSError as exc:
                listeners.not_served[port] = port_reason(port, exc)
                if strict:
                    raise ListenError(f"port {port}: {listeners.not_served[port]} (--strict-ports)") from None
                continue
            if implicit:
                assert tls_factory is not None and ssl_context is not None
                server: Any = ImplicitTlsServer(loop, sock, tls_factory, ssl_context, handshake_timeout)
            else:
                server = await loop.create_server(factory, sock=sock)
            if not server.sockets:
                # Seen under EMFILE: a server object that holds no socket serves nothing.
                server.close()
                sock.close()
                listeners.not_served[port] = "no listening socket (too many open files?)"
                if strict:
                    raise ListenError(f"port {port}: {listeners.not_served[port]} (--strict-ports)")
                continue
            listeners.servers.append(server)
            bound = int(server.sockets[0].getsockname()[1])
            listeners.served.append(bound)
            if implicit:
                listeners.implicit_tls.append(bound)
    except BaseException:
        listeners.close()
        raise
    if not listeners.served:
        listeners.close()
        summary = "; ".join(f"port {p}: {r}" for p, r in list(listeners.not_served.items())[:5])
        raise ListenError(f"no port could be bound ({summary})")
    return listeners
