"""Password checks for SMTP AUTH, and the limits on failed attempts.

``PasswordChecker(store, concurrency=2)``
    ``await check(username, password) -> AuthOutcome``. Reads the user's
    :class:`~relay.store.directory.AuthRecord` (one store call), then either answers
    from the cache or runs a full argon2 verification in a small thread pool (at most
    ``concurrency`` at once, never on the event loop). An unknown user is verified
    against :data:`relay.passwords.DUMMY_HASH`, an inactive user against its own hash:
    every failure costs one full verification, the same as a wrong password.

    The cache holds, per username, the user's row id, ``auth_version`` and password
    hash it was verified against, and an HMAC (key random per process) of the
    password; a hit needs all three to equal the *current* record from the store, so
    a reset, edit, (de)activation or deletion made by any process invalidates it —
    also when the user is deleted and created again under the same name (its
    ``auth_version`` starts over and can reach the cached one; its hash cannot).
    A miss or mismatch runs a full verification; identical checks (same hash, same
    password) arriving while one runs share it. A name that cannot be a username
    (see :func:`relay.policy.validate_username`, e.g. not UTF-8) is never looked up
    and costs a dummy verification, like an unknown user.
    ``full_verifications`` and ``cache_hits`` count both paths (tests count, never time).

    ``await current_record(username, max_age)`` returns the user's record, re-read when
    older than ``max_age`` seconds, shared across connections (MAIL uses it so a
    deactivation stops an open session within about a second).

``FailureLimiter(per_client, per_user, window)``
    Failed AUTH attempts across connections, in a sliding window, per client address
    (:func:`address_key`: an IPv4 address, an IPv6 /64) and per (username, client
    address) — never per username alone, so a guesser at another address cannot lock
    the real user out. ``blocked(client, username)`` names the limit hit, or None;
    ``failures(client)`` is what :func:`throttle_delay` slows the client by.
    Distinct guesses still being verified count as failures until they end
    (``attempt(client, username, guess)`` is a context manager around the check;
    ``guess`` identifies the credentials): otherwise a client opening many
    connections at once gets as many guesses as connections. Identical credentials
    on many connections (a client's burst of logins) are one guess.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from relay import passwords, policy
from relay.reasons import Reason
from relay.store import AsyncStore
from relay.store.directory import AuthRecord, auth_record

CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    ok: bool
    reason: Reason
    record: AuthRecord | None = None


class PasswordChecker:
    def __init__(self, store: AsyncStore, *, concurrency: int = 2) -> None:
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="smtpplus-argon2")
        self._key = secrets.token_bytes(32)
        # username → (user id, auth_version, password hash, HMAC of the password)
        self._verified: OrderedDict[str, tuple[int, int, str, bytes]] = OrderedDict()
        self._records: dict[str, tuple[float, AuthRecord | None]] = {}
        self._running: dict[tuple[str, bytes], asyncio.Future[bool]] = {}
        self._reading: dict[str, asyncio.Future[AuthRecord | None]] = {}
        self.full_verifications = 0
        self.cache_hits = 0

    def _digest(self, username: str, password: bytes) -> bytes:
        return hmac.new(self._key, username.encode("utf-8", "surrogateescape") + b"\0" + password, hashlib.sha256).digest()

    async def check(self, username: str, password: bytes) -> AuthOutcome:
        record = await self._read_record(username) if could_be_username(username) else None
        digest = self._digest(username, password)
        if record is not None and record.active:
            cached = self._verified.get(username)
            if cached is not None and cached[:3] == _stamp(record) and hmac.compare_digest(cached[3], digest):
                self.cache_hits += 1
                self._verified.move_to_end(username)
                return AuthOutcome(True, Reason.AUTH_OK, record)
        password_hash = record.password_hash if record is not None else passwords.DUMMY_HASH
        matches = await self._verify_once((password_hash, digest), password_hash, password)
        if record is None:
            return AuthOutcome(False, Reason.AUTH_UNKNOWN_USER)
        if not matches:
            return AuthOutcome(False, Reason.AUTH_BAD_CREDENTIALS, record)
        if not record.active:
            return AuthOutcome(False, Reason.AUTH_INACTIVE_USER, record)
        self._remember(username, record, digest)
        return AuthOutcome(True, Reason.AUTH_OK, record)

    async def dummy_verification(self, password: bytes) -> None:
        """Spend what a real check costs (for refusals that must not be cheaper)."""
        await self._verify(passwords.DUMMY_HASH, password)

    async def current_record(self, username: str, max_age: float = 1.0) -> AuthRecord | None:
        seen = self._records.get(username)
        if seen is not None and time.monotonic() - seen[0] < max_age:
            return seen[1]
        return await self._read_record(username)

    async def _read_record(self, username: str) -> AuthRecord | None:
        """The user's record from the store; checks arriving while a read for the same
        user is under way share it (one thread hop for a burst of connections)."""
        reading = self._reading.get(username)
        if reading is None:
            reading = asyncio.ensure_future(self._store.run(auth_record, username))
            self._reading[username] = reading
            reading.add_done_callback(lambda _: self._reading.pop(username, None))
        record = await asyncio.shield(reading)
        self._records[username] = (time.monotonic(), record)
        if len(self._records) > CACHE_SIZE:
            self._records.pop(next(iter(self._records)))
        return record

    async def _verify_once(self, key: tuple[str, bytes], password_hash: str, password: bytes) -> bool:
        """One verification for identical checks that arrive together (a client opening
        32 connections at once costs one argon2 run, not 32). The key is the hash and
        the password's HMAC: exactly what the outcome depends on."""
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(self._verify(password_hash, password))
            self._running[key] = running
            running.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(running)

    async def _verify(self, password_hash: str, password: bytes) -> bool:
        self.full_verifications += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _verify_bytes, password_hash, password)

    def _remember(self, username: str, record: AuthRecord, digest: bytes) -> None:
        self._verified[username] = (*_stamp(record), digest)
        self._verified.move_to_end(username)
        while len(self._verified) > CACHE_SIZE:
            self._verified.popitem(last=False)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def address_key(client: str) -> str:
    """The unit limits apply to: an IPv4 address, or an IPv6 /64 (one host's or one
    site's share of addresses; a client rotating through its /64 is still one client).
    IPv4-mapped IPv6 counts as the IPv4 address. Anything unparsable is its own key."""
    try:
        address = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class EventBudget:
    """How many events a client address may add to the store: a token bucket per
    address (``burst`` at once, then one per ``interval`` seconds). What it refuses is
    counted per address; :meth:`take_dropped` hands the count to the next event that
    address may store, so the operator still sees that something was left out.
    At most ``CACHE_SIZE`` addresses are remembered (oldest first out)."""

    def __init__(self, burst: int = 60, interval: float = 10.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (tokens, at)
        self._dropped: Counter[str] = Counter()
        self.allowed = 0
        self.refused = 0

    def allow(self, client: str) -> bool:
        key = address_key(client)
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) / self.interval)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
            self.allowed += 1
        else:
            self.refused += 1
            self._dropped[key] += 1
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > CACHE_SIZE:
            old, _ = self._buckets.popitem(last=False)
            self._dropped.pop(old, None)
        return ok

    def take_dropped(self, client: str) -> int:
        return self._dropped.pop(address_key(client), 0)


