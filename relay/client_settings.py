"""What a user types into a mail client to send through the relay. Pure: no I/O.

The CLI (`smtpplus lists show`) and the console both gather the facts from the store
(server name, served ports and which of them speak implicit TLS, plain-AUTH setting,
certificate fingerprint) and call :func:`client_settings` to turn them into one record
and a ready-to-paste block. With an implicit-TLS port (RFC 8314: "SSL/TLS" in mail
clients) the block suggests it first ("port 465, SSL/TLS; or 587, STARTTLS").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.ports import DEFAULT_SPEC, DEFAULT_TLS_SPEC, format_port_spec, parse_port_spec

# Ports mail clients try first when 25 is blocked by the ISP, in order of preference.
_PREFERRED_PORTS = (587, 2525)

ENCRYPTION_REQUIRED = "STARTTLS (required for AUTH)"
ENCRYPTION_OPTIONAL = "STARTTLS optional; plain AUTH allowed"
NO_RELAY_YET = f"no relay has run yet — default {DEFAULT_SPEC} (STARTTLS); {DEFAULT_TLS_SPEC} (SSL/TLS)"
NO_FINGERPRINT = "not yet generated — start the relay once"
USERNAME_PLACEHOLDER = "<relay username>"


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Client settings for one relay, as shown under a list."""

    server_name: str
    ports_spec: str  # served STARTTLS ports ("25,587,1025-5000"), or the default ones before any relay ran
    ports_text: str  # the spec(s), or the "no relay has run yet" sentence
    relay_has_run: bool
    not_served: dict[int, str]  # port -> why the last relay could not serve it
    port: int | None  # the STARTTLS port the paste block suggests (None: no STARTTLS port is served)
    implicit_tls: list[int]  # served implicit-TLS ports (SSL/TLS from the first byte), or the default ones
    tls_ports_spec: str  # the same as a spec ("465"; "" for none)
    tls_port: int | None  # the implicit-TLS port the block suggests first (None: none served)
    starttls_required: bool
    encryption: str
    fingerprint: str | None
    fingerprint_text: str
    username: str
    block: str  # ready to paste into common mail clients
    # PostgreSQL: every live relay of the store, one line each (relay_line); () on SQLite.
    relays: tuple[str, ...] = ()


def relay_line(member: Any) -> str:
    """One live relay (relay.store.relays.LiveRelay): who, where, which ports, which
    certificate — as status, lists show and the console show it."""
    beat = f", heartbeat {member.beat_age:.1f}s ago" if member.beat_age is not None else ""
    ports = format_port_spec(member.ports) if member.ports else "no ports yet"
    return (f"pid {member.pid} on {member.host} ({member.listen_host or '?'}), ports {ports}, "
            f"TLS {member.tls_fingerprint or '-'}{beat}")


def suggested_port(ports: list[int]) -> int | None:
    """587 or 2525 when served (rarely blocked by ISPs), else the first port above
    1024, else the first port."""
    for port in _PREFERRED_PORTS:  # 587 first: RFC 6409's submission port
        if port in ports:
            return port
    for port in sorted(ports):
        if port > 1024:
            return port
    return min(ports) if ports else None


def client_settings(
    *,
    server_name: str,
    served: list[int],
    not_served: dict[int, str] | None = None,
    allow_plain_auth: bool = False,
    fingerprint: str | None = None,
    username: str | None = None,
    implicit_tls: list[int] | None = None,
    relays: tuple[str, ...] = (),
) -> ClientSettings:
    """Assemble the client settings from what the store says about the relay.

    ``served`` and ``not_served`` are the ports the last relay published (``served``
    includes the ``implicit_tls`` ones); both empty means no relay has run yet, so the
    default ports are shown as such.
    """
    not_served = dict(not_served or {})
    relay_has_run = bool(served or not_served)
    if relay_has_run:
        tls_ports = sorted(set(implicit_tls or []) & set(served))
        ports = sorted(set(served) - set(tls_ports))
        if not served:
            ports_text = "none — see `smtpplus status` for why"
        elif tls_ports:
            ports_text = _both_kinds(ports, tls_ports)
        else:
            ports_text = format_port_spec(ports)
    else:
        ports = parse_port_spec(DEFAULT_SPEC)
        tls_ports = parse_port_spec(DEFAULT_TLS_SPEC)
        ports_text = NO_RELAY_YET
    port = suggested_port(ports)
    tls_port = (465 if 465 in tls_ports else tls_ports[0]) if tls_ports else None
    encryption = ENCRYPTION_OPTIONAL if allow_plain_auth else ENCRYPTION_REQUIRED
    if tls_ports:
        encryption += f"; SSL/TLS on {format_port_spec(tls_ports)}"
    shown_username = username or USERNAME_PLACEHOLDER
    return ClientSettings(
        server_name=server_name,
        ports_spec=format_port_spec(ports),
        ports_text=ports_text,
        relay_has_run=relay_has_run,
        not_served=not_served,
        port=port,
        implicit_tls=tls_ports,
        tls_ports_spec=format_port_spec(tls_ports),
        tls_port=tls_port,
        starttls_required=not allow_plain_auth,
        encryption=encryption,
        fingerprint=fingerprint or None,
        fingerprint_text=fingerprint or NO_FINGERPRINT,
        username=shown_username,
        block=paste_block(
            server_name=server_name,
            port=port,
            tls_port=tls_port,
            username=shown_username,
            fingerprint=fingerprint or None,
            ports_text=ports_text,
        ),
        relays=relays,
    )


