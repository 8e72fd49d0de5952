"""Which DNS resolver smtpplus asks: one choice for every lookup it makes (MX routing,
sender-domain verification, ``domains check``).

The resolver is an address and port (``HOST[:PORT]``, IPv6 as ``[::1]:53``). Which one:
the store setting ``dns.resolver``, else ``$SMTPPLUS_DNS_RESOLVER``, else the system's
(``/etc/resolv.conf``). A bad value is a one-line error naming where it came from.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from relay.policy import PolicyError

DEFAULT_PORT = 53
RESOLVER_ENV = "SMTPPLUS_DNS_RESOLVER"
RESOLVER_SETTING = "dns.resolver"  # the store key (relay.store.settings.Keys.DNS_RESOLVER)
SET_WITH = "smtpplus senders settings --resolver HOST[:PORT]"


class ResolverError(PolicyError):
    """A resolver address that cannot be used; the message says how to write one.
    (A PolicyError, hence a ValueError, so CLI and console report it as one line.)"""


@dataclass(frozen=True, slots=True)
class Resolver:
    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_resolver(text: str) -> Resolver:
    """``HOST[:PORT]`` → Resolver. HOST must be an IP address: looking a resolver's name
    up would need a resolver, and would hide which server really answered."""
    raw = text.strip()
    if not raw:
        raise ResolverError("resolver is empty — give it as HOST[:PORT], e.g. 127.0.0.1:53")
    host, port_text = raw, ""
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ResolverError(f"resolver {text!r}: write an IPv6 resolver as [ADDRESS]:PORT")
        port_text = rest[1:]
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ResolverError(f"resolver {text!r}: HOST must be an IP address (e.g. 127.0.0.1:53 or [::1]:53)") from None
    if not port_text:
        return Resolver(host)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ResolverError(f"resolver {text!r}: PORT must be a number from 1 to 65535")
    return Resolver(host, int(port_text))


def configured_resolver(setting: str | None, env: Mapping[str, str]) -> Resolver | None:
    """The store setting, else ``$SMTPPLUS_DNS_RESOLVER``; None means "the system's".
    A bad value raises ResolverError naming the setting or the variable and the fix."""
    if setting:
        try:
            return parse_resolver(setting)
        except ResolverError as exc:
            raise ResolverError(f"store setting {RESOLVER_SETTING}: {exc} — fix it with `{SET_WITH}`") from None
    value = env.get(RESOLVER_ENV, "")
    if value.strip():
        try:
            return parse_resolver(value)
        except ResolverError as exc:
            raise ResolverError(f"${RESOLVER_ENV}: {exc}") from None
    return None


def system_resolver() -> Resolver | None:
    """The first usable nameserver in the system configuration (/etc/resolv.conf), if any."""
    import dns.resolver

    try:
        servers = dns.resolver.Resolver(configure=True).nameservers
    except (dns.resolver.NoResolverConfiguration, OSError):
        return None
    for server in servers:
        try:
            return parse_resolver(str(server))
        except ResolverError:
            continue
    return None


def no_resolver_error(extra: str = "") -> ResolverError:
    """The one-line error when nothing names a resolver and the system has none."""
    return ResolverError(
        f"no DNS resolver configured — {extra}set ${RESOLVER_ENV} or `{SET_WITH}`"
    )
