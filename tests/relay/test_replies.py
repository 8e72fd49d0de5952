"""PRODUCT.md's replies table, row by row, over real sockets and real TLS."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiosmtplib
import pytest

from relay.reasons import Reason
from relay.service import RelayService
from tests.relay.support import (
    PASSWORD,
    Raw,
    Seeded,
    b64,
    client_context,
    events,
    message,
    relay_config,
    running_relay,
    settle,
    smtp_client,
    split_trace,
    stored_body,
    stored_messages,
    stored_recipients,
)

QUEUED = re.compile(r"^2\.0\.0 Ok: queued as ([A-Z2-7]{12})$")


async def authed_raw(relay: RelayService, tls_files: dict[str, Path], user: str = "alice") -> Raw:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    code, text = await raw.login(user)
    assert code == 235, text
    return raw


async def test_queued_reply_names_the_stored_queue_id(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    client = await smtp_client(relay.served[1], tls_files, login="alice")
    errors, reply = await client.sendmail("x@a.example", ["r@d.example"], message(extra="X-Priority: 5\r\n"))
    await client.quit()
    assert errors == {}
    match = QUEUED.match(reply)
    assert match, reply
    [row] = stored_messages(seeded.store_path)
    assert row["queue_id"] == match.group(1)
    assert (row["mail_from"], row["username"], row["list_name"], row["origin"]) == ("x@a.example", "alice", "news", "smtp")
    assert (row["header_priority"], row["user_priority"], row["priority"]) == (5, 3, 3)
    assert row["port"] == relay.served[1] and row["client"] == "127.0.0.1"
    assert stored_recipients(seeded.store_path, row["queue_id"]) == ["r@d.example"]


async def test_user_priority_and_header_priority_give_the_effective_one(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    client = await smtp_client(relay.served[0], tls_files, login="carol")
    await client.sendmail("c@c.example", ["r@d.example"], message("c@c.example", extra="Importance: low\r\n"))
    await client.quit()
    client = await smtp_client(relay.served[0], tls_files, login="alice")
    await client.sendmail("x@a.example", ["r@d.example"], message(extra="X-Priority: 1 (Highest)\r\n"))
    await client.quit()
    rows = stored_messages(seeded.store_path)
    assert [(r["header_priority"], r["user_priority"], r["priority"]) for r in rows] == [(4, 1, 1), (1, 3, 1)]


async def test_mail_before_auth_is_530(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    await raw.command("EHLO client.test")
    assert await raw.command("MAIL FROM:<x@a.example>") == (530, "530 5.7.0 Authentication required")
    assert (await raw.command("RCPT TO:<r@d.example>"))[1] == "530 5.7.0 Authentication required"
    assert (await raw.command("DATA"))[1] == "530 5.7.0 Authentication required"
    await raw.close()
    await settle(relay)
    assert stored_messages(seeded.store_path) == []
    [event] = events(seeded.store_path, reason=str(Reason.PRE_AUTH_REFUSALS))  # one per connection, counted
    assert event.client == "127.0.0.1" and event.port == relay.served[0]
    assert event.detail.startswith("1 refused before AUTH (mail-before-auth x1); 3 error replies; e.g. MAIL FROM:<x@a.example>")


async def test_auth_before_starttls_is_538_and_ehlo_hides_auth_until_tls(relay: RelayService, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    code, ehlo = await raw.command("EHLO client.test")
    assert code == 250 and "STARTTLS" in ehlo and "AUTH" not in ehlo
    assert await raw.command(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + PASSWORD['alice'])}") == (
        538,
        "538 5.7.11 Encryption required for requested authentication mechanism",
    )
    assert (await raw.command("AUTH LOGIN"))[1] == "538 5.7.11 Encryption required for requested authentication mechanism"
    await raw.command("STARTTLS")
    await raw.writer.start_tls(client_context(tls_files), server_hostname="127.0.0.1")
    code, ehlo = await raw.command("EHLO client.test")
    assert "250-AUTH PLAIN LOGIN" in ehlo and "STARTTLS" not in ehlo
    await raw.close()


async def test_plain_auth_allowed_by_setting(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files, allow_plain_auth=True)) as relay:
        client = await smtp_client(relay.served[0], tls_files, starttls=False, login="alice")
        _, reply = await client.sendmail("x@a.example", ["r@d.example"], message())
        await client.quit()
    assert QUEUED.match(reply)
    body = stored_body(seeded.store_path, QUEUED.match(reply).group(1))
    assert b" with ESMTPA id " in split_trace(body)[0]  # AUTH without TLS


@pytest.mark.parametrize(
    ("user", "password", "reason"),
    [
        ("alice", "wrong-password", Reason.AUTH_BAD_CREDENTIALS),
        ("nobody", "whatever", Reason.AUTH_UNKNOWN_USER),
        ("bob", PASSWORD["bob"], Reason.AUTH_INACTIVE_USER),
    ],
)
async def test_bad_credentials_unknown_and_inactive_users_get_535(
    relay: RelayService, seeded: Seeded, tls_files: dict[str, Path], user: str, password: str, reason: Reason
) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert await raw.login(user, password) == (535, "535 5.7.8 Authentication credentials invalid")
    await raw.close()
    await settle(relay)
    [event] = events(seeded.store_path, kind="auth", reason=str(reason))
    assert event.username == user and event.client == "127.0.0.1" and event.port == relay.served[0]


async def test_auth_login_challenges_and_success(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    await raw.command("EHLO client.test")
    assert await raw.command("AUTH LOGIN") == (334, "334 VXNlcm5hbWU6")  # "Username:"
    assert await raw.command(b64("alice")) == (334, "334 UGFzc3dvcmQ6")  # "Password:"
    assert await raw.command(b64(PASSWORD["alice"])) == (235, "235 2.7.0 Authentication successful")
    assert (await raw.command("AUTH LOGIN"))[0] == 503
    await raw.close()
    await settle(relay)
    assert [e.username for e in events(seeded.store_path, reason=str(Reason.AUTH_OK))] == ["alice"]


async def test_auth_login_with_initial_response_and_cancel(relay: RelayService, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    await raw.command("EHLO client.test")
    assert await raw.command(f"AUTH LOGIN {b64('alice')}") == (334, "334 UGFzc3dvcmQ6")
    assert (await raw.command("*"))[0] == 501
    assert (await raw.command(f"AUTH LOGIN {b64('alice')}"))[0] == 334
    assert (await raw.command(b64(PASSWORD["alice"])))[0] == 235
    await raw.close()


async def test_three_failures_on_one_connection_give_421_and_close(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert (await raw.login("alice", "bad-1"))[0] == 535
    assert (await raw.login("alice", "bad-2"))[0] == 535
    code, text = await raw.login("alice", "bad-3")
    assert code == 421 and text.startswith("421 4.7.0 ")
    assert await raw.closed()
    await settle(relay)
    assert len(events(seeded.store_path, reason=str(Reason.AUTH_TOO_MANY_FAILURES))) == 1


async def test_authzid_must_be_empty_or_the_login(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    await raw.command("EHLO client.test")
    other = b64(f"carol\0alice\0{PASSWORD['alice']}")
    assert await raw.command(f"AUTH PLAIN {other}") == (535, "535 5.7.8 Authentication credentials invalid")
    same = b64(f"alice\0alice\0{PASSWORD['alice']}")
    assert await raw.command(f"AUTH PLAIN {same}") == (235, "235 2.7.0 Authentication successful")
    await raw.close()
    await settle(relay)
    assert len(events(seeded.store_path, reason=str(Reason.AUTH_AUTHZID_MISMATCH))) == 1


async def test_auth_plain_with_empty_challenge(relay: RelayService, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    await raw.command("EHLO client.test")
    assert await raw.command("AUTH PLAIN") == (334, "334 ")
    assert (await raw.command(b64(f"\0alice\0{PASSWORD['alice']}")))[0] == 235
    await raw.close()


async def test_sender_not_authorized_names_the_address(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await authed_raw(relay, tls_files)
    code, text = await raw.command("MAIL FROM:<visitor@gmail.example>")
    assert code == 550 and text.startswith("550 5.7.1 ") and "<visitor@gmail.example>" in text
    await raw.close()
    await settle(relay)
    [event] = events(seeded.store_path, reason=str(Reason.SENDER_NOT_AUTHORIZED))
    assert "visitor@gmail.example" in event.detail and event.username == "alice"


@pytest.mark.parametrize("sender", ["x@pending.example", "new@b.example"])
async def test_sender_authorized_but_unverified_awaits_verification(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path], sender: str) -> None:
    raw = await authed_raw(relay, tls_files)
    code, text = await raw.command(f"MAIL FROM:<{sender}>")
    assert code == 550 and text.startswith("550 5.7.1 ") and sender in text and "awaits verification" in text
    await raw.close()
    await settle(relay)
    assert len(events(seeded.store_path, reason=str(Reason.SENDER_UNVERIFIED))) == 1


async def test_message_too_large_is_552_by_size_and_by_data(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files, max_message_size=4000)) as relay:
        raw = await authed_raw(relay, tls_files)
        assert await raw.command("MAIL FROM:<x@a.example> SIZE=4001") == (552, "552 5.3.4 Message size exceeds fixed maximum message size")
        assert (await raw.command("MAIL FROM:<x@a.example> SIZE=100"))[0] == 250
        assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
        assert (await raw.command("DATA"))[0] == 354
        await raw.send(message(body="y" * 70 + "\r\n") * 80 + b".\r\n")
        assert await raw.reply() == (552, "552 5.3.4 Message size exceeds fixed maximum message size")
        # The session goes on: a message within the limit is accepted.
        assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
        assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
        assert (await raw.command("DATA"))[0] == 354
        code, text = await raw.command(message() + b".")
        assert code == 250 and "queued as" in text
        await raw.close()
        await settle(relay)
    assert len(stored_messages(seeded.store_path)) == 1
    assert len(events(seeded.store_path, reason=str(Reason.MESSAGE_TOO_LARGE))) == 2


async def _send_one(raw: Raw, body: str = "hello\r\n") -> tuple[int, str]:
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
    assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
    assert (await raw.command("DATA"))[0] == 354
    return await raw.command(message(body=body) + b".")


async def test_store_full_is_452_and_nothing_is_accepted(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    assert relay._writes is not None

    def fill(db: object) -> None:
        # A real SQLITE_FULL: the writer's connection may not grow the file any more.
        pages = db.execute("PRAGMA page_count").fetchone()[0]  # type: ignore[attr-defined]
        db.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[attr-defined]

    await relay._writes.run(fill)
    raw = await authed_raw(relay, tls_files)
    # 200 KB cannot fit in the pages the file already has.
    big = ("z" * 78 + "\r\n") * 2500
    assert await _send_one(raw, big) == (452, "452 4.3.1 Insufficient system storage, try again later")
    await raw.close()
    assert stored_messages(seeded.store_path) == []


async def test_store_failure_is_451_without_internals(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    assert relay._writes is not None
    await relay._writes.run(lambda db: db.execute("PRAGMA query_only = ON"))
    raw = await authed_raw(relay, tls_files)
    code, text = await _send_one(raw)
    assert (code, text) == (451, "451 4.3.0 Temporary failure, try again later")
    await raw.close()
    assert stored_messages(seeded.store_path) == []


async def test_auth_while_the_store_cannot_be_read_is_454_and_the_client_may_retry(
    relay: RelayService, seeded: Seeded, tls_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    assert relay._reads is not None
    # SQLite itself refuses every read on the relay's read connection (SQLITE_AUTH from
    # an authorizer that answers SQLITE_DENY = 1): the store is unavailable to AUTH.
    await relay._reads.run(lambda db: db.set_authorizer(lambda *_: 1))
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert await raw.login("alice") == (454, "454 4.7.0 Temporary authentication failure")
    assert (await raw.command("NOOP"))[0] == 250  # the session goes on
    await relay._reads.run(lambda db: db.set_authorizer(None))
    # The client tries again on the same connection, and gets in.
    token = b64(f"\0alice\0{PASSWORD['alice']}")
    assert await raw.command(f"AUTH PLAIN {token}") == (235, "235 2.7.0 Authentication successful")
    await raw.close()
    await settle(relay)
    assert [e.kind for e in events(seeded.store_path, reason=str(Reason.STORE_UNAVAILABLE))] == ["auth"]
    assert events(seeded.store_path, reason=str(Reason.INTERNAL_ERROR)) == []
    assert events(seeded.store_path, reason=str(Reason.AUTH_BAD_CREDENTIALS)) == []  # not a failed attempt
    logged = [r.getMessage() for r in caplog.records]
    assert any("AUTH: the store is unavailable" in line for line in logged)
    assert not any("session error" in line for line in logged)
    assert all(r.exc_info is None for r in caplog.records)


async def test_mail_while_the_user_cannot_be_reread_is_451_and_the_client_may_retry(
    relay: RelayService, seeded: Seeded, tls_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    assert relay._reads is not None and relay.checker is not None
    raw = await authed_raw(relay, tls_files)
    await relay._reads.run(lambda db: db.set_authorizer(lambda *_: 1))  # every read refused
    relay.checker._records.clear()  # MAIL re-reads the user now, not after the cache's second
    assert await raw.command("MAIL FROM:<x@a.example>") == (451, "451 4.3.0 Temporary failure, try again later")
    await relay._reads.run(lambda db: db.set_authorizer(None))
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250  # same session, store back
    await raw.close()
    await settle(relay)
    assert [e.kind for e in events(seeded.store_path, reason=str(Reason.STORE_UNAVAILABLE))] == ["refused"]
    assert events(seeded.store_path, reason=str(Reason.INTERNAL_ERROR)) == []
    assert all(r.exc_info is None for r in caplog.records)


async def test_recipients_past_100_get_452_each(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await authed_raw(relay, tls_files)
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
    # Pipelined, byte for byte: 103 recipients, then the replies in order.
    await raw.send(b"".join(f"RCPT TO:<r{i}@d.example>\r\n".encode() for i in range(103)))
    replies = [await raw.reply() for _ in range(103)]
    assert [code for code, _ in replies[:100]] == [250] * 100
    assert replies[100:] == [(452, "452 4.5.3 Too many recipients")] * 3
    assert (await raw.command("DATA"))[0] == 354
    code, text = await raw.command(message() + b".")
    assert code == 250
    await raw.close()
    queue_id = QUEUED.match(text[4:]).group(1)  # type: ignore[union-attr]
    assert len(stored_recipients(seeded.store_path, queue_id)) == 100


@pytest.mark.parametrize(
    "recipient",
    ["<user%remote.example@d.example>", "<remote.example!user@d.example>", '<"user@remote.example"@d.example>',
     "<@relay.example:user@remote.example>", "<@a.example,@b.example:user@remote.example>",
     "<user@>", "<user@[192.0.2.1]>"],
)
async def test_recipient_forms_are_553(relay: RelayService, tls_files: dict[str, Path], recipient: str) -> None:
    raw = await authed_raw(relay, tls_files)
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
    code, text = await raw.command(f"RCPT TO:{recipient}")
    assert code == 553 and text.startswith("553 5.1.3 "), text
    await raw.close()


async def test_length_limits_and_control_characters(relay: RelayService, tls_files: dict[str, Path]) -> None:
    raw = await authed_raw(relay, tls_files)
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
    code, text = await raw.command(f"RCPT TO:<{'l' * 65}@d.example>")
    assert code == 553 and text.startswith("553 5.1.3 ")
    long_domain = ".".join(["d" * 60] * 5) + ".example"  # 312 > 255
    code, text = await raw.command(f"RCPT TO:<r@{long_domain}>")
    assert code == 553 and text.startswith("553 5.1.3 ")
    code, text = await raw.command(b"RCPT TO:<r\x01x@d.example>")
    assert code == 501 and text.startswith("501 5.1.3 ")
    code, text = await raw.command(b"RCPT TO:<r\x7fx@d.example>")
    assert code == 501
    await raw.command("RSET")
    code, text = await raw.command(f"MAIL FROM:<{'l' * 65}@a.example>")
    assert code == 553 and text.startswith("553 5.1.7 ")
    code, text = await raw.command(b"MAIL FROM:<x\x00y@a.example>")
    assert code == 501 and text.startswith("501 5.1.7 ")
    await raw.close()


async def test_null_sender_after_auth_is_accepted_and_the_from_header_decides(
    relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]
) -> None:
    raw = await authed_raw(relay, tls_files)
    for sender, expected in (("MAILER-DAEMON@a.example", 250), ("MAILER-DAEMON@elsewhere.example", 550)):
        assert await raw.command("MAIL FROM:<>") == (250, "250 2.1.0 Ok")
        assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
        assert (await raw.command("DATA"))[0] == 354
        code, text = await raw.command(message(sender) + b".")
        assert code == expected, text
    assert text == "550 5.7.1 <mailer-daemon@elsewhere.example>: From: address not authorized for this login"
    await raw.close()
    await settle(relay)
    [row] = stored_messages(seeded.store_path)
    assert (row["mail_from"], row["header_from"]) == ("", "MAILER-DAEMON@a.example")


@pytest.mark.parametrize(
    ("headers", "reply_start", "reason"),
    [
        ("Subject: no from\r\n", "550 5.6.0 ", Reason.HEADER_FROM_MISSING),
        ("From: x@a.example\r\nFrom: y@a.example\r\n", "550 5.7.1 ", Reason.HEADER_FROM_MULTIPLE),
        ("From: x@a.example\r\nSender: x@a.example\r\nSender: y@a.example\r\n", "550 5.7.1 ", Reason.HEADER_SENDER_MULTIPLE),
        ("From: Alice <x@a.example\r\n", "550 5.7.1 ", Reason.HEADER_FROM_INVALID),
        ("From: x@a.example <evil@evil.example>\r\n", "550 5.7.1 ", Reason.HEADER_FROM_INVALID),
        ("From:\r\n", "550 5.7.1 ", Reason.HEADER_FROM_INVALID),
        ("From: x@a.example\r\nSender: a@a.example, b@a.example\r\n", "550 5.7.1 ", Reason.HEADER_SENDER_INVALID),
        ("Subject: x\r\nnot a header line\r\nFrom: x@a.example\r\nFROM : y@a.example\r\n", "550 5.7.1 ", Reason.HEADER_FROM_MULTIPLE),
    ],
)
async def test_from_and_sender_header_refusals(
    relay: RelayService, seeded: Seeded, tls_files: dict[str, Path], headers: str, reply_start: str, reason: Reason
) -> None:
    raw = await authed_raw(relay, tls_files)
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
    assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
    assert (await raw.command("DATA"))[0] == 354
    code, text = await raw.command(f"{headers}\r\nbody\r\n.".encode())
    assert text.startswith(reply_start), text
    await raw.close()
    await settle(relay)
    assert stored_messages(seeded.store_path) == []
    assert len(events(seeded.store_path, reason=str(reason))) == 1


async def test_starttls_inside_tls_is_503(relay: RelayService, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    await raw.command("EHLO client.test")
    assert await raw.command("STARTTLS") == (503, "503 5.5.1 TLS already active")
    assert (await raw.command("NOOP"))[0] == 250  # the session goes on
    await raw.close()


async def test_commands_pipelined_before_the_tls_handshake_are_discarded(relay: RelayService, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    assert (await raw.command("EHLO client.test"))[0] == 250
    # STARTTLS and an injected command in one write: the injection must never run.
    await raw.send(b"STARTTLS\r\nAUTH PLAIN " + b64(f"\0alice\0{PASSWORD['alice']}").encode() + b"\r\n")
    assert (await raw.reply())[0] == 220
    await raw.writer.start_tls(client_context(tls_files), server_hostname="127.0.0.1")
    code, text = await raw.command("MAIL FROM:<x@a.example>")
    assert code == 503  # no EHLO since TLS started; and certainly not authenticated
    await raw.command("EHLO client.test")
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 530
    await raw.close()


async def test_connection_caps_give_421(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = relay_config(tmp_path, tls_files, max_connections=3, max_connections_per_client=2)
    async with running_relay(seeded.store_path, config) as relay:
        first = await Raw.connect(relay.served[0])
        second = await Raw.connect(relay.served[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.served[0])
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.startswith(b"421 4.7.0 ")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await first.close()
        # A slot is free again once a session ends.
        for _ in range(500):  # up to ~10 s: a loaded machine may take a while to reap it
            if len(relay.context.tracker.sessions) < 2:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.02)
        assert len(relay.context.tracker.sessions) < 2  # type: ignore[union-attr]
        third = await Raw.connect(relay.served[0])
        await third.close()
        await second.close()
        await settle(relay)
    assert len(events(seeded.store_path, reason=str(Reason.CONNECTION_LIMIT))) == 1


async def test_received_header_is_sanitized_and_bare_line_ends_become_crlf(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert (await raw.command("EHLO evil(x);by\tme=\x01"))[0] == 250
    await raw.command(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + PASSWORD['alice'])}")
    await raw.command("MAIL FROM:<x@a.example>")
    await raw.command("RCPT TO:<r@d.example>")
    await raw.command("DATA")
    code, text = await raw.command(b"From: x@a.example\nSubject: bare\r\rline one\nline two\r\n..dot\r\n.")
    assert code == 250
    await raw.close()
    queue_id = QUEUED.match(text[4:]).group(1)  # type: ignore[union-attr]
    body = stored_body(seeded.store_path, queue_id)
    received, _added, rest = split_trace(body)
    assert re.fullmatch(
        rb"Received: from evil\?x\?\?by\?me\?\? \((localhost|unknown) \[127\.0\.0\.1\]\)\r\n"
        rb"\t\(using TLSv1\.[23] with cipher [A-Z0-9_-]+ \((\d+)/\2 bits\)\)\r\n"
        rb"\tby relay\.test \(smtpplus\) with ESMTPSA id " + queue_id.encode() + rb";\r\n"
        rb"\t\w{3}, \d\d? \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n",
        received,
    ), received
    assert rest == b"From: x@a.example\r\nSubject: bare\r\n\r\nline one\r\nline two\r\n.dot\r\n"


async def test_events_carry_time_client_port_and_user(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    client = await smtp_client(relay.served[0], tls_files, login="alice")
    await client.sendmail("x@a.example", ["r@d.example"], message())
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await client.sendmail("y@evil.example", ["r@d.example"], message())
    await client.quit()
    await settle(relay)
    recorded = [(e.kind, e.reason) for e in events(seeded.store_path) if e.kind in {"auth", "queued", "refused"}]
    assert recorded == [("auth", "auth-ok"), ("queued", "accepted"), ("refused", "sender-not-authorized")]
    for event in events(seeded.store_path, username="alice"):
        assert event.client == "127.0.0.1" and event.port == relay.served[0] and event.at > 0


async def test_data_lines_over_998_characters_are_taken_whole(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    """RFC 5321 4.5.3.1.6's 998 octets bind the sender; Postfix takes longer lines
    (delivery folds them for the next hop: tests/interop/test_delivery_interop.py)."""
    raw = await authed_raw(relay, tls_files)
    assert (await _send_one(raw, "y" * 998 + "\r\n"))[0] == 250
    assert (await _send_one(raw, "y" * 5000 + "\r\n"))[0] == 250
    assert (await _send_one(raw, "y" * 999 + "\nend\r\n"))[0] == 250  # a bare LF becomes CRLF
    await raw.close()
    bodies = sorted(stored_body(seeded.store_path, row["queue_id"]) for row in stored_messages(seeded.store_path))
    assert len(bodies) == 3
    assert any(body.endswith(b"\r\n\r\n" + b"y" * 5000 + b"\r\n") for body in bodies)
    assert any(body.endswith(b"y" * 999 + b"\r\nend\r\n") for body in bodies)


async def test_an_internal_failure_is_451_and_leaks_nothing(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert relay._reads is not None
    await relay._reads.close()  # the relay's read connection to the store is gone
    code, text = await raw.login("alice")
    assert (code, text) == (451, "451 4.3.0 Internal error, try again later")
    assert (await raw.command("NOOP"))[0] == 250  # the session survives
    await raw.close()
    await settle(relay)
    assert len(events(seeded.store_path, reason=str(Reason.INTERNAL_ERROR))) == 1
