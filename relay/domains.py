"""``smtpplus domains check``: what a sender domain has in place for mail from this
relay to be accepted — a report, never enforcement.

One line per check (:data:`CHECKS`): the domain's verification state in the store, its
active DKIM key (in the store and published in DNS?), its SPF record (does it authorize
the relay's public address?), its DMARC record. Each line is a :class:`Finding`: ``ok`` True (in
place), False (missing or wrong: the message says the fix) or None (cannot tell: a DNS
lookup failed, or there is nothing to compare with).

DNS goes through the one configured resolver (relay.nameserver). SPF is evaluated for
the relay's public address as RFC 7208's check_host() does, for the mechanisms that need
no sender address: ``ip4``, ``ip6``, ``a``, ``mx``, ``include``, ``exists`` (without
macros), ``redirect=`` and ``all``, within the 10-lookup limit; a record using macros or
``ptr`` is reported as "cannot tell".
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from relay import policy
from relay.display import clean
from relay.nameserver import Resolver, ResolverError
from relay.store import Connection

SPF_LOOKUP_LIMIT = 10  # RFC 7208 §4.6.4
MX_HOSTS_PER_LOOKUP = 10
PUBLIC_ADDRESS_SETTING = "delivery.public_address"  # relay.store.settings.Keys.PUBLIC_ADDRESS
SET_PUBLIC_ADDRESS_WITH = "smtpplus domains settings --public-address IP[,IP]"


@dataclass(frozen=True, slots=True)
class Finding:
    check: str  # "verification", "dkim", "spf", "dmarc"
    ok: bool | None  # True in place, False missing/wrong, None cannot tell
    status: str  # one word: verified, pending, pass, fail, missing, …
    message: str  # one line; what to do when not ok
    records: tuple[str, ...] = ()  # the DNS records the finding is about

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "status": self.status, "message": self.message, "records": list(self.records)}


@dataclass(frozen=True, slots=True)
class DomainReport:
    domain: str
    resolver: str
    public_addresses: tuple[str, ...]
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return all(finding.ok for finding in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain, "resolver": self.resolver, "public_addresses": list(self.public_addresses),
            "ok": self.ok, "findings": [finding.as_dict() for finding in self.findings],
        }


# ---------------------------------------------------------------------------
# DNS lookups (blocking; run from a thread in async code)


class LookupTrouble(Exception):
    """A lookup that gave no answer: ``kind`` is nxdomain, timeout or error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Lookups:
    """TXT, A/AAAA and MX answers through one resolver (None: the system's). NODATA is
    an empty list; NXDOMAIN, timeouts and failures raise LookupTrouble."""

    def __init__(self, resolver: Resolver | None, timeout: float = 5.0) -> None:
        if resolver is None:
            try:
                self._resolver = dns.resolver.Resolver(configure=True)
            except (dns.resolver.NoResolverConfiguration, OSError):
                raise ResolverError("no DNS resolver configured — pass --resolver HOST[:PORT]") from None
        else:
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = [dns.nameserver.Do53Nameserver(resolver.host, resolver.port)]
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(timeout, 2.0)
        self.count = 0

    def _ask(self, name: str, rdtype: dns.rdatatype.RdataType) -> list[Any]:
        self.count += 1
        try:
            answer = self._resolver.resolve(dns.name.from_text(name), rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise LookupTrouble("nxdomain", f"{name} does not exist (NXDOMAIN)") from None
        except dns.exception.Timeout:
            raise LookupTrouble("timeout", f"no answer for {name} within {self._resolver.lifetime:g} s") from None
        except dns.resolver.NoNameservers:
            raise LookupTrouble("error", f"the resolver failed to answer for {name} (SERVFAIL or REFUSED)") from None
        except dns.exception.DNSException as exc:
            raise LookupTrouble("error", f"looking up {name}: {exc}") from None
        return [] if answer.rrset is None else list(answer.rrset)

    def txt(self, name: str) -> list[str]:
        # A TXT record may be split into 255-byte strings; its value is their concatenation.
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self._ask(name, dns.rdatatype.TXT)]

    def addresses(self, name: str) -> list[str]:
        found: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                found += [r.address for r in self._ask(name, rdtype)]
            except LookupTrouble as trouble:
                if trouble.kind != "nxdomain":
                    raise
        return found

    def mx(self, name: str) -> list[str]:
        rows = sorted(self._ask(name, dns.rdatatype.MX), key=lambda r: r.preference)
        return [r.exchange.to_text(omit_final_dot=True) for r in rows if r.exchange != dns.name.root]