AUTH_DELAY_CAP = 5.0  # seconds: the longest a failure reply is held back


def throttle_delay(failures: int, free: int, first: float, cap: float = AUTH_DELAY_CAP) -> float:
    """How long the reply to a client's ``failures``-th failure waits: nothing for the
    first ``free`` (a mistyped password), then ``first``, doubling, at most ``cap``
    (never over :data:`AUTH_DELAY_CAP`)."""
    if failures <= free or first <= 0:
        return 0.0
    return min(first * 2.0 ** min(failures - free - 1, 32), cap, AUTH_DELAY_CAP)


def _guesses(table: dict[str, Counter[bytes]], key: str) -> int:
    pending = table.get(key)
    return len(pending) if pending else 0


def _pair(username: str, client_key: str) -> str:
    return f"{client_key}\0{username}"


def _stamp(record: AuthRecord) -> tuple[int, int, str]:
    """What a cached success is bound to: this row, this version, this hash."""
    return (record.user_id, record.auth_version, record.password_hash)


def could_be_username(name: str) -> bool:
    """False for a login no user can have (every username passed
    :func:`relay.policy.validate_username`): such names are never looked up, so a
    client's bytes that are not even UTF-8 cannot reach the store."""
    try:
        return policy.validate_username(name) == name
    except policy.PolicyError:
        return False


