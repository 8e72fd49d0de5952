"""DKIM keys: add one (and say what to publish), list, check that DNS publishes them,
rotate (stage a key, activate it once DNS publishes it), remove. The CLI (``smtpplus
dkim``) and any other surface call these.

Private keys never leave the store through here: the results carry the domain,
selector, algorithm, state and the public DNS record only.

Slow parts: generating an RSA-2048 key (about 0.1 s, before the write lock) and
:func:`check` (DNS, up to ``timeout`` per key).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from relay import dkim as rules
from relay.dnscheck import choose_resolver
from relay.store import Connection
from relay.store import dkim as store
from relay.store.settings import Keys, get_setting

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """What to publish: a TXT record ``value`` at ``name``."""

    domain: str
    selector: str
    name: str
    value: str

    def as_dict(self) -> dict[str, str]:
        return {"domain": self.domain, "selector": self.selector, "name": self.name, "value": self.value}


@dataclass(frozen=True, slots=True)
class KeyView:
    """A key as operators see it. ``state``: ``active`` (signs), ``pending`` (staged by a
    rotation: signs once activated), ``retired`` (signs nothing, keep it published until
    ``keep_until``), ``removable`` (past that)."""

    domain: str
    selector: str
    algorithm: str
    state: str
    created_at: float
    retired_at: float | None
    keep_until: float | None
    record: DnsRecord

    def as_dict(self) -> dict[str, object]:
        return {
            "domain": self.domain, "selector": self.selector, "algorithm": self.algorithm, "state": self.state,
            "created_at": self.created_at, "retired_at": self.retired_at, "keep_until": self.keep_until,
            "name": self.record.name, "value": self.record.value,
        }


def record_of(key: store.KeyInfo) -> DnsRecord:
    return DnsRecord(
        key.domain, key.selector, rules.record_name(key.selector, key.domain), rules.txt_value(key.algorithm, key.public_key)
    )


def view(key: store.KeyInfo, now: float) -> KeyView:
    if key.active or key.pending:
        state = "active" if key.active else "pending"
        return KeyView(key.domain, key.selector, key.algorithm, state, key.created_at, None, None, record_of(key))
    retired = key.retired_at if key.retired_at is not None else key.created_at
    keep_until = retired + rules.RETIRED_KEEP_DAYS * DAY
    state = "retired" if now < keep_until else "removable"
    return KeyView(key.domain, key.selector, key.algorithm, state, key.created_at, retired, keep_until, record_of(key))


def add(
    db: Connection, domain: str, *, selector: str | None = None, algorithm: str = rules.DEFAULT_ALGORITHM,
    now: float | None = None,
) -> DnsRecord:
    """A new key for a domain that has none active; returns the record to publish."""
    stamp = time.time() if now is None else now
    name = rules.check_domain(domain)
    rules.check_algorithm(algorithm)
    chosen = rules.check_selector(selector) if selector else rules.default_selector(stamp, store.selectors(db, name))
    pair = rules.generate(algorithm)  # before the write lock: RSA takes a while
    return record_of(store.add_key(db, name, chosen, pair, now=stamp))


def keys(db: Connection, domain: str | None = None, *, now: float | None = None) -> list[KeyView]:
    stamp = time.time() if now is None else now
    name = rules.check_domain(domain) if domain else None
    return [view(k, stamp) for k in store.list_keys(db, name)]


@dataclass(frozen=True, slots=True)
class Rotation:
    """``new``: the record to publish; ``signing``: the key that signs now (the old
    one while the new one is pending, else the new one); ``retired``: the old one, when
    it stopped signing (``at_once``)."""

    new: DnsRecord
    state: str  # the new key's: "pending", or "active" (at once)
    signing: KeyView
    retired: KeyView | None


def rotate(
    db: Connection, domain: str, *, selector: str | None = None, algorithm: str | None = None,
    at_once: bool = False, now: float | None = None,
) -> Rotation:
    """A new key (same algorithm unless ``algorithm``), pending: the active key signs on
    until :func:`activate` (which checks DNS for the new record first) — a key that
    signed before receivers could find its record would fail every signature. With
    ``at_once`` the new key signs now and the old one is retired (for a key that must
    stop signing: leaked, too weak); a retired key stays listed for
    :data:`relay.dkim.RETIRED_KEEP_DAYS` days."""
    stamp = time.time() if now is None else now
    name = rules.check_domain(domain)
    current = store.active_key(db, name)
    chosen_algorithm = rules.check_algorithm(algorithm) if algorithm else (current.algorithm if current else rules.DEFAULT_ALGORITHM)
    chosen = rules.check_selector(selector) if selector else rules.default_selector(stamp, store.selectors(db, name))
    pair = rules.generate(chosen_algorithm)
    if at_once:
        new, retired = store.rotate_key(db, name, chosen, pair, now=stamp)
        return Rotation(record_of(new), "active", view(new, stamp), view(retired, stamp))
    new, signing = store.stage_key(db, name, chosen, pair, now=stamp)
    return Rotation(record_of(new), "pending", view(signing, stamp), None)


@dataclass(frozen=True, slots=True)
class Activation:
    active: KeyView
    retired: KeyView | None
    check: KeyCheck | None  # the DNS check that allowed it (None: forced)


def activate(
    db: Connection, domain: str, *, selector: str | None = None, force: bool = False, resolver: str | None = None,
    timeout: float = 5.0, now: float | None = None,
) -> Activation:
    """The pending key of ``domain`` signs from now on, the active one is retired —
    once DNS publishes the pending key's record (asked through ``resolver``, as
    :func:`check`); ``force`` skips that look."""
    from relay.store.errors import InvalidInput, NotFound

    stamp = time.time() if now is None else now
    name = rules.check_domain(domain)
    waiting = store.pending_key(db, name)
    if waiting is None:
        raise NotFound(f"no DKIM key of {name} waits to be activated — `smtpplus dkim rotate {name}` stages one")
    if selector is not None and waiting.selector != rules.check_selector(selector):
        raise NotFound(f"DKIM key {selector} of {name} is not the one waiting — that is {waiting.selector}")
    checked = None
    if not force:
        server = choose_resolver(resolver, get_setting(db, Keys.DNS_RESOLVER))
        checked = _check_one(view(waiting, stamp), server, timeout)
        if not checked.ok:
            raise InvalidInput(f"not activated: {checked.message} (or --force to activate it without this check)")
    new, retired = store.activate_key(db, name, waiting.selector, public_key=waiting.public_key, now=stamp)
    return Activation(view(new, stamp), None if retired is None else view(retired, stamp), checked)


def remove(db: Connection, domain: str, selector: str, *, now: float | None = None) -> KeyView:
    stamp = time.time() if now is None else now
    return view(store.remove_key(db, rules.check_domain(domain), rules.check_selector(selector), now=stamp), stamp)


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """One key's record in DNS. ``outcome``: ``published`` (the record matches),
    ``missing`` (no DKIM record at the name), ``mismatch`` (a record with another key),
    ``timeout`` or ``error`` (the lookup failed)."""

    key: KeyView
    outcome: str
    resolver: str
    found: tuple[str, ...]
    message: str

    @property
    def ok(self) -> bool:
        return self.outcome == "published"

    def as_dict(self) -> dict[str, object]:
        return {
            "domain": self.key.domain, "selector": self.key.selector, "state": self.key.state,
            "name": self.key.record.name, "expected": self.key.record.value, "outcome": self.outcome,
            "published": self.ok, "found": list(self.found), "resolver": self.resolver, "message": self.message,
        }


def check(
    db: Connection, domain: str, *, resolver: str | None = None, timeout: float = 5.0, now: float | None = None
) -> list[KeyCheck]:
    """Look up every key of ``domain`` still to be published (active, pending and
    retired; not removable ones) through ``resolver``, else the store setting, else
    ``$SMTPPLUS_DNS_RESOLVER``, else the system's."""
    stamp = time.time() if now is None else now
    name = rules.check_domain(domain)
    wanted = [k for k in keys(db, name, now=stamp) if k.state != "removable"]
    if not wanted:
        from relay.store.errors import NotFound

        raise NotFound(f"{name} has no DKIM key to check — add one with `smtpplus dkim add {name}`")
    server = choose_resolver(resolver, get_setting(db, Keys.DNS_RESOLVER))
    return [_check_one(key, server, timeout) for key in wanted]


def _check_one(key: KeyView, server: object, timeout: float) -> KeyCheck:
    answer = rules.lookup_txt(key.record.name, server, timeout)
    record = key.record
    if answer.problem in ("timeout", "error"):
        return KeyCheck(key, answer.problem, answer.resolver, (), f"{record.name}: {answer.message}")
    ours = tuple(v for v in answer.values if rules.parse_tags(v).get("p") is not None)
    algorithm = key.algorithm
    public = record.value.rpartition("p=")[2]
    if any(rules.record_matches(v, algorithm, public) for v in ours):
        return KeyCheck(key, "published", answer.resolver, ours, f"{record.name}: published via {answer.resolver}")
    if ours:
        return KeyCheck(
            key, "mismatch", answer.resolver, ours,
            f"{record.name}: the published record holds another key — publish {record.value!r} instead",
        )
    return KeyCheck(
        key, "missing", answer.resolver, (),
        f"{record.name}: no DKIM record found — publish TXT {record.value!r} there",
    )