# ---------------------------------------------------------------------------
# SPF (RFC 7208), for one address, without a sender address


class SpfError(Exception):
    """``result`` is permerror, temperror or unsupported; the message says why."""

    def __init__(self, result: str, message: str) -> None:
        super().__init__(message)
        self.result = result


QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISM = re.compile(r"(?P<q>[-+~?]?)(?P<name>[a-z0-9]+)(?::(?P<arg>[^/]+))?(?P<cidr>/.*)?", re.IGNORECASE)


def spf_records(texts: Iterable[str]) -> list[str]:
    """The SPF records among TXT values (``v=spf1`` alone or followed by a space)."""
    return [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]


@dataclass
class _Spf:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    dns: Lookups
    lookups: int = 0
    seen: list[str] = field(default_factory=list)

    def count(self) -> None:
        self.lookups += 1
        if self.lookups > SPF_LOOKUP_LIMIT:
            raise SpfError("permerror", f"more than {SPF_LOOKUP_LIMIT} DNS lookups (RFC 7208 §4.6.4)")

    def check_host(self, domain: str) -> str:
        try:
            records = spf_records(self.dns.txt(domain))
        except LookupTrouble as trouble:
            if trouble.kind == "nxdomain":
                return "none"
            raise SpfError("temperror", str(trouble)) from None
        if not records:
            return "none"
        if len(records) > 1:
            raise SpfError("permerror", f"{domain} has {len(records)} SPF records; RFC 7208 allows one")
        self.seen.append(f"{domain}: {records[0]}")
        redirect = None
        for term in records[0].split()[1:]:
            head, sep, value = term.partition("=")
            if sep and re.fullmatch(r"[a-z][a-z0-9_.-]*", head, re.IGNORECASE):
                if head.lower() == "redirect":
                    redirect = value
                continue  # exp= and unknown modifiers do not change the result
            match = _MECHANISM.fullmatch(term)
            if match is None:
                raise SpfError("permerror", f"{domain}: cannot read SPF term {term!r}")
            if self.matches(domain, match.group("name").lower(), match.group("arg"), match.group("cidr")):
                return QUALIFIERS[match.group("q") or "+"]
        if redirect is not None:
            self.count()
            result = self.check_host(self.target(redirect))
            if result == "none":
                raise SpfError("permerror", f"{domain}: redirect={redirect} has no SPF record")
            return result
        return "neutral"

    def target(self, spec: str) -> str:
        if "%" in spec:
            raise SpfError("unsupported", f"the SPF record uses macros ({spec!r}), which smtpplus does not evaluate")
        return spec

    def matches(self, domain: str, name: str, arg: str | None, cidr: str | None) -> bool:
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            if arg is None:
                raise SpfError("permerror", f"{domain}: {name} needs an address")
            try:
                network = ipaddress.ip_network(arg + (cidr or ""), strict=False)
            except ValueError:
                raise SpfError("permerror", f"{domain}: bad {name} value {arg + (cidr or '')!r}") from None
            return self.ip in network
        if name == "include":
            if arg is None:
                raise SpfError("permerror", f"{domain}: include needs a domain")
            self.count()
            result = self.check_host(self.target(arg))
            if result == "none":
                raise SpfError("permerror", f"{domain}: include:{arg} has no SPF record")
            return result == "pass"
        if name in ("a", "mx"):
            self.count()
            host = self.target(arg or domain)
            lengths = _prefix_lengths(cidr)
            try:
                hosts = self.dns.mx(host)[:MX_HOSTS_PER_LOOKUP] if name == "mx" else [host]
                addresses = [a for h in hosts for a in self.dns.addresses(h)]
            except LookupTrouble as trouble:
                if trouble.kind == "nxdomain":
                    return False
                raise SpfError("temperror", str(trouble)) from None
            return any(_in_network(self.ip, a, lengths) for a in addresses)
        if name == "exists":
            self.count()
            try:
                return bool(self.dns.addresses(self.target(arg or "")))
            except LookupTrouble as trouble:
                if trouble.kind == "nxdomain":
                    return False
                raise SpfError("temperror", str(trouble)) from None
        if name == "ptr":
            raise SpfError("unsupported", "the SPF record uses ptr (RFC 7208 says not to), which smtpplus does not evaluate")
        raise SpfError("permerror", f"{domain}: unknown SPF mechanism {name!r}")


