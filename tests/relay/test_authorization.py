"""Authorization: no relaying without AUTH, envelope and header senders, domain scope."""

from __future__ import annotations

from pathlib import Path

import aiosmtplib
import pytest

from relay.reasons import Reason
from relay.service import RelayService
from tests.relay.support import Raw, Seeded, events, message, settle, smtp_client, stored_messages

OPEN_RELAY_FORMS = [
    ("<spammer@evil.example>", "<victim@remote.example>"),
    ("<x@a.example>", "<victim%remote.example@relay.test>"),
    ("<x@a.example>", "<remote.example!victim@relay.test>"),
    ("<x@a.example>", '<"victim@remote.example"@relay.test>'),
    ("<x@a.example>", "<@relay.test:victim@remote.example>"),
    ("<x@a.example>", "<victim@remote.example@relay.test>"),
    ("<x@a.example>", "<victim@[192.0.2.1]>"),
    ("<>", "<victim@remote.example>"),
]


@pytest.mark.parametrize("tls", [True, False], ids=["starttls", "plaintext"])
async def test_open_relay_forms_without_auth_are_all_530(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path], tls: bool) -> None:
    async def session() -> Raw:
        raw = await Raw.connect(relay.served[1])
        if tls:
            await raw.starttls(tls_files)
        await raw.command("EHLO client.test")
        return raw

    # One connection per form: a connection that keeps erring is closed at the error limit.
    for sender, recipient in OPEN_RELAY_FORMS:
        raw = await session()
        assert (await raw.command(f"MAIL FROM:{sender}"))[0] == 530
        assert (await raw.command(f"RCPT TO:{recipient}"))[0] == 530
        assert (await raw.command("DATA"))[0] == 530
        await raw.close()
    # Even pipelined with a body, nothing gets through.
    raw = await session()
    await raw.send(b"MAIL FROM:<x@a.example>\r\nRCPT TO:<v@remote.example>\r\nDATA\r\nFrom: x@a.example\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    codes = [(await raw.reply())[0] for _ in range(3)]
    assert codes == [530, 530, 530]
    await raw.close()
    await settle(relay)
    assert stored_messages(seeded.store_path) == []
    # Refusals before AUTH are counted into one event per connection, not stored one by one.
    summaries = events(seeded.store_path, reason=str(Reason.PRE_AUTH_REFUSALS))
    assert len(summaries) == len(OPEN_RELAY_FORMS) + 1
    assert all("1 refused before AUTH (mail-before-auth x1)" in e.detail for e in summaries)
    assert events(seeded.store_path, reason=str(Reason.MAIL_BEFORE_AUTH)) == []


@pytest.mark.parametrize(
    "sender",
    ["<x@a.example.evil>", '<"x@a.example"@evil.example>', "<x%evil.example@a.example>", "<x@[127.0.0.1]>",
     "<evil.example!x@a.example>", "<@a.example:x@evil.example>", "<x@evil.example>", "<x@sub.a.example>"],
)
async def test_envelope_sender_evasion_is_refused(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path], sender: str) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert (await raw.login("alice"))[0] == 235
    code, text = await raw.command(f"MAIL FROM:{sender}")
    assert code == 550 and text.startswith("550 5.7.1 "), text
    await raw.close()


@pytest.mark.parametrize(
    "from_value",
    ["x@a.example.evil", '"x@a.example"@evil.example', "x%evil.example@a.example", "x@[127.0.0.1]",
     "Alice <visitor@gmail.example>", '"x@a.example" <evil@evil.example>', "x@a.example, evil@evil.example",
     "=?utf-8?q?x@a.example?= <evil@evil.example>", "<@evil.example:x@a.example>", "x@mail.example.com",
     # An unauthorized address shown where a reader (or a lenient parser) takes it for
     # the sender: display name, comment, RFC 2047 encoded word; a group; a fold.
     '"evil@evil.example" <x@a.example>', "x@a.example (evil@evil.example)", "Alice <x@a.example> (via <evil@evil.example>)",
     "=?utf-8?b?ZXZpbEBldmlsLmV4YW1wbGU=?= <x@a.example>", "team: x@a.example, evil@evil.example;", "x@a.example,\r\n evil@evil.example"],
)
async def test_header_from_evasion_is_refused(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path], from_value: str) -> None:
    client = await smtp_client(relay.served[0], tls_files, login="alice")
    data = f"From: {from_value}\r\nSubject: t\r\n\r\nbody\r\n".encode()
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await client.sendmail("x@a.example", ["r@d.example"], data)
    assert refused.value.code == 550 and refused.value.message.startswith("5.7.1 ")
    await client.quit()
    assert stored_messages(seeded.store_path) == []


