"""DKIM (RFC 6376): the keys a domain signs with, and signing a message on its way out.

Keys. :func:`generate` makes an RSA-2048 or Ed25519 (RFC 8463) key pair with
``cryptography``; the private half is PKCS#8 PEM text and goes to the store only
(:mod:`relay.store.dkim`); :func:`txt_value` is the DNS record to publish at
``SELECTOR._domainkey.DOMAIN``.

Signing. :func:`sign` adds a ``DKIM-Signature:`` (relaxed/relaxed, SHA-256) over the
headers of :data:`SIGNED_HEADERS` that are present and the body, as the first line of
the message. dkimpy does the parsing and canonicalization (the same code a verifier
runs); the private-key operation is ``cryptography``'s (OpenSSL), since dkimpy's
pure-Python RSA costs about 10 ms a signature. Before signing, 8-bit MIME parts are
re-encoded as 7-bit and lines over 998 octets folded (RFC 6376 §5.3): a hop further
on then has nothing to convert, so nothing changes a signed body afterwards.

:class:`DkimSigner` is the delivery engine's: it keeps the active keys of the store
(read again every :data:`KEY_REFRESH_SECONDS`), finds the ``From:`` domain and signs
in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import re
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from relay.message import header_addresses, header_section, split_headers
from relay.policy import PolicyError, normalize_domain
from relay.reasons import Reason
from relay.transcode import downgrade_8bit, fold_long_lines

RSA_2048 = "rsa-2048"
ED25519 = "ed25519"
ALGORITHMS = (RSA_2048, ED25519)
DEFAULT_ALGORITHM = RSA_2048

#: Days a key stays listed (and should stay published) after ``dkim activate`` (or
#: ``dkim rotate --now``) replaced it: receivers and forwarders may verify a message days after it left, and the
#: queue retries for up to ``queue_lifetime`` (5 days by default) — a week covers both.
RETIRED_KEEP_DAYS = 7

#: Seconds the delivery engine keeps the store's keys before it reads them again: a
#: key added, activated, rotated at once or removed signs (or stops signing) within this time.
KEY_REFRESH_SECONDS = 10.0

#: Signed when present (``from`` always is, once more than it occurs: a ``From:``
#: added on the way breaks the signature).
SIGNED_HEADERS = (
    "from", "to", "cc", "subject", "date", "message-id", "mime-version", "content-type",
    "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post",
)

_SELECTOR = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


class DkimError(PolicyError):
    """Operator input about DKIM that cannot be used; the message names the fix."""


# ---------------------------------------------------------------------------
# Keys and their DNS record


@dataclass(frozen=True, slots=True)
class KeyPair:
    algorithm: str
    private_pem: str = field(repr=False)  # never printed, logged or recorded in an event
    public: str = ""  # the p= value: base64


def check_algorithm(algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        raise DkimError(f"unknown DKIM algorithm {algorithm!r} — use {' or '.join(ALGORITHMS)}")
    return algorithm


def check_selector(selector: str) -> str:
    """A selector is one or more DNS labels (RFC 6376 §3.1); returned lower-case."""
    value = selector.strip().lower()
    if len(value) > 63 or not _SELECTOR.fullmatch(value):
        raise DkimError(
            f"selector {selector!r} is not a DNS label — use letters, digits and inner hyphens, "
            "at most 63 characters (e.g. s202611)"
        )
    return value


def check_domain(domain: str) -> str:
    try:
        return normalize_domain(domain)
    except PolicyError as exc:
        raise DkimError(str(exc)) from None


def default_selector(now: float, taken: Sequence[str] = ()) -> str:
    """``s`` + the year and month (UTC), e.g. ``s202611``; ``s202611b``, ``…c`` when taken."""
    base = "s" + time.strftime("%Y%m", time.gmtime(now))
    for suffix in ["", *"bcdefghijklmnopqrstuvwxyz"]:
        if base + suffix not in taken:
            return base + suffix
    raise DkimError(f"every default selector for this month is taken — pass --selector (e.g. {base}-2)")


def generate(algorithm: str = DEFAULT_ALGORITHM) -> KeyPair:
    check_algorithm(algorithm)
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == RSA_2048:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # p= of an RSA key: the DER SubjectPublicKeyInfo (RFC 6376 §3.6.1).
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        # p= of an Ed25519 key: the 32 raw octets (RFC 8463 §4).
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return KeyPair(algorithm, pem, base64.b64encode(public).decode("ascii"))


def record_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def txt_value(algorithm: str, public: str) -> str:
    """The TXT record's text, as one unquoted string."""
    k = "rsa" if algorithm == RSA_2048 else "ed25519"
    return f"v=DKIM1; k={k}; p={public}"


