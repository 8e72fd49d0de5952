"""A hostile client and a careful auditor: the relay's defects found by attacking it.

Every test failed before its fix, except those whose docstring says "confirmed
absent" (attacks that found nothing, kept as guards). Real sockets on 127.0.0.1, real
TLS, raw byte-exact streams where aiosmtplib would clean the input up."""

from __future__ import annotations

import asyncio
import base64
import socket
from pathlib import Path

from relay.message import received_header
from relay.reasons import Reason
from relay.service import RelayService
from relay.store import directory
from tests.relay.support import (
    PASSWORD,
    Raw,
    Seeded,
    b64,
    events,
    light_hash,
    relay_config,
    rows,
    running_relay,
    settle,
    split_trace,
    stored_body,
    stored_messages,
)
from tests.relay.test_replies import QUEUED, authed_raw


async def _wait_for(condition: object, seconds: float = 10.0) -> bool:
    """Poll ``condition()`` until it holds (wide bound; no timing is asserted)."""
    for _ in range(int(seconds / 0.05)):
        if condition():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


async def _ended(raw: Raw, seconds: float = 10.0) -> bool:
    """True once the server has ended the connection (whatever it said first)."""
    try:
        await asyncio.wait_for(raw.reader.read(), seconds)
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return True


# -- AUTH ---------------------------------------------------------------------


async def test_a_recreated_user_does_not_inherit_the_cached_password(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await authed_raw(relay, tls_files)  # alice's password is now cached
    await raw.close()
    cached_version = rows(seeded.store_path, directory.auth_version, "alice")

    def recreate(db: object) -> None:
        # Deleted, created again under the same name with a new password, and brought
        # (by ordinary edits) to the auth_version the cache remembers.
        directory.delete_user(db, "alice")  # type: ignore[arg-type]
        directory.create_user(
            db,  # type: ignore[arg-type]
            list_name="news", username="alice", password_hash=light_hash("a-brand-new-password"), domains=["a.example"],
        )
        while directory.auth_version(db, "alice") < cached_version - 1:  # type: ignore[arg-type]
            directory.set_active(db, "alice", False)  # type: ignore[arg-type]
        directory.set_active(db, "alice", True)  # type: ignore[arg-type]

    rows(seeded.store_path, recreate)
    assert rows(seeded.store_path, directory.auth_version, "alice") == cached_version
    checker = relay.checker
    assert checker is not None
    before = checker.full_verifications
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert await raw.login("alice", PASSWORD["alice"]) == (535, "535 5.7.8 Authentication credentials invalid")
    assert checker.full_verifications == before + 1  # a miss: fully verified, and refused
    assert (await raw.login("alice", "a-brand-new-password"))[0] == 235
    await raw.close()


async def test_a_login_that_is_not_utf8_is_an_ordinary_failure(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    checker = relay.checker
    assert checker is not None
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    await raw.command("EHLO client.test")
    token = base64.b64encode(b"\0al\xffice\0whatever").decode()
    assert await raw.command(f"AUTH PLAIN {token}") == (535, "535 5.7.8 Authentication credentials invalid")
    assert await raw.command("AUTH LOGIN " + base64.b64encode(b"\xc3(").decode()) == (334, "334 UGFzc3dvcmQ6")
    assert (await raw.command(b64("whatever")))[0] == 535
    code, text = await raw.command(f"AUTH PLAIN {token}")  # failures count: the 3rd closes
    assert code == 421 and text.startswith("421 4.7.0 ")
    assert await raw.closed()
    assert checker.full_verifications == 3  # each costs what an unknown user costs
    await settle(relay)
    assert len(events(seeded.store_path, reason=str(Reason.AUTH_UNKNOWN_USER))) == 3
    assert events(seeded.store_path, reason=str(Reason.INTERNAL_ERROR)) == []


async def test_no_way_around_auth(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """Confirmed absent: RSET after a failure, HELO, AUTH twice or after MAIL, ``=``
    and ``*`` responses, base64 garbage, pipelining, and AUTH done before STARTTLS."""
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files, allow_plain_auth=True)) as relay:
        raw = await Raw.connect(relay.served[0])
        assert (await raw.command("HELO client.test"))[0] == 250  # (AUTH after HELO is allowed: see tests/interop)
        assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 530
        assert (await raw.login("alice", "wrong"))[0] == 535
        assert (await raw.command("RSET"))[0] == 250
        assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 530
        assert (await raw.command("AUTH PLAIN ="))[0] == 501
        assert await raw.command("AUTH PLAIN") == (334, "334 ")
        assert (await raw.command("*"))[0] == 501
        assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 530
        await raw.close()

        raw = await Raw.connect(relay.served[0])
        await raw.command("EHLO client.test")
        # A failed AUTH with a whole transaction pipelined behind it.
        await raw.send(
            f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + 'wrong')}\r\nMAIL FROM:<x@a.example>\r\n"
            "RCPT TO:<r@d.example>\r\nDATA\r\nFrom: x@a.example\r\n\r\nhi\r\n.\r\n".encode()
        )
        # The refused DATA's text is read as (unknown) commands, never as a message.
        assert [(await raw.reply())[0] for _ in range(8)] == [535, 530, 530, 530, 500, 501, 500, 500]  # the empty line: 501 5.5.4 bad syntax
        assert (await raw.command("AUTH PLAIN !!!!"))[0] == 501  # base64 garbage
        await raw.close()

        raw = await Raw.connect(relay.served[0])
        assert (await raw.login("alice"))[0] == 235  # plain AUTH (allowed here) ...
        assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
        assert (await raw.command(f"AUTH PLAIN {b64(chr(0) + 'carol' + chr(0) + PASSWORD['carol'])}"))[0] == 503
        await raw.command("RSET")
        await raw.starttls(tls_files)  # ... is forgotten with everything else (RFC 3207 4.2)
        await raw.command("EHLO client.test")
        assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 530
        await raw.close()
    assert stored_messages(seeded.store_path) == []