def _verify_bytes(password_hash: str, password: bytes) -> bool:
    # argon2-cffi takes the password as bytes, exactly as the client sent it.
    return passwords.verify_password(password_hash, password)  # type: ignore[arg-type]


class FailureLimiter:
    """Sliding-window counts of failed AUTH per client address and per username."""

    def __init__(
        self,
        per_client: int,
        per_user: int,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_client = per_client
        self.per_user = per_user
        self.window = window
        self._clock = clock
        self._by_client: dict[str, deque[float]] = {}
        self._by_user: dict[str, deque[float]] = {}
        # key → {guess: attempts under way}
        self._pending_client: dict[str, Counter[bytes]] = {}
        self._pending_user: dict[str, Counter[bytes]] = {}

    def _count(self, table: dict[str, deque[float]], key: str) -> int:
        stamps = table.get(key)
        if not stamps:
            return 0
        horizon = self._clock() - self.window
        while stamps and stamps[0] < horizon:
            stamps.popleft()
        if not stamps:
            del table[key]
            return 0
        return len(stamps)

    def blocked(self, client: str, username: str | None) -> str | None:
        """"client" or "user" when that limit is reached (attempts under way
        included), else None. "user" means this username from this client address."""
        client = address_key(client)
        if self.per_client > 0 and self._count(self._by_client, client) + _guesses(self._pending_client, client) >= self.per_client:
            return "client"
        if username and self.per_user > 0:
            pair = _pair(username, client)
            if self._count(self._by_user, pair) + _guesses(self._pending_user, pair) >= self.per_user:
                return "user"
        return None

    def failures(self, client: str) -> int:
        """Failures recorded for this client address within the window."""
        return self._count(self._by_client, address_key(client))

    @contextmanager
    def attempt(self, client: str, username: str | None, guess: bytes) -> Iterator[None]:
        """Counts a guess as a failure while it is being verified."""
        client = address_key(client)
        tables = [(self._pending_client, client)] + ([(self._pending_user, _pair(username, client))] if username else [])
        for table, key in tables:
            table.setdefault(key, Counter())[guess] += 1
        try:
            yield
        finally:
            for table, key in tables:
                pending = table[key]
                pending[guess] -= 1
                if pending[guess] <= 0:
                    del pending[guess]
                if not pending:
                    del table[key]

    def record(self, client: str, username: str | None) -> None:
        now = self._clock()
        client = address_key(client)
        self._add(self._by_client, client, now)
        if username:
            self._add(self._by_user, _pair(username, client), now)

    def _add(self, table: dict[str, deque[float]], key: str, now: float) -> None:
        stamps = table.get(key)
        if stamps is None:
            if len(table) >= CACHE_SIZE:
                # Drop the entry that was inserted first: memory stays bounded under a flood.
                table.pop(next(iter(table)))
            stamps = table[key] = deque()
        stamps.append(now)
        limit = max(self.per_client, self.per_user, 1) * 2
        while len(stamps) > limit:
            stamps.popleft()
