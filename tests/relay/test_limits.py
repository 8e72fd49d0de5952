"""Issue 11, item 1: error limits per connection and a store that a flood cannot grow.

Every test asserts counts, order and counters, never seconds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relay.auth import EventBudget, address_key
from relay.reasons import Reason
from relay.service import RelayService
from tests.relay.support import Raw, Seeded, b64, events, relay_config, rows, running_relay, settle
from tests.relay.test_replies import QUEUED, authed_raw

TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"


async def _replies_until_closed(raw: Raw) -> list[str]:
    texts: list[str] = []
    while True:
        try:
            _, text = await raw.reply(seconds=15)
        except ConnectionError:
            return texts
        texts.append(text)


@pytest.mark.parametrize("pipelined", [False, True], ids=["one-by-one", "pipelined"])
async def test_the_hard_error_limit_closes_with_421_after_bounded_delays(
    relay: RelayService, seeded: Seeded, tls_files: dict[str, Path], pipelined: bool
) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    await raw.command("EHLO client.test")
    if pipelined:
        await raw.send(b"".join(f"MAIL FROM:<x{i}@a.example>\r\n".encode() for i in range(30)))
        texts = await _replies_until_closed(raw)
    else:
        texts = []
        for i in range(30):
            try:
                texts.append((await raw.command(f"MAIL FROM:<x{i}@a.example>"))[1])
            except ConnectionError:
                break
    # 19 refusals, then the 20th error is answered 421 and the connection ends.
    assert texts == ["530 5.7.0 Authentication required"] * 19 + [TOO_MANY_ERRORS]
    await raw.close()
    await settle(relay)
    assert relay.context is not None
    counters = relay.context.counters
    assert counters["error_limit_closed"] == 1
    assert counters["error_delays"] == 9  # errors 11..19 wait (soft limit 10)
    assert counters["error_delay_ms"] <= 3000  # together at most 3 s
    [summary] = events(seeded.store_path, reason=str(Reason.PRE_AUTH_REFUSALS))
    assert summary.detail.startswith("20 refused before AUTH (mail-before-auth x20); 20 error replies; closed at the error limit; e.g. ")
    assert events(seeded.store_path, reason=str(Reason.TOO_MANY_ERRORS)) == []


async def test_a_queued_message_starts_the_error_count_over(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = relay_config(tmp_path, tls_files, soft_error_limit=1, hard_error_limit=3)
    async with running_relay(seeded.store_path, config) as relay:
        raw = await authed_raw(relay, tls_files)
        for _ in range(3):
            assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 503  # error 1, 2 (no MAIL yet)
            assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 503
            assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
            assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
            assert (await raw.command("DATA"))[0] == 354
            code, text = await raw.command(b"From: x@a.example\r\n\r\nhi\r\n.")
            assert code == 250 and QUEUED.match(text[4:]), text
        assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 503
        assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 503
        assert await raw.command("RCPT TO:<r@d.example>") == (421, TOO_MANY_ERRORS)
        assert await raw.closed()
        await settle(relay)
        # Authenticated: the limit's event is stored with the user on it.
        [event] = events(seeded.store_path, reason=str(Reason.TOO_MANY_ERRORS))
        assert event.username == "alice" and event.detail == "3 refused commands"


def _event_bytes(db: object) -> tuple[int, int]:
    row = db.execute(  # type: ignore[attr-defined]
        "SELECT count(*), coalesce(sum(length(kind) + length(reason) + coalesce(length(username), 0)"
        " + coalesce(length(client), 0) + length(detail) + 40), 0) FROM events WHERE kind IN ('refused', 'auth')"
    ).fetchone()
    return int(row[0]), int(row[1])


async def test_a_pre_auth_flood_adds_one_small_event_per_connection(
    relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]
) -> None:
    """Before the fix each refused MAIL (and each AUTH before STARTTLS) was an event of
    ~540 bytes: one connection wrote 168,526 of them in 20 s."""
    before = rows(seeded.store_path, _event_bytes)
    flood = b"".join(
        b"MAIL FROM:<\x1b]52;c;AAAA\x07" + b"x" * 250 + b"@a.example>\r\n" + b"AUTH PLAIN " + b64("\0alice\0guess").encode() + b"\r\n"
        for _ in range(15)
    )

    async def one_connection() -> list[str]:
        raw = await Raw.connect(relay.served[0])
        await raw.command("EHLO client.test")
        await raw.send(flood)
        texts = await _replies_until_closed(raw)
        await raw.close()
        return texts

    connections = 6
    results = await asyncio.gather(*(one_connection() for _ in range(connections)))
    for texts in results:
        assert len(texts) == 20 and texts[-1] == TOO_MANY_ERRORS
    await settle(relay)
    count, size = rows(seeded.store_path, _event_bytes)
    assert count - before[0] == connections  # one summary per connection, nothing else
    assert size - before[1] <= connections * 600
    for summary in events(seeded.store_path, reason=str(Reason.PRE_AUTH_REFUSALS)):
        assert "mail-before-auth x10" in summary.detail and "auth-needs-tls x10" in summary.detail
        assert "\x1b" not in summary.detail and "\x07" not in summary.detail and "]52;" in summary.detail  # escaped
        assert len(summary.detail) <= 300


async def test_events_from_one_address_are_rate_limited(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """Connections refused at the per-client cap each made an event: a connect loop
    wrote without bound. Now the address's event budget caps them, and the next event
    stored says how many were left out."""
    config = relay_config(tmp_path, tls_files, max_connections_per_client=1)
    async with running_relay(seeded.store_path, config) as relay:
        assert relay.context is not None
        relay.context.events = EventBudget(burst=5, interval=3600.0)
        holder = await Raw.connect(relay.served[0])
        refused = 0
        for _ in range(40):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.served[0])
            line = await asyncio.wait_for(reader.readline(), 10)
            refused += line.startswith(b"421 4.7.0 Too many connections")
            writer.close()
        assert refused == 40
        await settle(relay)
        assert len(events(seeded.store_path, reason=str(Reason.CONNECTION_LIMIT))) == 5
        assert relay.context.counters["events_suppressed"] == 35
        await holder.close()


def test_the_event_budget_refills_and_reports_what_it_dropped() -> None:
    now = [0.0]
    budget = EventBudget(burst=2, interval=10.0, clock=lambda: now[0])
    assert [budget.allow("192.0.2.1") for _ in range(4)] == [True, True, False, False]
    assert budget.allow("192.0.2.2")  # another address has its own budget
    now[0] = 10.0
    assert budget.allow("192.0.2.1") and budget.take_dropped("192.0.2.1") == 2
    assert budget.take_dropped("192.0.2.1") == 0
    # An IPv6 client is its /64; IPv4-mapped is the IPv4 address.
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