def _both_kinds(ports: list[int], tls_ports: list[int]) -> str:
    starttls = f"{format_port_spec(ports)} (STARTTLS); " if ports else ""
    return f"{starttls}{format_port_spec(tls_ports)} (SSL/TLS)"


def paste_block(
    *,
    server_name: str,
    port: int | None,
    username: str,
    fingerprint: str | None,
    ports_text: str,
    tls_port: int | None = None,
) -> str:
    """Settings for Thunderbird, Outlook, Apple Mail and applications (`.env`).

    An implicit-TLS port (``tls_port``) comes first, with the STARTTLS ``port`` as the
    alternative; without one, STARTTLS is always recommended, even when plain AUTH is
    allowed.
    """
    if tls_port is not None:
        return _implicit_tls_block(server_name, tls_port, port, username, fingerprint, ports_text)
    port_text = str(port) if port is not None else "<no port served yet>"
    lines = [
        f"# SMTP+ outgoing server — ports: {ports_text} (all alike)",
        "",
        "Thunderbird (Account Settings › Outgoing Server (SMTP) › Add):",
        f"  Server Name: {server_name}",
        f"  Port: {port_text}",
        "  Connection security: STARTTLS",
        "  Authentication method: Normal password",
        f"  User Name: {username}",
        "",
        "Outlook (Account Settings › Server Settings › Outgoing mail):",
        f"  Server: {server_name}",
        f"  Port: {port_text}",
        "  Encryption method: STARTTLS",
        "  My outgoing (SMTP) server requires authentication: on",
        f"  User name: {username}",
        "",
        "Apple Mail (Settings › Accounts › Server Settings › Outgoing Mail Account):",
        f"  Host Name: {server_name}",
        f"  Port: {port_text}  (turn off \"Automatically manage connection settings\")",
        "  Use TLS/SSL: on (STARTTLS)",
        "  Authentication: Password",
        f"  User Name: {username}",
        "",
        "Application (.env):",
        f"SMTP_HOST={server_name}",
        f"SMTP_PORT={port_text}",
        "SMTP_STARTTLS=true",
        f"SMTP_USERNAME={username}",
        "SMTP_PASSWORD=<the password shown once when the user was added or reset>",
    ]
    return "\n".join(lines + _fingerprint_lines(fingerprint))


def _implicit_tls_block(
    server_name: str, tls_port: int, port: int | None, username: str, fingerprint: str | None, ports_text: str
) -> str:
    """RFC 8314 §3.3: submission over implicit TLS first, STARTTLS as the alternative."""
    alternative = f"; or {port}, STARTTLS" if port is not None else ""
    otherwise = f"  (or Port {port} with STARTTLS)" if port is not None else ""
    lines = [
        f"# SMTP+ outgoing server — port {tls_port}, SSL/TLS{alternative}",
        f"# ports: {ports_text}",
        "",
        "Thunderbird (Account Settings › Outgoing Server (SMTP) › Add):",
        f"  Server Name: {server_name}",
        f"  Port: {tls_port}",
        f"  Connection security: SSL/TLS{otherwise}",
        "  Authentication method: Normal password",
        f"  User Name: {username}",
        "",
        "Outlook (Account Settings › Server Settings › Outgoing mail):",
        f"  Server: {server_name}",
        f"  Port: {tls_port}",
        f"  Encryption method: SSL/TLS{otherwise}",
        "  My outgoing (SMTP) server requires authentication: on",
        f"  User name: {username}",
        "",
        "Apple Mail (Settings › Accounts › Server Settings › Outgoing Mail Account):",
        f"  Host Name: {server_name}",
        f"  Port: {tls_port}  (turn off \"Automatically manage connection settings\")",
        "  Use TLS/SSL: on",
        "  Authentication: Password",
        f"  User Name: {username}",
        "",
        "Application (.env):",
        f"SMTP_HOST={server_name}",
        f"SMTP_PORT={tls_port}",
        "# TLS from the first byte (implicit TLS):",
        "SMTP_SSL=true",
        "SMTP_STARTTLS=false",
        *([f"# or SMTP_PORT={port} with SMTP_SSL=false and SMTP_STARTTLS=true"] if port is not None else []),
        f"SMTP_USERNAME={username}",
        "SMTP_PASSWORD=<the password shown once when the user was added or reset>",
    ]
    return "\n".join(lines + _fingerprint_lines(fingerprint))


def _fingerprint_lines(fingerprint: str | None) -> list[str]:
    if not fingerprint:
        return []
    return [
        "",
        "# The certificate may be self-signed: accept it only if its fingerprint is",
        f"# {fingerprint}",
    ]