@pytest.mark.parametrize(
    ("from_value", "sender_value"),
    [
        ('"Alice Example" <x@a.example>', None),
        ("=?utf-8?q?J=C3=B6rg?= <joerg@a.example>", None),
        ('"Doe, John" <j@a.example>, Boss <boss@b.example>', None),
        ("X@A.EXAMPLE", None),
        ("team@a.example", "Boss <boss@b.example>"),
        ("x@example.com", None),
        ('"x@a.example" <x@a.example>', None),  # the display name shows the address itself
        ("x@a.example (Alice)", None),
        ("John Q. Public <x@a.example>", None),
    ],
)
async def test_header_from_forms_that_are_accepted(
    relay: RelayService, seeded: Seeded, tls_files: dict[str, Path], from_value: str, sender_value: str | None
) -> None:
    client = await smtp_client(relay.served[0], tls_files, login="alice")
    sender_line = f"Sender: {sender_value}\r\n" if sender_value else ""
    data = f"From: {from_value}\r\n{sender_line}Subject: t\r\n\r\nbody\r\n".encode()
    _, reply = await client.sendmail("boss@b.example", ["r@d.example"], data)
    await client.quit()
    assert "queued as" in reply
    [row] = stored_messages(seeded.store_path)
    assert row["header_from"] == from_value


async def test_sender_header_must_be_authorized_and_verified(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    client = await smtp_client(relay.served[0], tls_files, login="alice")
    # Sender: refusals have their own reason codes (they were recorded as From: ones).
    for sender_value, reason in (("evil@evil.example", Reason.HEADER_SENDER_NOT_AUTHORIZED), ("new@b.example", Reason.HEADER_SENDER_UNVERIFIED)):
        data = f"From: x@a.example\r\nSender: {sender_value}\r\n\r\nbody\r\n".encode()
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.sendmail("x@a.example", ["r@d.example"], data)
        assert refused.value.code == 550 and sender_value in refused.value.message
        await settle(relay)
        assert len(events(seeded.store_path, reason=str(reason))) == 1
    await client.quit()


async def test_unverified_header_from_awaits_verification(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    client = await smtp_client(relay.served[0], tls_files, login="alice")
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await client.sendmail("x@a.example", ["r@d.example"], message("someone@pending.example"))
    assert refused.value.code == 550 and "awaits verification" in refused.value.message
    await client.quit()


async def test_second_level_domain_does_not_cover_third_level(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    client = await smtp_client(relay.served[0], tls_files, login="alice")
    _, reply = await client.sendmail("x@example.com", ["r@d.example"], message("x@example.com"))
    assert "queued as" in reply
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await client.sendmail("x@marketing.example.com", ["r@d.example"], message("x@example.com"))
    assert refused.value.code == 550 and "x@marketing.example.com" in refused.value.message
    with pytest.raises(aiosmtplib.SMTPDataError):
        await client.sendmail("x@example.com", ["r@d.example"], message("x@marketing.example.com"))
    await client.quit()
    assert len(stored_messages(seeded.store_path)) == 1


async def test_exact_sender_address_covers_only_itself(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    client = await smtp_client(relay.served[0], tls_files, login="alice")
    _, reply = await client.sendmail("Boss@B.example", ["r@d.example"], message("boss@b.example"))
    assert "queued as" in reply
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await client.sendmail("other@b.example", ["r@d.example"], message("boss@b.example"))
    await client.quit()
    # Authorized case-insensitively, kept as sent (RFC 5321 2.4: local parts may be case-sensitive).
    assert [r["mail_from"] for r in stored_messages(seeded.store_path)] == ["Boss@B.example"]


async def test_one_users_domains_do_not_serve_another(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    client = await smtp_client(relay.served[0], tls_files, login="carol")
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await client.sendmail("x@a.example", ["r@d.example"], message())
    await client.quit()
