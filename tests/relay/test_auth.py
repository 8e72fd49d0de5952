"""Password checks: equal cost by counting, a cache any process can invalidate, limits."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from relay import passwords
from relay.auth import FailureLimiter
from relay.reasons import Reason
from relay.service import RelayService
from relay.store import directory
from tests.conftest import ROOT
from tests.relay.support import (
    PASSWORD,
    Raw,
    Seeded,
    b64,
    events,
    relay_config,
    rows,
    running_relay,
    settle,
)


async def attempt(relay: RelayService, tls_files: dict[str, Path], user: str, password: str) -> int:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    code, _ = await raw.login(user, password)
    await raw.close()
    return code


async def test_every_failure_costs_one_full_verification(relay: RelayService, tls_files: dict[str, Path]) -> None:
    checker = relay.checker
    assert checker is not None
    counts = []
    for user, password in (("nobody", "x"), ("alice", "wrong"), ("bob", PASSWORD["bob"]), ("bob", "wrong")):
        before = checker.full_verifications
        assert await attempt(relay, tls_files, user, password) == 535
        counts.append(checker.full_verifications - before)
    assert counts == [1, 1, 1, 1]


async def test_success_is_cached_and_a_mismatch_still_verifies(relay: RelayService, tls_files: dict[str, Path]) -> None:
    checker = relay.checker
    assert checker is not None
    assert await attempt(relay, tls_files, "alice", PASSWORD["alice"]) == 235
    assert (checker.full_verifications, checker.cache_hits) == (1, 0)
    assert await attempt(relay, tls_files, "alice", PASSWORD["alice"]) == 235
    assert (checker.full_verifications, checker.cache_hits) == (1, 1)
    # A wrong password for a cached user is a miss: full verification, same cost as always.
    assert await attempt(relay, tls_files, "alice", "wrong") == 535
    assert (checker.full_verifications, checker.cache_hits) == (2, 1)


def _in_another_process(store_path: Path, code: str) -> None:
    script = (
        "import sys\n"
        "from relay.store import open_store, directory\n"
        "from relay import passwords\n"
        "db = open_store(sys.argv[1])\n" + code + "\ndb.close()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(store_path)], check=True, cwd=ROOT, timeout=60)


async def test_password_reset_in_another_process_invalidates_the_cache(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    checker = relay.checker
    assert checker is not None
    assert await attempt(relay, tls_files, "alice", PASSWORD["alice"]) == 235
    _in_another_process(seeded.store_path, "directory.set_password_hash(db, 'alice', passwords.hash_password('brand-new-password'))")
    before = checker.full_verifications
    assert await attempt(relay, tls_files, "alice", PASSWORD["alice"]) == 535
    assert checker.full_verifications == before + 1
    assert await attempt(relay, tls_files, "alice", "brand-new-password") == 235


async def test_deactivation_in_another_process_invalidates_the_cache(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    assert await attempt(relay, tls_files, "alice", PASSWORD["alice"]) == 235
    _in_another_process(seeded.store_path, "directory.set_active(db, 'alice', False)")
    assert await attempt(relay, tls_files, "alice", PASSWORD["alice"]) == 535
    await settle(relay)
    assert events(seeded.store_path, reason=str(Reason.AUTH_INACTIVE_USER))[-1].username == "alice"


async def test_deletion_invalidates_the_cache(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    assert await attempt(relay, tls_files, "alice", PASSWORD["alice"]) == 235
    rows(seeded.store_path, directory.delete_user, "alice")  # another connection
    assert await attempt(relay, tls_files, "alice", PASSWORD["alice"]) == 535


async def test_open_session_loses_its_rights_when_the_user_is_deactivated(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert (await raw.login("alice"))[0] == 235
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
    await raw.command("RSET")
    rows(seeded.store_path, directory.set_active, "alice", False)
    # The record is re-read at most a second later: MAIL is refused from then on.
    for _ in range(100):  # up to ~10 s: generous for a loaded machine
        code, _ = await raw.command("MAIL FROM:<x@a.example>")
        if code != 250:
            break
        await raw.command("RSET")
        await asyncio.sleep(0.1)
    assert code == 530
    await raw.close()


async def test_failures_are_limited_per_client_across_connections(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = relay_config(tmp_path, tls_files, auth_failures_per_client=4, auth_failures_per_user=1000)
    async with running_relay(seeded.store_path, config) as relay:
        for _ in range(2):
            raw = await Raw.connect(relay.served[0])
            await raw.starttls(tls_files)
            assert (await raw.login("alice", "bad"))[0] == 535
            assert (await raw.login("carol", "bad"))[0] == 535
            await raw.close()
        raw = await Raw.connect(relay.served[1])
        await raw.starttls(tls_files)
        before = relay.checker.full_verifications  # type: ignore[union-attr]
        code, text = await raw.login("carol")  # even the right password: this client is blocked
        assert code == 421 and text.startswith("421 4.7.0 ")
        assert relay.checker.full_verifications == before  # type: ignore[union-attr]
        assert await raw.closed()
        await settle(relay)
    [event] = events(seeded.store_path, reason=str(Reason.AUTH_TOO_MANY_FAILURES))
    assert "client address" in event.detail and event.client == "127.0.0.1"


async def test_failures_are_limited_per_username_across_connections(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = relay_config(tmp_path, tls_files, auth_failures_per_client=1000, auth_failures_per_user=2)
    async with running_relay(seeded.store_path, config) as relay:
        assert await attempt(relay, tls_files, "alice", "bad") == 535
        assert await attempt(relay, tls_files, "alice", "bad") == 535
        assert await attempt(relay, tls_files, "alice", PASSWORD["alice"]) == 421
        assert await attempt(relay, tls_files, "carol", PASSWORD["carol"]) == 235
        await settle(relay)
    [event] = events(seeded.store_path, reason=str(Reason.AUTH_TOO_MANY_FAILURES))
    assert "alice" in event.detail


def test_failure_limiter_window_slides() -> None:
    now = [0.0]
    limiter = FailureLimiter(per_client=2, per_user=3, window=60, clock=lambda: now[0])
    limiter.record("10.0.0.1", "alice")
    limiter.record("10.0.0.1", "alice")
    assert limiter.blocked("10.0.0.1", "carol") == "client"
    assert limiter.blocked("10.0.0.2", "alice") is None
    now[0] = 61.0
    assert limiter.blocked("10.0.0.1", "alice") is None


def test_username_limits_are_per_client_address() -> None:
    """20 wrong passwords for a username locked it from every address (issue 11): now
    the limit is per (username, address), IPv6 counted per /64."""
    limiter = FailureLimiter(per_client=100, per_user=3, window=60)
    for _ in range(3):
        limiter.record("2001:db8:0:1::5", "alice")
    assert limiter.blocked("2001:db8:0:1:ffff::9", "alice") == "user"  # same /64
    assert limiter.blocked("2001:db8:0:2::5", "alice") is None
    assert limiter.blocked("10.0.0.3", "alice") is None
    assert limiter.blocked("2001:db8:0:1::5", "carol") is None


def test_dummy_hash_is_a_real_argon2id_hash() -> None:
    assert passwords.DUMMY_HASH.startswith("$argon2id$")
    assert passwords.verify_password(passwords.DUMMY_HASH, "anything") is False


async def test_a_burst_of_identical_logins_shares_one_verification(relay: RelayService, tls_files: dict[str, Path]) -> None:
    checker = relay.checker
    assert checker is not None
    raws = [await Raw.connect(relay.served[i % 2]) for i in range(6)]
    for raw in raws:
        await raw.starttls(tls_files)
        await raw.command("EHLO client.test")
    token = b64(f"\0alice\0{PASSWORD['alice']}")
    for raw in raws:  # all six AUTH lines leave before the first verification can end
        await raw.send(f"AUTH PLAIN {token}\r\n".encode())
    codes = [(await raw.reply())[0] for raw in raws]
    assert codes == [235] * 6
    assert checker.full_verifications <= 2  # not one per connection
    for raw in raws:
        await raw.close()
