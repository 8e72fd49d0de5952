"""Pure rules: `;` lists, domain and address normalization, who may send as whom.

No I/O here. Every function is deterministic and exhaustively tested.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

import idna

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_LABEL = 63
MAX_ADDRESS = 254
MAX_NOTE = 200
MAX_USERNAME = 64

# RFC 5322 dot-atom characters, minus `%` and `!` which smtpplus refuses anywhere
# (old source-routing hacks that let a sender slip past a domain check).
_ATOM = r"[A-Za-z0-9#$&'*+/=?^_`{|}~-]+"
_DOT_ATOM_RE = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PolicyError(ValueError):
    """Invalid operator input; the message names the bad entry and the fix."""


class AddressProblem(enum.StrEnum):
    """Why an address from an SMTP session is refused, whatever its domain."""

    EMPTY = "empty"
    CONTROL = "control-character"
    PERCENT = "percent-hack"
    BANG = "bang-path"
    QUOTED_AT = "quoted-at"
    SOURCE_ROUTE = "source-route"
    LITERAL = "address-literal"
    NO_DOMAIN = "no-domain"
    LOCAL_TOO_LONG = "local-part-too-long"
    DOMAIN_TOO_LONG = "domain-too-long"
    SYNTAX = "syntax"


@dataclass(frozen=True, slots=True)
class AddressCheck:
    """The outcome of :func:`check_address`: a normalized address or a problem."""

    address: str | None
    problem: AddressProblem | None = None


# ---------------------------------------------------------------------------
# `;` lists


def split_semicolon_list(text: str) -> list[str]:
    """Split an operator's `;` list: trim, drop empty entries and duplicates.

    A comma is always an error: the help page's users were told to use semicolons,
    and silently accepting commas would authorize something nobody typed.
    """
    if "," in text:
        bad = next(part.strip() for part in text.split(";") if "," in part)
        raise PolicyError(f"use semicolons (;) to separate entries, not commas: {bad!r}")
    seen: dict[str, None] = {}
    for part in text.split(";"):
        entry = part.strip()
        if entry:
            seen.setdefault(entry, None)
    return list(seen)


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------------
# Domains and addresses


def normalize_domain(value: str) -> str:
    """Lower-case and IDNA-encode (IDNA 2008 with UTS 46 mapping) a domain.

    Raises PolicyError naming the entry when it is not a valid domain name.
    """
    raw = value.strip()
    domain = raw[:-1] if raw.endswith(".") else raw
    if not domain:
        raise PolicyError(f"{value!r} is not a domain: it is empty")
    if _CONTROL_RE.search(domain) or any(ch.isspace() for ch in domain):
        raise PolicyError(f"{value!r} is not a domain: it contains spaces or control characters")
    if "@" in domain:
        raise PolicyError(f"{value!r} is not a domain: it contains '@' (put addresses in the senders list)")
    if domain.startswith("[") or _looks_like_ip(domain):
        raise PolicyError(f"{value!r} is not a domain: address literals and IP addresses are not allowed")
    try:
        encoded = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise PolicyError(f"{value!r} is not a valid domain: {exc}") from None
    encoded = encoded.lower()
    labels = encoded.split(".")
    if len(labels) < 2:
        raise PolicyError(f"{value!r} is not a valid domain: it needs at least two labels (example.com)")
    if len(encoded) > MAX_DOMAIN:
        raise PolicyError(f"{value!r} is not a valid domain: longer than {MAX_DOMAIN} characters")
    for label in labels:
        if not label or len(label) > MAX_LABEL:
            raise PolicyError(f"{value!r} is not a valid domain: empty or over-long label")
        if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", label):
            raise PolicyError(f"{value!r} is not a valid domain: label {label!r} has invalid characters")
    return encoded


def _looks_like_ip(text: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+", text)) or ":" in text


def normalize_address(value: str) -> str:
    """Validate an operator-entered address and return its canonical form
    (local part and domain lower-cased, domain IDNA-encoded)."""
    check = check_address(value.strip())
    if check.problem is not None or check.address is None:
        raise PolicyError(f"{value.strip()!r} is not a valid sender address ({_describe(check.problem)})")
    return check.address


def describe_address_problem(problem: AddressProblem | None) -> str:
    """A short human phrase for a problem found by :func:`check_address`."""
    return _describe(problem)


def _describe(problem: AddressProblem | None) -> str:
    return {
        AddressProblem.EMPTY: "it is empty",
        AddressProblem.CONTROL: "it contains control characters",
        AddressProblem.PERCENT: "'%' is not allowed in addresses",
        AddressProblem.BANG: "'!' is not allowed in addresses",
        AddressProblem.QUOTED_AT: "a quoted local part with '@' is not allowed",
        AddressProblem.SOURCE_ROUTE: "source routes are not allowed",
        AddressProblem.LITERAL: "address literals like x@[1.2.3.4] are not allowed",
        AddressProblem.NO_DOMAIN: "it has no domain",
        AddressProblem.LOCAL_TOO_LONG: f"the local part is over {MAX_LOCAL_PART} characters",
        AddressProblem.DOMAIN_TOO_LONG: f"the domain is over {MAX_DOMAIN} characters",
        AddressProblem.SYNTAX: "it is not of the form name@example.com",
        None: "invalid",
    }[problem]


def check_address(raw: str) -> AddressCheck:
    """Classify an address as it came from an SMTP envelope or a header.

    Returns the canonical address, or the first problem found. Problems that are
    tricks (`%`, `!`, quoted `@`, source routes, literals) are reported as such even
    when the rest of the address would look acceptable.
    """
    text = raw.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if not text:
        return AddressCheck(None, AddressProblem.EMPTY)
    if _CONTROL_RE.search(text):
        return AddressCheck(None, AddressProblem.CONTROL)
    if text.startswith("@") and ":" in text:
        # `@relay.example:user@example.com` (RFC 5321 source route); a bare
        # `@example.com` is merely missing its local part and falls through to SYNTAX.
        return AddressCheck(None, AddressProblem.SOURCE_ROUTE)
    if text.startswith('"'):
        end = _closing_quote(text)
        if end is None:
            return AddressCheck(None, AddressProblem.SYNTAX)
        quoted = text[1:end]
        if "@" in quoted:
            return AddressCheck(None, AddressProblem.QUOTED_AT)
        if "%" in quoted:
            return AddressCheck(None, AddressProblem.PERCENT)
        if "!" in quoted:
            return AddressCheck(None, AddressProblem.BANG)
        rest = text[end + 1 :]
        if not rest.startswith("@"):
            return AddressCheck(None, AddressProblem.NO_DOMAIN if not rest else AddressProblem.SYNTAX)
        # A quoted local part without tricks is legal SMTP, but never one of ours.
        local, domain = text[: end + 1], rest[1:]
    else:
        if "%" in text:
            return AddressCheck(None, AddressProblem.PERCENT)
        if "!" in text:
            return AddressCheck(None, AddressProblem.BANG)
        if "@" not in text:
            return AddressCheck(None, AddressProblem.NO_DOMAIN)
        local, _, domain = text.rpartition("@")
        if "@" in local:
            return AddressCheck(None, AddressProblem.SYNTAX)
    if not domain:
        return AddressCheck(None, AddressProblem.NO_DOMAIN)
    if domain.startswith("["):
        return AddressCheck(None, AddressProblem.LITERAL)
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        return AddressCheck(None, AddressProblem.LOCAL_TOO_LONG)
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        return AddressCheck(None, AddressProblem.DOMAIN_TOO_LONG)
    if not local.startswith('"') and not _DOT_ATOM_RE.match(local):
        return AddressCheck(None, AddressProblem.SYNTAX)
    try:
        canonical_domain = normalize_domain(domain)
    except PolicyError:
        if _looks_like_ip(domain):
            return AddressCheck(None, AddressProblem.LITERAL)
        return AddressCheck(None, AddressProblem.SYNTAX)
    return AddressCheck(f"{local.lower()}@{canonical_domain}")


def _closing_quote(text: str) -> int | None:
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return None


def parse_domains(text: str) -> list[str]:
    """An operator's `;` list of authorized domains, canonical and deduplicated."""
    return _dedupe(normalize_domain(entry) for entry in split_semicolon_list(text))


