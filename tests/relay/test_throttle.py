"""Issue 11, item 3: throttle, don't lock. A guessing address is slowed (growing
delays, at most 5 s) and finally refused; the real user at another address is not.

The guesser binds its socket to 127.0.0.2, the real user connects from 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

from relay.auth import AUTH_DELAY_CAP, throttle_delay
from relay.config import RelayConfig
from relay.reasons import Reason
from tests.relay.support import PASSWORD, Raw, Seeded, events, relay_config, running_relay, settle


def test_the_throttle_grows_and_is_capped_at_5_seconds() -> None:
    cfg = RelayConfig()
    delays = [throttle_delay(n, cfg.auth_free_failures, cfg.auth_failure_delay, cfg.auth_failure_delay_max) for n in range(1, 11)]
    assert delays == [0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert throttle_delay(1000, 0, 1.0, cap=60.0) == AUTH_DELAY_CAP


async def _guess(port: int, tls_files: dict[str, Path], source: str, username: str, password: str) -> tuple[int, str]:
    raw = await Raw.connect(port, source=source)
    await raw.starttls(tls_files)
    try:
        return await raw.login(username, password)
    finally:
        await raw.close()


async def test_a_guesser_elsewhere_never_locks_the_real_user_out(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = relay_config(tmp_path, tls_files, auth_failures_per_client=12, auth_failures_per_user=5, auth_free_failures=2)
    async with running_relay(seeded.store_path, config) as relay:
        assert relay.context is not None
        port = relay.served[0]
        guesses = [await _guess(port, tls_files, "127.0.0.2", "alice", f"guess-{i}") for i in range(6)]
        # Five failures for alice from this address, then the pair is refused.
        assert [code for code, _ in guesses] == [535] * 5 + [421]
        assert guesses[-1][1].startswith("421 4.7.0 ")
        # The failures from 127.0.0.2 past the free ones were held back, growing.
        assert relay.context.counters["auth_delays"] == 3
        # The real user, from 127.0.0.1, is not locked out, and waits for nothing.
        assert (await _guess(port, tls_files, "127.0.0.1", "alice", PASSWORD["alice"]))[0] == 235
        # The guesser keeps going with other names until its address is refused.
        codes = [(await _guess(port, tls_files, "127.0.0.2", f"user{i}", "x"))[0] for i in range(10)]
        assert codes == [535] * 7 + [421] * 3  # 12 failures from the address in all
        assert (await _guess(port, tls_files, "127.0.0.2", "alice", PASSWORD["alice"]))[0] == 421
        assert (await _guess(port, tls_files, "127.0.0.1", "carol", PASSWORD["carol"]))[0] == 235
        await settle(relay)
    refused = events(seeded.store_path, reason=str(Reason.AUTH_TOO_MANY_FAILURES))
    assert {e.client for e in refused} == {"127.0.0.2"}
    assert any("user 'alice' from this client address" in e.detail for e in refused)
    assert any("this client address" in e.detail for e in refused)