def _prefix_lengths(cidr: str | None) -> tuple[int, int]:
    # "a/24//64": the first length is for IPv4 addresses, the second for IPv6 (RFC 7208 §5.6).
    lengths = re.fullmatch(r"(?:/(\d{1,3}))?(?://(\d{1,3}))?", cidr or "")
    v4 = int(lengths.group(1) or 32) if lengths else -1
    v6 = int(lengths.group(2) or 128) if lengths else -1
    if not (0 <= v4 <= 32 and 0 <= v6 <= 128):
        raise SpfError("permerror", f"bad prefix length {cidr!r}")
    return v4, v6


def _in_network(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, address: str, lengths: tuple[int, int]) -> bool:
    host = ipaddress.ip_address(address)
    length = lengths[0] if host.version == 4 else lengths[1]
    return ip in ipaddress.ip_network(f"{host}/{length}", strict=False)


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    result: str  # pass, fail, softfail, neutral, none, permerror, temperror, unsupported
    detail: str  # why, for the errors
    evaluated: tuple[str, ...]  # "domain: record" for each record read

    def __str__(self) -> str:
        return f"{self.result}: {self.detail}" if self.detail else self.result


def spf_result(domain: str, address: str, lookups: Lookups) -> SpfOutcome:
    """RFC 7208's check_host() for ``address`` at ``domain`` (no sender address: no macros)."""
    spf = _Spf(ipaddress.ip_address(address), lookups)
    try:
        return SpfOutcome(spf.check_host(domain), "", tuple(spf.seen))
    except SpfError as exc:
        return SpfOutcome(exc.result, str(exc), tuple(spf.seen))


# ---------------------------------------------------------------------------
# The checks


@dataclass(frozen=True, slots=True)
class DomainContext:
    """What a check needs: the store, the domain (A-label form), DNS, the relay's
    public addresses (may be empty)."""

    db: Connection
    domain: str
    dns: Lookups
    public_addresses: tuple[str, ...]


def verification_finding(ctx: DomainContext) -> Finding:
    from relay.store.directory import all_identities

    identities = all_identities(ctx.db)
    domain = next((i for i in identities if i.kind == "domain" and i.value == ctx.domain), None)
    if domain is not None and domain.verified:
        return Finding("verification", True, "verified", f"{ctx.domain} is verified ({domain.method})")
    addresses = [i for i in identities if i.kind == "address" and i.value.rpartition("@")[2] == ctx.domain]
    verified = sum(1 for i in addresses if i.verified)
    at = f"; addresses at it: {verified} verified, {len(addresses) - verified} pending" if addresses else ""
    if domain is not None:
        return Finding(
            "verification", False, "pending",
            f"{ctx.domain} is pending — publish TXT {domain.txt_record!r} and run `smtpplus senders check-dns {ctx.domain}`{at}",
        )
    return Finding(
        "verification", False, "unknown",
        f"{ctx.domain} is no sender identity — add it to a user's domains (`smtpplus users edit USER --domains …`){at}",
    )


def spf_finding(ctx: DomainContext) -> Finding:
    try:
        records = spf_records(ctx.dns.txt(ctx.domain))
    except LookupTrouble as trouble:
        return Finding("spf", None, trouble.kind, f"SPF: {trouble}")
    if not records:
        publish = " ".join(f"ip{ipaddress.ip_address(a).version}:{a}" for a in ctx.public_addresses) or "ip4:ADDRESS"
        return Finding("spf", False, "missing", f"no SPF record at {ctx.domain} — publish TXT \"v=spf1 {publish} ~all\"")
    if not ctx.public_addresses:
        return Finding(
            "spf", None, "found",
            f"SPF record found; set the relay's public address (`{SET_PUBLIC_ADDRESS_WITH}`) to check it authorizes the relay",
            tuple(records),
        )
    outcomes = {address: spf_result(ctx.domain, address, ctx.dns) for address in ctx.public_addresses}
    failing = {a: outcome for a, outcome in outcomes.items() if outcome.result != "pass"}
    if not failing:
        addresses = ", ".join(ctx.public_addresses)
        return Finding("spf", True, "pass", f"SPF authorizes {addresses}", tuple(records))
    address, outcome = next(iter(failing.items()))
    if outcome.result in ("temperror", "unsupported"):
        return Finding("spf", None, outcome.result, f"SPF for {address}: cannot tell ({outcome})", tuple(records))
    fix = f"add ip{ipaddress.ip_address(address).version}:{address} to the SPF record of {ctx.domain}"
    if outcome.result == "permerror":
        fix = f"fix the SPF record of {ctx.domain}; receivers treat it as broken"
    return Finding("spf", False, outcome.result, f"SPF does not authorize {address} ({outcome}) — {fix}", tuple(records))


