"""Key/value settings in the store: runtime controls (paused, rate, next hop, …) and
relay-published facts (TLS fingerprint, served ports). Values are JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from relay.store.connection import Connection, Row, Statement


def get_setting(db: Connection, key: str, default: Any = None) -> Any:
    row = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return default if row is None else json.loads(row[0])


def get_settings(db: Connection, keys: list[str] | None = None) -> dict[str, Any]:
    if keys is None:
        rows = db.execute("SELECT key, value FROM settings").fetchall()
    else:
        rows = db.execute(*settings_query(keys)).fetchall()
    return settings_from(rows)


def settings_query(keys: Sequence[str]) -> Statement:
    """The read of ``keys`` as a statement (for a batch); :func:`settings_from` reads its rows."""
    return f"SELECT key, value FROM settings WHERE key IN ({','.join('?' * len(keys))})", list(keys)


def settings_from(rows: Iterable[Row]) -> dict[str, Any]:
    return {row[0]: json.loads(row[1]) for row in rows}


def set_setting(db: Connection, key: str, value: Any) -> None:
    db.execute(
        "INSERT INTO settings(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, json.dumps(value)),
    )


def seed_setting(db: Connection, key: str, value: Any) -> bool:
    """Set ``key`` only when it has no value yet (flags and TOML seed runtime controls).
    Returns True when it was set."""
    cur = db.execute("INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT DO NOTHING", (key, json.dumps(value)))
    return cur.rowcount == 1


def delete_setting(db: Connection, key: str) -> None:
    db.execute("DELETE FROM settings WHERE key = ?", (key,))


class Keys:
    """Setting names shared by the relay, the console and the CLI."""

    # Runtime controls: the relay follows these live (flags/TOML only seed them).
    PAUSED = "delivery.paused"  # bool
    RATE = "delivery.rate"  # messages per second, float; 0 = unlimited
    PARALLEL = "delivery.parallel"  # max next-hop connections, int
    NEXT_HOP = "delivery.next_hop"  # "host:port" or None
    NEXT_HOP_TLS = "delivery.next_hop_tls"  # "required" | "opportunistic" | "off"
    NEXT_HOP_USER = "delivery.next_hop_user"  # optional AUTH at the next hop
    NEXT_HOP_PASSWORD = "delivery.next_hop_password"
    STARVATION_SHARE = "delivery.starvation_share"  # 0 = strict priority (default)
    NEXT_HOP_CAFILE = "delivery.next_hop_cafile"  # PEM bundle trusted for STARTTLS "required"
    STATUS = "delivery.status"  # published by the engine: {"state", "detail", "at"}
    # Published by the live relay for consoles, `status` and `lists show`.
    SERVER_NAME = "relay.server_name"
    TLS_FINGERPRINT = "relay.tls_fingerprint"  # "SHA256:AB:CD:…"
    TLS_CERT_PEM = "relay.tls_cert_pem"
    ALLOW_PLAIN_AUTH = "relay.allow_plain_auth"  # bool
    # This host's dotted name when the server name is its bare name, looked up once at
    # start off the store thread (getfqdn may ask DNS); None otherwise.
    HOST_FQDN = "relay.host_fqdn"
    LEASE = "relay.lease"  # {"owner", "pid", "host", "heartbeat_at", "started_at", "listen_host"}
    # Sender verification.
    SYSTEM_SENDER = "verification.system_sender"  # envelope and From: of code mails
    # "HOST[:PORT]" of the DNS resolver for every lookup (MX routing, check-dns,
    # domains check); None = $SMTPPLUS_DNS_RESOLVER, else the system's (relay.nameserver).
    DNS_RESOLVER = "dns.resolver"
    # "IP[,IP]": the relay's address(es) as receivers see them; `domains check` looks for
    # them in SPF records (a report only).
    PUBLIC_ADDRESS = "delivery.public_address"