def parse_tags(text: str) -> dict[str, str]:
    """A tag=value list (RFC 6376 §3.2), whitespace removed from values; {} when it is none."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if not eq:
            if part.strip():
                return {}
            continue
        tags[name.strip()] = "".join(value.split())
    return tags


def record_matches(published: str, algorithm: str, public: str) -> bool:
    """Whether a published TXT text is this key's record (same key type and p=)."""
    tags = parse_tags(published)
    if tags.get("v", "DKIM1") != "DKIM1":
        return False
    k = tags.get("k", "rsa")
    return k == ("rsa" if algorithm == RSA_2048 else "ed25519") and tags.get("p") == public


# ---------------------------------------------------------------------------
# Signing


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A loaded private key: what :func:`sign` needs."""

    domain: str
    selector: str
    algorithm: str
    private: Any = field(repr=False)

    @classmethod
    def load(cls, domain: str, selector: str, algorithm: str, private_pem: str) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
        except (ValueError, TypeError, UnicodeError):
            raise DkimError(f"the stored key {selector} of {domain} is not a usable private key") from None
        wanted = rsa.RSAPrivateKey if algorithm == RSA_2048 else ed25519.Ed25519PrivateKey
        if not isinstance(key, wanted):
            raise DkimError(f"the stored key {selector} of {domain} is not an {algorithm} key")
        return cls(domain, selector, algorithm, key)

    @property
    def a_tag(self) -> bytes:
        return b"rsa-sha256" if self.algorithm == RSA_2048 else b"ed25519-sha256"

    def sign_digest(self, digest: bytes) -> bytes:
        if self.algorithm == RSA_2048:
            return bytes(self.private.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256())))
        # Ed25519-SHA256 signs the SHA-256 of the canonical headers (RFC 8463 §3).
        return bytes(self.private.sign(digest))


def seven_bit(data: bytes) -> tuple[bytes, list[tuple[Reason, str]]]:
    """``data`` as nothing further on will change it (RFC 6376 §5.3): 8-bit MIME parts
    re-encoded (quoted-printable / base64) and lines over 998 octets folded."""
    notes: list[tuple[Reason, str]] = []
    if not data.isascii():
        down = downgrade_8bit(data)
        if down.parts:
            data = down.data
            notes.append((Reason.DOWNGRADED_8BIT, f"{down.parts} 8-bit MIME part(s) re-encoded to 7-bit before DKIM signing"))
    folded = fold_long_lines(data)
    if folded.lines_folded:
        data = folded.data
        notes.append((Reason.LINES_FOLDED, f"{folded.lines_folded} line(s) over 998 octets folded before DKIM signing"))
    return data, notes


def sign(data: bytes, key: SigningKey, *, now: float | None = None) -> bytes:
    """``data`` with a ``DKIM-Signature:`` field first. ``data`` is sent as it is after
    this: convert it first (:func:`seven_bit`) and end it with CRLF. Raises
    :class:`dkim.DKIMException` for a header section dkimpy cannot parse."""
    import dkim

    end = data.find(b"\r\n\r\n")
    head, body = (data, b"") if end < 0 else (data[: end + 2], data[end + 4 :])
    headers, _ = dkim.rfc822_parse(head + b"\r\n")  # the header section only: the body needs no split
    policy = _RELAXED
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    present = [name.lower() for name, _ in headers]
    include = [name.encode() for name in SIGNED_HEADERS for _ in range(present.count(name.encode()))]
    include.append(b"from")  # once more than present: an added From: breaks the signature
    stamp = int(time.time() if now is None else now)
    fields = [
        (b"v", b"1"),
        (b"a", key.a_tag),
        (b"c", b"relaxed/relaxed"),
        (b"d", key.domain.encode("ascii")),
        (b"s", key.selector.encode("ascii")),
        (b"t", str(stamp).encode("ascii")),
        (b"h", b" : ".join(include)),  # spaces: folding may break a long list only there
        (b"bh", body_hash),
        # A placeholder as long as a signature, so folding puts b= on its own lines and
        # the real value does not move the fields before it.
        (b"b", b"0" * 60),
    ]
    name = b"DKIM-Signature"
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(name))
    value = dkim.RE_BTAG.sub(b"\\1", value)
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, policy, policy.canonicalize_headers(headers), include, (name, b" " + value), None)
    fields[-1] = (b"b", base64.b64encode(key.sign_digest(hasher.digest())))
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=len(name))
    return name + b": " + value + data


def relaxed_body(body: bytes) -> bytes:
    """dkimpy's relaxed body canonicalization (RFC 6376 §3.4.4), skipping the regex
    passes that would change nothing: most bodies have no tab, double space or
    trailing space, and the passes cost most of a signature's time otherwise."""
    from dkim import canonicalization as canon

    if b" \r\n" in body or b"\t\r\n" in body:
        body = canon.strip_trailing_whitespace(body)
    if b"\t" in body or b"  " in body:
        body = canon.compress_whitespace(body)
    return canon.correct_empty_body(canon.strip_trailing_lines(body))