# -- headers ------------------------------------------------------------------


async def test_eight_bit_header_text_is_queued_not_a_temporary_failure(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await authed_raw(relay, tls_files)
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
    assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
    assert (await raw.command("DATA"))[0] == 354
    # Latin-1 straight from an old mailer: not UTF-8. It used to make the store
    # refuse the row, so the client got 451 and retried for days.
    code, text = await raw.command(b"From: x@a.example\r\nSubject: caf\xe9 cr\xe8me\r\n\r\nhi\r\n.")
    assert code == 250, text
    await raw.close()
    queue_id = QUEUED.match(text[4:]).group(1)  # type: ignore[union-attr]
    [row] = stored_messages(seeded.store_path)
    assert row["subject"] == "caf\ufffd cr\ufffdme"
    assert b"Subject: caf\xe9 cr\xe8me\r\n" in stored_body(seeded.store_path, queue_id)  # the message keeps its bytes


async def test_a_from_in_the_body_after_a_bare_lf_blank_line_does_not_count(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    """Confirmed absent: header and body are split after bare LF becomes CRLF, exactly
    as the message is stored and later read."""
    raw = await authed_raw(relay, tls_files)
    replies = []
    for data in (b"Subject: s\n\nFrom: x@a.example\r\n\r\nhi\r\n.", b"From: x@a.example\r\nSubject: s\n\nFrom: evil@evil.example\r\n."):
        assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
        assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
        assert (await raw.command("DATA"))[0] == 354
        replies.append(await raw.command(data))
    await raw.close()
    assert replies[0] == (550, "550 5.6.0 Message has no From: header")
    assert replies[1][0] == 250
    queue_id = QUEUED.match(replies[1][1][4:]).group(1)  # type: ignore[union-attr]
    assert split_trace(stored_body(seeded.store_path, queue_id))[2] == (
        b"From: x@a.example\r\nSubject: s\r\n\r\nFrom: evil@evil.example\r\n"
    )


def test_the_received_header_stays_one_safe_header_whatever_the_ehlo_name() -> None:
    """Confirmed absent: CR/LF, control characters and very long names are defused;
    the header is folded only where the relay folds it (CRLF + TAB)."""
    for name in ("a" * 600, "x\r\nX-Evil: 1", "x\rX-Evil: 1", "h\x00\x1b[31m;(by evil)", "\u00fcn\u00ef.example", ""):
        header = received_header(name, "127.0.0.1", "relay.test", "ESMTPSA", "ABCDEFGHIJKL", rdns="h\r\nX: 1", user="a\nb")
        assert header.endswith(b"\r\n")
        first, *rest = header.removesuffix(b"\r\n").split(b"\r\n")
        assert first.startswith(b"Received: from ") and all(line.startswith(b"\t") for line in rest), header
        for line in [first, *rest]:
            assert len(line) <= 998 and all(32 <= byte < 127 for byte in line.lstrip(b"\t")), header
        assert b"\tby relay.test (smtpplus) with ESMTPSA id ABCDEFGHIJKL;" in header


# -- replies and errors ---------------------------------------------------------


async def test_replies_never_carry_control_characters(relay: RelayService, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    # aiosmtpd quotes an unknown command back: a bare CR or an escape sequence in it
    # would reach the client's terminal or log as is.
    await raw.send(b"FOO\rBAR\r\n\x1b[2JX\r\n")
    first = await asyncio.wait_for(raw.reader.readline(), 5)
    second = await asyncio.wait_for(raw.reader.readline(), 5)
    assert first == b'500 5.5.2 Error: command "FOO?BAR" not recognized\r\n'
    assert second == b'500 5.5.2 Error: command "?[2JX" not recognized\r\n'
    await raw.close()


async def test_an_internal_error_in_data_ends_the_transaction(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await authed_raw(relay, tls_files)
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
    assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
    assert (await raw.command("DATA"))[0] == 354
    assert relay._reads is not None
    await relay._reads.close()  # the user's record can no longer be read
    relay.checker._records.clear()  # type: ignore[union-attr]  # (so DATA must read it)
    assert await raw.command(b"From: x@a.example\r\n\r\nhi\r\n.") == (451, "451 4.3.0 Internal error, try again later")
    # Nothing of that envelope is left for a second try.
    assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 503
    assert (await raw.command("DATA"))[0] == 503
    await raw.close()
    assert stored_messages(seeded.store_path) == []


# -- slow clients ---------------------------------------------------------------


async def test_idle_and_trickling_clients_time_out_with_421(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files, session_timeout=0.5)) as relay:
        idle = await Raw.connect(relay.served[0])
        trickle = await Raw.connect(relay.served[1])
        for _ in range(10):  # a partial line, a byte at a time: no complete command
            try:
                await trickle.send(b"N")
            except ConnectionError:
                break
            await asyncio.sleep(0.15)
        assert await _ended(trickle)
        assert (await idle.reply())[1] == "421 4.4.2 Timeout, closing connection"
        assert await idle.closed()
        await idle.close()
        await trickle.close()
        await settle(relay)
    assert len(events(seeded.store_path, reason=str(Reason.SESSION_TIMEOUT))) == 2


async def test_each_command_moves_the_idle_timeout(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """One timer per session, moved by every command: commands more often than the
    timeout keep the session past several timeouts' worth of time; then silence ends it."""
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files, session_timeout=1.5)) as relay:
        raw = await Raw.connect(relay.served[0])
        for _ in range(8):  # 8 x 0.5 s: well past 1.5 s in all
            assert (await raw.command("NOOP"))[0] == 250
            await asyncio.sleep(0.5)
        assert (await raw.reply(seconds=30))[1] == "421 4.4.2 Timeout, closing connection"
        assert await _ended(raw)
        await raw.close()
        await settle(relay)
    assert len(events(seeded.store_path, reason=str(Reason.SESSION_TIMEOUT))) == 1


async def test_a_client_that_never_reads_cannot_pin_a_connection_slot(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files, session_timeout=0.5)) as relay:
        tracker = relay.context.tracker  # type: ignore[union-attr]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up sooner
        sock.connect(("127.0.0.1", relay.served[0]))
        _, writer = await asyncio.open_connection(sock=sock)
        # Megabytes of replies the client never reads: the relay's writes back up,
        # and close() alone would wait for them forever.
        writer.write(b"EHLO client.test\r\n" * 40_000)
        assert await _wait_for(lambda: tracker.sessions)
        assert await _wait_for(lambda: not tracker.sessions), "the session still holds its slot"
        writer.transport.abort()


async def test_noop_keepalives_do_not_hold_a_session_forever(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = relay_config(tmp_path, tls_files, session_timeout=5.0, session_without_mail=0.5)
    async with running_relay(seeded.store_path, config) as relay:
        raw = await Raw.connect(relay.served[0])
        replies = []
        ended = False
        for _ in range(100):
            await asyncio.sleep(0.05)
            if raw.reader.at_eof() or len(raw.reader._buffer):  # type: ignore[attr-defined]
                # The server spoke first: read its 421 before writing anything (a
                # write to a closed socket draws a reset that can discard it).
                replies.append((await raw.reply())[1])
                ended = True
                break
            try:
                code, text = await raw.command("NOOP")
            except ConnectionError:
                ended = True  # the 421 crossed this NOOP (and the reset took it)
                break
            replies.append(text)
            if code != 250:
                ended = True
                break
        assert ended
        assert all(r.startswith("250 ") for r in replies[:-1])
        if replies and not replies[-1].startswith("250 "):
            assert replies[-1] == "421 4.4.2 No mail for too long, closing connection"
        await raw.close()
        await settle(relay)
    [event] = events(seeded.store_path, reason=str(Reason.SESSION_TIMEOUT))
    assert "no message queued" in event.detail


async def test_failure_limits_hold_against_concurrent_attempts(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """Attempts still being verified count toward the limits: a client opening many
    connections at once must not get more guesses than the limit allows."""
    config = relay_config(tmp_path, tls_files, auth_failures_per_client=3, auth_failures_per_user=1000)
    async with running_relay(seeded.store_path, config) as relay:
        # The same credentials on many connections at once are one guess: a client's
        # burst of logins (a load test, a pool) is not blocked.
        raws = [await Raw.connect(relay.served[i % 2]) for i in range(8)]
        for raw in raws:
            await raw.starttls(tls_files)
            await raw.command("EHLO client.test")
        for raw in raws:
            await raw.send(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + PASSWORD['alice'])}\r\n".encode())
        assert [(await raw.reply())[0] for raw in raws] == [235] * 8
        for raw in raws:
            await raw.close()
        verified = relay.checker.full_verifications  # type: ignore[union-attr]

        raws = [await Raw.connect(relay.served[i % 2]) for i in range(8)]
        for raw in raws:
            await raw.starttls(tls_files)
            await raw.command("EHLO client.test")
        for i, raw in enumerate(raws):  # all leave before the first verification ends
            await raw.send(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + f'guess-{i}')}\r\n".encode())
        codes = sorted([(await raw.reply())[0] for raw in raws])
        for raw in raws:
            await raw.close()
        assert codes == [421] * 5 + [535] * 3
        assert relay.checker.full_verifications == verified + 3  # type: ignore[union-attr]
