"""Where mail for a domain goes: its MX hosts and their addresses (RFC 5321 §5.1).

    resolver = resolver_for(get_setting(db, Keys.DNS_RESOLVER), os.environ)
    route = await resolver.route("example.com")      # MxRoute, or raises RouteFailure
    for host in route.hosts:                         # lowest preference first
        for address in host.addresses: ...           # A (IPv4) first, then AAAA

Rules, in the order they apply:

- the domain is looked up in its A-label form (``bücher.example`` → ``xn--bcher-kva.example``);
  an address literal or a name DNS cannot carry fails at once (permanent, ``5.1.2``);
- MX records: lowest preference first, equal preferences in random order (the ``rng``
  injected, so tests can seed it); a host listed twice keeps its lowest preference; at
  most :data:`MAX_HOSTS` hosts are used;
- a null MX (RFC 7505: the only target is ``.``) means the domain takes no mail:
  permanent, ``5.1.10``;
- no MX records (NODATA): the domain itself is the one host, preference 0 (the "implicit
  MX"), with its own A/AAAA; none of those either: permanent, ``5.1.2``;
- the domain does not exist (NXDOMAIN): permanent, ``5.1.2``;
- every MX host has no address for sure (NXDOMAIN/NODATA): permanent, ``5.4.4`` (as
  Postfix); hosts without an address are left out while another has one;
- a timeout, SERVFAIL, REFUSED or any other DNS trouble: temporary, ``4.4.3`` — the
  message is deferred, never bounced.

Answers are cached by TTL: a route for the lowest TTL of the records it used (the MX set
and the address sets that gave addresses), a permanent failure for the negative TTL the
zone's SOA gives (RFC 2308; dnspython's 300 s without one), a temporary failure for
:data:`TEMPORARY_TTL` — so a dead name server is not asked again for every queued
message. TTLs are capped at :data:`MAX_TTL`. Concurrent lookups of one domain share one.
"""

from __future__ import annotations

import asyncio
import enum
import random
import re
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import idna

from relay.display import clean
from relay.nameserver import configured_resolver, no_resolver_error
from relay.reasons import Reason

DEFAULT_TIMEOUT = 5.0
MAX_HOSTS = 10  # MX hosts whose addresses are looked up (Postfix tries 5 addresses)
MAX_TTL = 86400  # one day, whatever a zone says
TEMPORARY_TTL = 30  # a timeout or SERVFAIL is asked again after this long
CACHE_ENTRIES = 10_000

Clock = Callable[[], float]
_LDH = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")  # RFC 5321 §4.1.2 sub-domain


# ---------------------------------------------------------------------------
# What a route is


@dataclass(frozen=True, slots=True)
class MxHost:
    name: str  # A-label form, lower case, no final dot
    preference: int
    addresses: tuple[str, ...]  # IPv4 first, then IPv6, in the DNS server's order


@dataclass(frozen=True, slots=True)
class MxRoute:
    domain: str  # the name looked up: A-label form, lower case, no final dot
    hosts: tuple[MxHost, ...]  # in the order to try them; each has at least one address
    implicit: bool = False  # no MX: the domain's own A/AAAA (RFC 5321 §5.1)


class RouteFailure(Exception):
    """No route to ``domain``. ``permanent``: fail the recipients now (a bounce follows);
    otherwise defer them. ``enhanced`` is the RFC 3463 code, ``reason`` the event's."""

    def __init__(self, domain: str, message: str, *, permanent: bool, enhanced: str, reason: Reason) -> None:
        super().__init__(message)
        self.domain = domain
        self.message = message
        self.permanent = permanent
        self.enhanced = enhanced
        self.reason = reason

    def again(self) -> RouteFailure:
        """A fresh copy to raise (a cached exception raised twice would grow its traceback)."""
        return RouteFailure(
            self.domain, self.message, permanent=self.permanent, enhanced=self.enhanced, reason=self.reason
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RouteFailure):
            return NotImplemented
        return (self.domain, self.message, self.permanent, self.enhanced, self.reason) == (
            other.domain, other.message, other.permanent, other.enhanced, other.reason,
        )

    def __hash__(self) -> int:
        return hash((self.domain, self.message, self.permanent, self.enhanced))


# ---------------------------------------------------------------------------
# Pure parts: names, ordering, failure classification, the TTL cache


class Trouble(enum.StrEnum):
    """How one DNS question went wrong (a NOERROR answer with records is no trouble)."""

    NXDOMAIN = "nxdomain"  # the name does not exist
    NODATA = "nodata"  # the name exists, without records of this type
    TIMEOUT = "timeout"
    SERVFAIL = "servfail"  # also REFUSED and any other failing rcode, or an unusable answer
    BAD_NAME = "bad-name"  # the name cannot be asked (address literal, bad IDN, too long)
    NULL_MX = "null-mx"  # RFC 7505
    NO_HOST_ADDRESS = "no-host-address"  # every MX host lacks an address, for sure


