"""The client settings a list's users type into a mail client, from what the relay published."""

from __future__ import annotations

import socket

from relay.client_settings import ClientSettings, client_settings
from relay.store import Connection
from relay.store.relay_info import implicit_tls_ports, served_ports
from relay.store.settings import Keys, get_settings


def gather_client_settings(db: Connection, username: str | None = None) -> ClientSettings:
    """Server name, served ports, encryption, certificate and a paste block; names
    ``username`` in the block when given (else a placeholder)."""
    values = get_settings(db, [Keys.SERVER_NAME, Keys.ALLOW_PLAIN_AUTH, Keys.TLS_FINGERPRINT])
    served, not_served = served_ports(db)
    return client_settings(
        # No relay has published a name yet: the name it would publish by default. Never
        # getfqdn here: the console reads this on its store thread, and that may ask DNS.
        server_name=values.get(Keys.SERVER_NAME) or socket.gethostname(),
        served=served,
        not_served=not_served,
        implicit_tls=implicit_tls_ports(db),
        allow_plain_auth=bool(values.get(Keys.ALLOW_PLAIN_AUTH, False)),
        fingerprint=values.get(Keys.TLS_FINGERPRINT),
        username=username,
        relays=_relay_lines(db),
    )


def _relay_lines(db: Connection) -> tuple[str, ...]:
    """PostgreSQL: every live relay, one line each (many may serve the store)."""
    if getattr(db, "dialect", "sqlite") != "postgresql":
        return ()
    from relay.client_settings import relay_line
    from relay.store.relays import live_relays

    return tuple(relay_line(member) for member in live_relays(db))