def dmarc_finding(ctx: DomainContext) -> Finding:
    name = f"_dmarc.{ctx.domain}"
    try:
        texts = ctx.dns.txt(name)
    except LookupTrouble as trouble:
        if trouble.kind != "nxdomain":
            return Finding("dmarc", None, trouble.kind, f"DMARC: {trouble}")
        texts = []
    records = [t for t in texts if re.match(r"v\s*=\s*DMARC1\s*(;|$)", t)]
    if not records:
        return Finding(
            "dmarc", False, "missing",
            f"no DMARC record at {name} (a policy at the organizational domain may still apply) — "
            f"publish e.g. TXT \"v=DMARC1; p=none; rua=mailto:dmarc@{ctx.domain}\"",
        )
    if len(records) > 1:
        return Finding("dmarc", False, "invalid", f"{name} has {len(records)} DMARC records; receivers ignore them all — keep one", tuple(records))
    tags = dict(
        (key.strip().lower(), value.strip())
        for key, _sep, value in (part.partition("=") for part in records[0].split(";") if "=" in part)
    )
    policy_ = tags.get("p", "")
    if policy_ not in ("none", "quarantine", "reject"):
        return Finding("dmarc", False, "invalid", f"the DMARC record at {name} has no valid p= (none, quarantine or reject)", tuple(records))
    return Finding("dmarc", True, "present", f"DMARC record present (p={policy_})", tuple(records))


def dkim_finding(ctx: DomainContext) -> Finding:
    """The domain's active DKIM key (relay/dkim.py): in the store, and published in DNS
    with the same key? (``smtpplus dkim check`` also checks retired keys.)"""
    from relay import dkim
    from relay.store.dkim import active_key

    key = active_key(ctx.db, ctx.domain)
    if key is None:
        return Finding(
            "dkim", False, "no-key",
            f"{ctx.domain} has no DKIM key: mail from it goes unsigned — `smtpplus dkim add {ctx.domain}`, then publish the record",
        )
    name = dkim.record_name(key.selector, ctx.domain)
    value = dkim.txt_value(key.algorithm, key.public_key)
    try:
        texts = ctx.dns.txt(name)
    except LookupTrouble as trouble:
        if trouble.kind != "nxdomain":
            return Finding("dkim", None, trouble.kind, f"DKIM: {trouble}")
        texts = []
    records = tuple(t for t in texts if dkim.parse_tags(t).get("p") is not None)
    if any(dkim.record_matches(t, key.algorithm, key.public_key) for t in records):
        return Finding("dkim", True, "published", f"DKIM key {key.selector} ({key.algorithm}) published at {name}", records)
    if records:
        return Finding("dkim", False, "mismatch", f"{name} holds another key — publish TXT {value!r} there instead", records)
    return Finding("dkim", False, "missing", f"DKIM key {key.selector} is not published — publish TXT {value!r} at {name}")


# The lines of the report, in order. Each takes the context and returns one Finding.
CHECKS: list[Callable[[DomainContext], Finding]] = [verification_finding, dkim_finding, spf_finding, dmarc_finding]


def parse_public_addresses(text: str) -> tuple[str, ...]:
    """``IP[,IP…]`` (commas, semicolons or spaces) → addresses; PolicyError names a bad one."""
    items = [item for item in re.split(r"[,;\s]+", text.strip()) if item]
    out: list[str] = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise policy.PolicyError(f"public address {item!r} is not an IP address (e.g. 203.0.113.5 or 2001:db8::5)") from None
    return tuple(dict.fromkeys(out))


def check_domain(
    db: Connection, domain: str, *, resolver: Resolver | None, public_addresses: Iterable[str] = (), timeout: float = 5.0
) -> DomainReport:
    """The report for ``domain`` (any case, IDN or A-label). Blocking: DNS lookups."""
    name = policy.normalize_domain(domain)
    lookups = Lookups(resolver, timeout)
    ctx = DomainContext(db, name, lookups, tuple(public_addresses))
    findings = tuple(_escaped(check(ctx)) for check in CHECKS)
    return DomainReport(name, str(resolver) if resolver else "system", ctx.public_addresses, findings)


def _escaped(finding: Finding) -> Finding:
    # Records come from DNS, which anyone can publish: escape them for screens and logs.
    return Finding(
        finding.check, finding.ok, finding.status, clean(finding.message, 2000), tuple(clean(r, 2000) for r in finding.records)
    )