def lookup_name(domain: str) -> str:
    """The name to ask DNS for: A-label form, lower case, no final dot. Raises
    RouteFailure (permanent, 5.1.2) for what cannot be a DNS name."""
    text = domain.strip()
    text = text[:-1] if text.endswith(".") else text
    if text.startswith("[") or not text:
        raise failure_for(domain, Trouble.BAD_NAME, "an address literal or empty domain is not routed by DNS")
    if not text.isascii():
        try:
            text = idna.encode(text, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise failure_for(domain, Trouble.BAD_NAME, f"not a valid internationalized domain name ({exc})") from None
    try:
        dns.name.from_text(text)  # label and name lengths
    except dns.exception.DNSException as exc:
        raise failure_for(domain, Trouble.BAD_NAME, str(exc).rstrip(".")) from None
    text = text.lower()
    if not all(_LDH.fullmatch(label) for label in text.split(".")):
        raise failure_for(domain, Trouble.BAD_NAME, "a mail domain has letters, digits and hyphens only")
    return text


def is_null_mx(records: Iterable[tuple[int, str]]) -> bool:
    """RFC 7505: MX records whose only target is the root (``0 .``)."""
    targets = [name for _pref, name in records]
    return bool(targets) and all(name in ("", ".") for name in targets)


def order_by_preference(records: Iterable[tuple[int, str]], rng: random.Random) -> list[tuple[int, str]]:
    """Lowest preference first, equal preferences shuffled (RFC 5321 §5.1). A host
    listed twice keeps its lowest preference; targets of ``.`` (null MX) are dropped.
    Names are sorted before each shuffle, so a seeded ``rng`` gives one result whatever
    order the DNS answer had."""
    best: dict[str, int] = {}
    for preference, name in records:
        if name in ("", "."):
            continue
        if name not in best or preference < best[name]:
            best[name] = preference
    groups: dict[int, list[str]] = {}
    for name, preference in best.items():
        groups.setdefault(preference, []).append(name)
    ordered: list[tuple[int, str]] = []
    for preference in sorted(groups):
        names = sorted(groups[preference])
        rng.shuffle(names)
        ordered.extend((preference, name) for name in names)
    return ordered


def failure_for(domain: str, trouble: Trouble, detail: str = "") -> RouteFailure:
    """The one classification of DNS trouble: permanent or temporary, its enhanced
    status code and reason. ``detail`` says what the resolver said. The domain may come
    from a client, so it is escaped for logs and screens here."""
    domain = clean(domain, 300)
    suffix = f": {clean(detail, 300)}" if detail else ""
    if trouble is Trouble.NULL_MX:
        return RouteFailure(
            domain, f"{domain} accepts no mail (null MX, RFC 7505)",
            permanent=True, enhanced="5.1.10", reason=Reason.FAILED_NULL_MX,
        )
    if trouble is Trouble.NXDOMAIN:
        return RouteFailure(
            domain, f"domain {domain} does not exist (NXDOMAIN){suffix}",
            permanent=True, enhanced="5.1.2", reason=Reason.FAILED_NO_DOMAIN,
        )
    if trouble is Trouble.BAD_NAME:
        return RouteFailure(
            domain, f"'{domain}' is not a domain DNS can look up{suffix}",
            permanent=True, enhanced="5.1.2", reason=Reason.FAILED_NO_DOMAIN,
        )
    if trouble is Trouble.NODATA:
        return RouteFailure(
            domain, f"{domain} has no MX and no A/AAAA record: no host takes its mail{suffix}",
            permanent=True, enhanced="5.1.2", reason=Reason.FAILED_NO_MAIL_HOST,
        )
    if trouble is Trouble.NO_HOST_ADDRESS:
        return RouteFailure(
            domain, f"no MX host of {domain} has an address{suffix}",
            permanent=True, enhanced="5.4.4", reason=Reason.FAILED_NO_MAIL_HOST,
        )
    what = "timed out" if trouble is Trouble.TIMEOUT else "failed"
    return RouteFailure(
        domain, f"DNS lookup for {domain} {what}{suffix}; will retry",
        permanent=False, enhanced="4.4.3", reason=Reason.DEFERRED_DNS,
    )


def route_ttl(ttls: Iterable[int]) -> int:
    """The lowest TTL, capped at MAX_TTL (and never negative)."""
    return max(0, min([MAX_TTL, *ttls]))


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Entries that expire ``ttl`` seconds after they were put, by an injected clock.
    At most ``max_entries``: when full, expired entries go first, then the oldest."""

    def __init__(self, clock: Clock = time.monotonic, max_entries: int = CACHE_ENTRIES) -> None:
        self.clock = clock
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is not None and self.clock() < entry[0]:
            self.hits += 1
            return entry[1]
        if entry is not None:
            del self._entries[key]
        self.misses += 1
        return None

    def put(self, key: K, value: V, ttl: float) -> None:
        self._entries.pop(key, None)
        if ttl <= 0:
            return  # a TTL of 0 means "do not cache"
        now = self.clock()
        if len(self._entries) >= self.max_entries:
            for stale in [k for k, (expires, _v) in self._entries.items() if expires <= now]:
                del self._entries[stale]
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest put
        self._entries[key] = (now + ttl, value)

    def __len__(self) -> int:
        return len(self._entries)


# ---------------------------------------------------------------------------
# Asking DNS


@dataclass(frozen=True, slots=True)
class _Answer:
    """One question's outcome: records (as text) and their TTL, or trouble."""

    records: tuple[str, ...] = ()
    ttl: int = 0  # the records' TTL, or the negative-caching TTL for NXDOMAIN/NODATA
    trouble: Trouble | None = None
    detail: str = ""
    rdata: tuple[object, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int  # routes answered without a new lookup (from the cache or a lookup under way)
    misses: int  # lookups started
    queries: int  # DNS questions asked (MX, A, AAAA)
    entries: int


class MxResolver:
    """MX routes through one resolver (``nameserver`` as (host, port); None: the
    system's), cached by TTL. ``timeout`` bounds each DNS question (retries included)."""

    def __init__(
        self,
        nameserver: tuple[str, int] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if nameserver is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except (dns.resolver.NoResolverConfiguration, OSError):
                raise no_resolver_error() from None
        else:
            resolver = dns.asyncresolver.Resolver(configure=False)
            host, port = nameserver
            resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)]
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, 2.0)  # one try; dnspython retries within the lifetime
        resolver.cache = None  # ours below caches whole routes
        self._resolver = resolver
        self.nameserver = nameserver
        self.rng = rng if rng is not None else random.Random()
        self.cache: TtlCache[str, MxRoute | RouteFailure] = TtlCache(clock)
        self.queries = 0
        self._pending: dict[str, asyncio.Task[MxRoute | RouteFailure]] = {}

    @property
    def stats(self) -> CacheStats:
        return CacheStats(self.cache.hits, self.cache.misses, self.queries, len(self.cache))

    async def route(self, domain: str) -> MxRoute:
        """Where mail for ``domain`` goes. Raises RouteFailure (see the module docstring)."""
        name = lookup_name(domain)
        cached = self.cache.get(name)
        if cached is None:
            task = self._pending.get(name)
            if task is None:
                task = asyncio.ensure_future(self._lookup(name))
                self._pending[name] = task
                task.add_done_callback(lambda _t: self._pending.pop(name, None))
            else:
                # Another caller is looking it up: share its answer (not a new lookup).
                self.cache.misses -= 1
                self.cache.hits += 1
            cached = await asyncio.shield(task)
        if isinstance(cached, RouteFailure):
            raise cached.again()
        return cached

    async def _lookup(self, name: str) -> MxRoute | RouteFailure:
        result, ttl = await self._resolve(name)
        self.cache.put(name, result, ttl)
        return result

    async def _resolve(self, name: str) -> tuple[MxRoute | RouteFailure, int]:
        mx = await self._ask(name, dns.rdatatype.MX)
        if mx.trouble is Trouble.NODATA:
            # No MX: the domain's own addresses, as one host of preference 0.
            addresses, ttls, trouble = await self._addresses(name)
            if addresses:
                return MxRoute(name, (MxHost(name, 0, addresses),), implicit=True), route_ttl(ttls)
            if trouble is None or trouble is Trouble.NODATA or trouble is Trouble.NXDOMAIN:
                return failure_for(name, Trouble.NODATA), route_ttl([mx.ttl, *ttls])
            return failure_for(name, trouble, "looking up its A/AAAA records"), TEMPORARY_TTL
        if mx.trouble is not None:
            permanent = mx.trouble is Trouble.NXDOMAIN
            return failure_for(name, mx.trouble, mx.detail), route_ttl([mx.ttl]) if permanent else TEMPORARY_TTL
        records = [(int(r.preference), _host(r.exchange)) for r in mx.rdata]  # type: ignore[attr-defined]
        if is_null_mx(records):
            return failure_for(name, Trouble.NULL_MX), route_ttl([mx.ttl])
        ordered = order_by_preference(records, self.rng)[:MAX_HOSTS]
        found = await asyncio.gather(*(self._addresses(host) for _pref, host in ordered))
        hosts = tuple(
            MxHost(host, preference, addresses)
            for (preference, host), (addresses, _ttls, _trouble) in zip(ordered, found, strict=True)
            if addresses
        )
        ttls = [mx.ttl] + [t for addresses, host_ttls, _ in found if addresses for t in host_ttls]
        temporary = [trouble for _a, _t, trouble in found if trouble in (Trouble.TIMEOUT, Trouble.SERVFAIL)]
        if hosts:
            # A host whose lookup failed for now is left out; ask again soon.
            return MxRoute(name, hosts), route_ttl([*ttls, *([TEMPORARY_TTL] if temporary else [])])
        if temporary:
            return failure_for(name, temporary[0], "looking up the addresses of its MX hosts"), TEMPORARY_TTL
        listed = ", ".join(host for _pref, host in ordered)
        negative = [t for _a, host_ttls, _t in found for t in host_ttls]
        return failure_for(name, Trouble.NO_HOST_ADDRESS, f"no A/AAAA for {listed}"), route_ttl([mx.ttl, *negative])

    async def _addresses(self, host: str) -> tuple[tuple[str, ...], list[int], Trouble | None]:
        """``host``'s IPv4 then IPv6 addresses, the TTLs of the sets that gave some (or,
        when none did, the negative TTLs), and the worst trouble met."""
        v4, v6 = await asyncio.gather(self._ask(host, dns.rdatatype.A), self._ask(host, dns.rdatatype.AAAA))
        addresses = v4.records + v6.records
        if addresses:
            ttls = [answer.ttl for answer in (v4, v6) if answer.records]
        else:
            ttls = [answer.ttl for answer in (v4, v6) if answer.trouble in (Trouble.NXDOMAIN, Trouble.NODATA)]
        troubles = [answer.trouble for answer in (v4, v6) if answer.trouble is not None]
        worst = next((t for t in troubles if t in (Trouble.TIMEOUT, Trouble.SERVFAIL)), None)
        return addresses, ttls, worst or (troubles[0] if troubles else None)

    async def _ask(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Answer:
        self.queries += 1
        qname = dns.name.from_text(name)
        try:
            answer = await self._resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            return _Answer(ttl=_negative_ttl(exc, qname), trouble=Trouble.NXDOMAIN)
        except dns.exception.Timeout:
            return _Answer(trouble=Trouble.TIMEOUT, detail=f"no answer within {self._resolver.lifetime:g} s")
        except dns.resolver.NoNameservers as exc:
            return _Answer(trouble=Trouble.SERVFAIL, detail=_server_said(exc))
        except dns.exception.DNSException as exc:
            return _Answer(trouble=Trouble.SERVFAIL, detail=str(exc) or type(exc).__name__)
        ttl = int(answer.chaining_result.minimum_ttl)
        if answer.rrset is None:
            return _Answer(ttl=ttl, trouble=Trouble.NODATA)
        rdata = tuple(answer.rrset)
        return _Answer(tuple(r.to_text() for r in rdata), ttl, rdata=rdata)


def _host(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower() if name != dns.name.root else "."


def _negative_ttl(exc: dns.resolver.NXDOMAIN, qname: dns.name.Name) -> int:
    # RFC 2308: min(SOA TTL, SOA MINIMUM) from the NXDOMAIN answer's authority section.
    try:
        return int(exc.response(qname).resolve_chaining().minimum_ttl)
    except (KeyError, dns.exception.DNSException):
        return int(dns.message.NEGATIVE_TTL_WITHOUT_SOA)


def _server_said(exc: dns.resolver.NoNameservers) -> str:
    # The last thing the server answered: an rcode ("SERVFAIL", "REFUSED") or an error.
    errors = exc.kwargs.get("errors") or []
    if not errors:
        return "no server could answer"
    server, _tcp, _port, what, _response = errors[-1]
    return f"{server} answered {what}" if isinstance(what, str) else f"{server}: {what}"


def resolver_for(
    setting: str | None, env: Mapping[str, str], *, timeout: float = DEFAULT_TIMEOUT
) -> MxResolver:
    """An MxResolver for the store setting ``dns.resolver`` (HOST[:PORT]), else
    ``$SMTPPLUS_DNS_RESOLVER``, else the system's. A bad value raises ResolverError (a
    ValueError) in one line naming the setting or the variable."""
    chosen = configured_resolver(setting, env)
    return MxResolver(None if chosen is None else (chosen.host, chosen.port), timeout=timeout)
