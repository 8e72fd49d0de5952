"""The DNS half of domain verification: look up a domain's TXT records through one
configured resolver and say plainly what was found.

The resolver is an address and port (``HOST[:PORT]``, IPv6 as ``[::1]:53``), queried
over UDP with a TCP retry when the answer is truncated, or over TCP only. Which resolver
is used: the caller's choice, else the one relay.nameserver picks (the store setting
``dns.resolver``, else ``$SMTPPLUS_DNS_RESOLVER``, else the system's first nameserver).
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

from relay.nameserver import (
    RESOLVER_ENV,
    Resolver,
    ResolverError,
    configured_resolver,
    no_resolver_error,
    parse_resolver,
    system_resolver,
)
from relay.verification import TXT_PREFIX, txt_record, txt_token

DEFAULT_TIMEOUT = 5.0

# The resolver's address and its choice live in relay.nameserver; these names stay
# importable from here for the verification callers.
__all__ = [
    "RESOLVER_ENV", "DnsOutcome", "DnsResult", "Resolver", "ResolverError",
    "check_dns", "check_dns_async", "choose_resolver", "parse_resolver", "system_resolver",
]


class DnsOutcome(enum.StrEnum):
    VERIFIED = "verified"
    NXDOMAIN = "nxdomain"
    NO_TXT = "no_txt"
    WRONG_TOKEN = "wrong_token"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class DnsResult:
    """The outcome of one lookup. ``found`` holds the smtpplus-verification values seen
    (so a wrong token can be shown next to the expected one)."""

    outcome: DnsOutcome
    domain: str
    resolver: str
    expected: str
    message: str
    found: tuple[str, ...] = field(default=())
    transport: str = "udp"

    @property
    def verified(self) -> bool:
        return self.outcome is DnsOutcome.VERIFIED


def choose_resolver(explicit: str | None = None, setting: str | None = None) -> Resolver:
    """The resolver to use: explicit, else the store setting, else the environment,
    else the system's (the same choice MX routing makes: relay.nameserver). Raises
    ResolverError when there is none."""
    if explicit:
        return parse_resolver(explicit)
    found = configured_resolver(setting, os.environ) or system_resolver()
    if found is None:
        raise no_resolver_error("pass --resolver HOST[:PORT], ")
    return found


def check_dns(
    domain: str,
    token: str,
    resolver: Resolver | str,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    tcp: bool = False,
) -> DnsResult:
    """Look up ``domain``'s TXT records and compare them with ``smtpplus-verification=<token>``.

    Blocking (up to about ``timeout`` seconds): run it in a thread from async code
    (see :func:`check_dns_async`). Never raises for DNS trouble; the outcome says it.
    """
    server = parse_resolver(resolver) if isinstance(resolver, str) else resolver
    expected = txt_record(token)
    transport = "tcp" if tcp else "udp"

    def result(outcome: DnsOutcome, message: str, found: tuple[str, ...] = ()) -> DnsResult:
        return DnsResult(outcome, domain, str(server), expected, message, found, transport)

    query = dns.message.make_query(dns.name.from_text(domain), dns.rdatatype.TXT)
    deadline = time.monotonic() + timeout
    try:
        if tcp:
            response = dns.query.tcp(query, server.host, timeout=timeout, port=server.port)
        else:
            response = dns.query.udp(query, server.host, timeout=timeout, port=server.port, ignore_unexpected=True)
            if response.flags & dns.flags.TC:
                # Truncated: ask again over TCP within what is left of the time budget.
                transport = "udp+tcp"
                remaining = max(0.1, deadline - time.monotonic())
                response = dns.query.tcp(query, server.host, timeout=remaining, port=server.port)
    except dns.exception.Timeout:
        return result(
            DnsOutcome.TIMEOUT, f"{domain}: resolver {server} did not answer within {timeout:g} s — check the resolver address or raise --timeout"
        )
    except (OSError, EOFError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        return result(DnsOutcome.ERROR, f"{domain}: could not query resolver {server} over {transport}: {reason}")
    except dns.exception.DNSException as exc:
        return result(DnsOutcome.ERROR, f"{domain}: resolver {server} sent an unusable answer: {exc}")

    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return result(DnsOutcome.NXDOMAIN, f"{domain}: no such domain (NXDOMAIN) at resolver {server}")
    if rcode != dns.rcode.NOERROR:
        return result(
            DnsOutcome.ERROR, f"{domain}: resolver {server} answered {dns.rcode.to_text(rcode)} — try again or use another resolver"
        )

    ours = tuple(value for value in _txt_values(response) if txt_token(value) is not None)
    if not ours:
        return result(
            DnsOutcome.NO_TXT, f"{domain}: no {TXT_PREFIX}… TXT record found — publish {expected!r} on {domain}"
        )
    if any(txt_token(value) == token for value in ours):
        return result(DnsOutcome.VERIFIED, f"{domain}: TXT record {expected!r} found via {server}", ours)
    return result(
        DnsOutcome.WRONG_TOKEN,
        f"{domain}: TXT record has the wrong token ({ours[0]!r}) — publish {expected!r} instead",
        ours,
    )


async def check_dns_async(
    domain: str,
    token: str,
    resolver: Resolver | str,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 — the lookup's own limit, kept in the thread
    *,
    tcp: bool = False,
) -> DnsResult:
    """:func:`check_dns` in a worker thread, for the console and other async callers."""
    return await asyncio.to_thread(check_dns, domain, token, resolver, timeout, tcp=tcp)


def _txt_values(response: dns.message.Message) -> list[str]:
    # A TXT record may be split into several character-strings (255 bytes each);
    # its value is their concatenation.
    values: list[str] = []
    for rrset in response.answer:
        if rrset.rdtype != dns.rdatatype.TXT:
            continue
        for rdata in rrset:
            values.append(b"".join(rdata.strings).decode("utf-8", errors="replace"))
    return values