def parse_senders(text: str) -> list[str]:
    """An operator's `;` list of authorized sender addresses, canonical and deduplicated."""
    return _dedupe(normalize_address(entry) for entry in split_semicolon_list(text))


# ---------------------------------------------------------------------------
# Other operator input


def validate_note(note: str) -> str:
    note = note.strip()
    if len(note) > MAX_NOTE:
        raise PolicyError(f"note is {len(note)} characters; keep it to {MAX_NOTE} or fewer")
    if _CONTROL_RE.search(note.replace("\n", " ")):
        raise PolicyError("note contains control characters")
    return note


def validate_username(username: str) -> str:
    name = username.strip()
    if not name or len(name) > MAX_USERNAME or not _USERNAME_RE.match(name):
        raise PolicyError(
            f"username {username!r} is not valid — use letters, digits, '.', '_' or '-' "
            f"(up to {MAX_USERNAME}, starting with a letter or digit)"
        )
    return name


def list_slug(list_name: str) -> str:
    """The prefix of generated usernames: ``Newsletter EU`` → ``newsletter-eu``."""
    slug = re.sub(r"[^a-z0-9]+", "-", list_name.lower()).strip("-")
    return (slug or "list")[:40]


def generated_username(list_name: str, taken: Iterable[str]) -> str:
    """``<list-slug>-<n>`` with the smallest n ≥ 1 not yet taken."""
    slug = list_slug(list_name)
    used = set(taken)
    n = 1
    while f"{slug}-{n}" in used:
        n += 1
    return f"{slug}-{n}"
