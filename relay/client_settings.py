"""What a user types into a mail client to send through the relay. Pure: no I/O.

The CLI (`smtpplus lists show`) and the console both gather the facts from the store
(server name, served ports, plain-AUTH setting, certificate fingerprint) and call
:func:`client_settings` to turn them into one record and a ready-to-paste block.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.ports import DEFAULT_SPEC, format_port_spec, parse_port_spec

# Ports mail clients try first when 25 is blocked by the ISP, in order of preference.
_PREFERRED_PORTS = (587, 2525)

ENCRYPTION_REQUIRED = "STARTTLS (required for AUTH)"
ENCRYPTION_OPTIONAL = "STARTTLS optional; plain AUTH allowed"
NO_RELAY_YET = f"no relay has run yet — default {DEFAULT_SPEC}"
NO_FINGERPRINT = "not yet generated — start the relay once"
USERNAME_PLACEHOLDER = "<relay username>"


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Client settings for one relay, as shown under a list."""

    server_name: str
    ports_spec: str  # served ports ("25,1025-5000"), or the default ones before any relay ran
    ports_text: str  # the spec, or the "no relay has run yet" sentence
    relay_has_run: bool
    not_served: dict[int, str]  # port -> why the last relay could not serve it
    port: int | None  # the port the paste block suggests (None: nothing is served)
    starttls_required: bool
    encryption: str
    fingerprint: str | None
    fingerprint_text: str
    username: str
    block: str  # ready to paste into common mail clients


def suggested_port(ports: list[int]) -> int | None:
    """587 or 2525 when served (rarely blocked by ISPs), else the first port above
    1024, else the first port."""
    for port in _PREFERRED_PORTS:
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
) -> ClientSettings:
    """Assemble the client settings from what the store says about the relay.

    ``served`` and ``not_served`` are the ports the last relay published; both empty
    means no relay has run yet, so the default ports are shown as such.
    """
    not_served = dict(not_served or {})
    relay_has_run = bool(served or not_served)
    if relay_has_run:
        ports = sorted(set(served))
        ports_text = format_port_spec(ports) if ports else "none — see `smtpplus status` for why"
    else:
        ports = parse_port_spec(DEFAULT_SPEC)
        ports_text = NO_RELAY_YET
    port = suggested_port(ports)
    shown_username = username or USERNAME_PLACEHOLDER
    return ClientSettings(
        server_name=server_name,
        ports_spec=format_port_spec(ports),
        ports_text=ports_text,
        relay_has_run=relay_has_run,
        not_served=not_served,
        port=port,
        starttls_required=not allow_plain_auth,
        encryption=ENCRYPTION_OPTIONAL if allow_plain_auth else ENCRYPTION_REQUIRED,
        fingerprint=fingerprint or None,
        fingerprint_text=fingerprint or NO_FINGERPRINT,
        username=shown_username,
        block=paste_block(
            server_name=server_name,
            port=port,
            username=shown_username,
            fingerprint=fingerprint or None,
            ports_text=ports_text,
        ),
    )


def paste_block(
    *,
    server_name: str,
    port: int | None,
    username: str,
    fingerprint: str | None,
    ports_text: str,
) -> str:
    """Settings for Thunderbird, Outlook, Apple Mail and applications (`.env`).

    STARTTLS is always recommended, even when plain AUTH is allowed.
    """
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
    if fingerprint:
        lines += [
            "",
            "# The certificate may be self-signed: accept it only if its fingerprint is",
            f"# {fingerprint}",
        ]
    return "\n".join(lines)