def _relaxed_policy() -> Any:
    from dkim.canonicalization import CanonicalizationPolicy

    return CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


_RELAXED = _relaxed_policy()


def from_domain(data: bytes) -> str | None:
    """The domain of the (first) ``From:`` address, IDNA-encoded and lower-case; None
    when there is no usable one."""
    values = [value for name, value in split_headers(header_section(data)) if name == "from"]
    if len(values) != 1:
        return None
    addresses = header_addresses(values[0].strip())
    if not addresses:
        return None
    domain = addresses[0].rpartition("@")[2]
    try:
        return normalize_domain(domain)
    except PolicyError:
        return None


# ---------------------------------------------------------------------------
# The delivery engine's signer


@dataclass(frozen=True, slots=True)
class StoredKey:
    """An active key as the store holds it (private PEM included: load it, never show it)."""

    domain: str
    selector: str
    algorithm: str
    private_pem: str = field(repr=False)


@dataclass(slots=True)
class Signed:
    """What signing did to one message: the bytes to send and notes for its events."""

    data: bytes
    notes: list[tuple[Reason, str]] = field(default_factory=list)
    signed: bool = False


class DkimSigner:
    """Signs outgoing mail with the store's active keys.

    ``load_keys`` reads the active keys (``await`` it: the engine passes its store's
    ``run``); they are read again when older than ``refresh`` seconds. Loaded private
    keys are kept per (domain, selector), so a refresh parses nothing new.
    """

    def __init__(
        self, load_keys: Callable[[], Awaitable[list[StoredKey]]], *, refresh: float = KEY_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load_keys = load_keys
        self._refresh = refresh
        self._clock = clock
        self._keys: dict[str, StoredKey] = {}
        self._loaded: dict[tuple[str, str, str], SigningKey] = {}
        self._read_at: float | None = None
        self._lock = threading.Lock()
        self.signed = 0  # messages signed (a counter for benches and tests)

    async def keys(self) -> dict[str, StoredKey]:
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._refresh:
            stored = await self._load_keys()
            self._keys = {k.domain: k for k in stored}
            self._read_at = now
        return self._keys

    def forget(self) -> None:
        """Read the keys again on next use (after an operator changed them)."""
        self._read_at = None

    async def sign(self, data: bytes) -> Signed:
        """``data`` signed with its ``From:`` domain's active key, converted first (see
        :func:`seven_bit`); unchanged when no key applies. The work runs in a thread."""
        keys = await self.keys()
        if not keys:
            return Signed(data)
        domain = from_domain(data)
        stored = keys.get(domain) if domain else None
        if stored is None:
            return Signed(data)
        return await asyncio.to_thread(self.sign_now, data, stored)

    def sign_now(self, data: bytes, stored: StoredKey) -> Signed:
        """The blocking part of :meth:`sign` (a worker thread's)."""
        try:
            key = self._key(stored)
            converted, notes = seven_bit(data if data.endswith(b"\r\n") else data + b"\r\n")
            signed = sign(converted, key)
        except Exception as exc:  # a bad key or an unparsable message: send it unsigned, say so
            detail = f"not signed for {stored.domain} (selector {stored.selector}): {type(exc).__name__}: {exc}"
            return Signed(data, [(Reason.DKIM_SIGN_FAILED, detail[:300])])
        self.signed += 1
        notes.append((Reason.DKIM_SIGNED, f"signed d={stored.domain} s={stored.selector} ({stored.algorithm})"))
        return Signed(signed, notes, signed=True)

    def _key(self, stored: StoredKey) -> SigningKey:
        ident = (stored.domain, stored.selector, stored.algorithm)
        with self._lock:
            key = self._loaded.get(ident)
        if key is None:
            key = SigningKey.load(stored.domain, stored.selector, stored.algorithm, stored.private_pem)
            with self._lock:
                self._loaded[ident] = key
        return key


class _HasData(Protocol):
    data: bytes


M = TypeVar("M", bound=_HasData)


async def sign_for_delivery(signer: DkimSigner | None, message: M) -> tuple[M, list[tuple[Reason, str]]]:
    """The delivery hook: ``message`` (the queue's claimed message, a dataclass with
    ``data``) with its data signed when a key applies, and the notes for its events.
    Called just before the bytes for a hop are prepared: a signed message is 7-bit with
    short lines, so preparing leaves it as it is and the signature covers the wire bytes."""
    if signer is None:
        return message, []
    signed = await signer.sign(message.data)
    if not signed.notes:
        return message, []
    return dataclasses.replace(message, data=signed.data), signed.notes  # type: ignore[type-var]


# ---------------------------------------------------------------------------
# Is it published?


@dataclass(frozen=True, slots=True)
class TxtAnswer:
    """The TXT texts at a name, or why there are none (``problem``: nxdomain, timeout, error)."""

    name: str
    resolver: str
    values: tuple[str, ...] = ()
    problem: str | None = None
    message: str = ""


def lookup_txt(name: str, resolver: Any, timeout: float = 5.0) -> TxtAnswer:
    """The TXT records at ``name`` through ``resolver`` (a :class:`relay.dnscheck.Resolver`):
    UDP, TCP when truncated. Blocking; never raises for DNS trouble."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    server = str(resolver)
    query = dns.message.make_query(name, dns.rdatatype.TXT)
    try:
        response = dns.query.udp(query, resolver.host, timeout=timeout, port=resolver.port, ignore_unexpected=True)
        if response.flags & dns.flags.TC:
            response = dns.query.tcp(query, resolver.host, timeout=timeout, port=resolver.port)
    except dns.exception.Timeout:
        return TxtAnswer(name, server, problem="timeout", message=f"resolver {server} did not answer within {timeout:g} s")
    except (OSError, EOFError, dns.exception.DNSException) as exc:
        return TxtAnswer(name, server, problem="error", message=f"could not query resolver {server}: {exc}")
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return TxtAnswer(name, server, problem="nxdomain", message=f"{name} does not exist (NXDOMAIN)")
    if rcode != dns.rcode.NOERROR:
        return TxtAnswer(name, server, problem="error", message=f"resolver {server} answered {dns.rcode.to_text(rcode)}")
    values = tuple(
        b"".join(rdata.strings).decode("utf-8", "replace")
        for rrset in response.answer if rrset.rdtype == dns.rdatatype.TXT
        for rdata in rrset
    )
    return TxtAnswer(name, server, values)
