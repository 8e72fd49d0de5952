"""The session as clients nobody on this project wrote see it: Python's smtplib, curl
and raw pipelined bytes, against a real relay on 127.0.0.1 with real TLS and a real
store (issue 12: MAIL/RCPT parameters, PIPELINING, SMTPUTF8, headers, null sender,
enhanced codes everywhere, Postmaster, escaped logs)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import email.utils
import logging
import re
import shutil
import smtplib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.config import ConfigError, load_config
from relay.message import received_header
from relay.service import RelayService
from tests.relay.support import (
    PASSWORD,
    Raw,
    Seeded,
    events,
    message,
    relay_config,
    rows,
    running_relay,
    settle,
    split_trace,
    stored_body,
    stored_messages,
    stored_recipients,
)


@pytest.fixture
async def relay(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> AsyncIterator[RelayService]:
    async with running_relay(seeded.store_path, relay_config(tmp_path, tls_files)) as service:
        yield service


def smtplib_session(port: int, tls_files: dict[str, Path], login: str | None = "alice") -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
    client.starttls(context=ssl.create_default_context(cafile=str(tls_files["ca"])))
    client.ehlo("client.test")
    if login is not None:
        client.login(login, PASSWORD[login])
    return client


async def with_smtplib(port: int, tls_files: dict[str, Path], work: Any, login: str | None = "alice") -> Any:
    """Run ``work(client)`` on a logged-in smtplib client in a thread (smtplib blocks;
    the relay runs on this test's event loop)."""

    def run() -> Any:
        client = smtplib_session(port, tls_files, login)
        try:
            return work(client)
        finally:
            client.quit()

    return await asyncio.to_thread(run)


def recipient_dsn(store_path: Path) -> dict[str, tuple[str | None, str | None]]:
    return {
        r["address"]: (r["dsn_notify"], r["dsn_orcpt"])
        for r in rows(store_path, lambda db: [dict(x) for x in db.execute("SELECT * FROM recipients")])
    }


# ---------------------------------------------------------------------------
# 1. MAIL and RCPT parameters, PIPELINING, SMTPUTF8


async def test_ehlo_offers_pipelining_smtputf8_dsn_and_8bitmime(relay: RelayService, tls_files: dict[str, Path]) -> None:
    def offered(client: smtplib.SMTP) -> dict[str, bool]:
        return {name: client.has_extn(name) for name in ("pipelining", "smtputf8", "dsn", "8bitmime", "enhancedstatuscodes")}

    assert await with_smtplib(relay.served[0], tls_files, offered, login=None) == dict.fromkeys(
        ("pipelining", "smtputf8", "dsn", "8bitmime", "enhancedstatuscodes"), True
    )


async def test_declared_parameters_are_accepted_and_kept_with_the_message(
    relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]
) -> None:
    def send(client: smtplib.SMTP) -> Any:
        return client.sendmail(
            "x@a.example",
            ["r@d.example", "s@d.example"],
            message(),
            mail_options=["AUTH=x+40a.example", "BODY=8BITMIME", "RET=HDRS", "ENVID=QQ+2B1"],
            rcpt_options=["NOTIFY=success,failure", "ORCPT=rfc822;r+2Bx@d.example"],
        )

    assert await with_smtplib(relay.served[0], tls_files, send) == {}
    await settle(relay)
    [row] = stored_messages(seeded.store_path)
    assert (row["mail_auth"], row["body_type"], row["dsn_ret"], row["dsn_envid"], row["size_declared"]) == (
        "x@a.example", "8BITMIME", "HDRS", "QQ+2B1", len(message()),  # smtplib declares SIZE itself
    )
    assert recipient_dsn(seeded.store_path) == {
        "r@d.example": ("SUCCESS,FAILURE", "rfc822;r+2Bx@d.example"),
        "s@d.example": ("SUCCESS,FAILURE", "rfc822;r+2Bx@d.example"),
    }


@pytest.mark.parametrize(
    ("declared", "kept"),
    [
        ("AUTH=<>", "<>"),  # E-MailRelay after every login
        ("AUTH=<x@a.example>", "x@a.example"),  # curl --mail-auth
        ("AUTH=someone+40elsewhere.example", "<>"),  # not the user's to claim: kept as <>
        ("AUTH=new+40b.example", "<>"),  # the user's, but its identity is pending
    ],
)
async def test_auth_parameter_is_recorded_and_an_unauthorized_one_becomes_empty(
    relay: RelayService, seeded: Seeded, tls_files: dict[str, Path], declared: str, kept: str
) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert (await raw.login("alice"))[0] == 235
    assert await raw.command(f"MAIL FROM:<x@a.example> {declared}") == (250, "250 2.1.0 Ok")
    assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
    assert (await raw.command("DATA"))[0] == 354
    code, text = await raw.command(message() + b".")
    assert code == 250, text
    await raw.close()
    await settle(relay)
    assert [r["mail_auth"] for r in stored_messages(seeded.store_path)] == [kept]


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("MAIL FROM:<x@a.example> AUTH=a=b@x", "501 5.5.4 AUTH parameter: needs <> or an address as xtext (RFC 4954 5)"),
        ("MAIL FROM:<x@a.example> AUTH=", "501 5.5.4 AUTH parameter: needs <> or an address as xtext (RFC 4954 5)"),
        ("MAIL FROM:<x@a.example> RET=ALL", "501 5.5.4 RET parameter: must be FULL or HDRS"),
        ("MAIL FROM:<x@a.example> ENVID=a+zz", "501 5.5.4 ENVID parameter: needs a value as xtext (RFC 3461 4.4)"),
        ("MAIL FROM:<x@a.example> ENVID=" + "a" * 101, "501 5.5.4 ENVID parameter: over 100 characters"),
        ("MAIL FROM:<x@a.example> SMTPUTF8=yes", "501 5.5.4 SMTPUTF8 parameter: takes no value"),
        ("MAIL FROM:<x@a.example> BODY=BINARYMIME", "501 5.5.4 Syntax error in BODY parameter"),
        ("MAIL FROM:<x@a.example> RET=FULL RET=HDRS", "501 5.5.4 RET parameter: given twice"),
        ("MAIL FROM:<x@a.example> MT-PRIORITY=3", "555 5.5.4 MAIL FROM parameter MT-PRIORITY not supported"),
    ],
)
async def test_malformed_mail_parameters_get_a_precise_501(relay: RelayService, tls_files: dict[str, Path], command: str, reply: str) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert (await raw.login("alice"))[0] == 235
    assert (await raw.command(command))[1] == reply
    await raw.close()


@pytest.mark.parametrize(
    ("param", "reply"),
    [
        ("NOTIFY=NEVER,SUCCESS", "501 5.5.4 NOTIFY parameter: must be NEVER or a list of SUCCESS, FAILURE, DELAY"),
        ("NOTIFY=SOMETIMES", "501 5.5.4 NOTIFY parameter: must be NEVER or a list of SUCCESS, FAILURE, DELAY"),
        ("NOTIFY=SUCCESS,SUCCESS", "501 5.5.4 NOTIFY parameter: must be NEVER or a list of SUCCESS, FAILURE, DELAY"),
        ("NOTIFY", "501 5.5.4 NOTIFY parameter: must be NEVER or a list of SUCCESS, FAILURE, DELAY"),
        ("ORCPT=r@d.example", "501 5.5.4 ORCPT parameter: must be addr-type;xtext (rfc822;ann@example.com)"),
        ("ORCPT=rfc822;a+g@d.example", "501 5.5.4 ORCPT parameter: must be addr-type;xtext (rfc822;ann@example.com)"),
        ("XFORWARD=1", "555 5.5.4 RCPT TO parameter XFORWARD not supported"),
    ],
)
async def test_malformed_rcpt_parameters_get_a_precise_501(relay: RelayService, tls_files: dict[str, Path], param: str, reply: str) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert (await raw.login("alice"))[0] == 235
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
    assert (await raw.command(f"RCPT TO:<r@d.example> {param}"))[1] == reply
    assert (await raw.command("RCPT TO:<r@d.example> NOTIFY=NEVER"))[1] == "250 2.1.5 Ok"
    await raw.close()


async def test_pipelined_commands_get_every_reply_in_order(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert (await raw.login("alice"))[0] == 235
    # RFC 2920: MAIL, the RCPTs and DATA in one write; one bad recipient in the middle.
    batch = b"MAIL FROM:<x@a.example>\r\n" + b"".join(
        f"RCPT TO:<r{i}@d.example>\r\n".encode() if i != 5 else b"RCPT TO:<bad%x@d.example>\r\n" for i in range(10)
    ) + b"DATA\r\n"
    await raw.send(batch)
    replies = [await raw.reply() for _ in range(12)]
    assert replies[0] == (250, "250 2.1.0 Ok")
    assert [code for code, _ in replies[1:11]] == [250] * 5 + [553] + [250] * 4
    assert replies[11][0] == 354
    # The message, then a second transaction pipelined behind the first's end of data.
    await raw.send(message() + b".\r\nRSET\r\nMAIL FROM:<x@a.example>\r\nRCPT TO:<z@d.example>\r\nDATA\r\n")
    codes = [(await raw.reply())[0] for _ in range(5)]
    assert codes == [250, 250, 250, 250, 354]
    code, _ = await raw.command(message() + b".")
    assert code == 250
    await raw.close()
    await settle(relay)
    [first, second] = stored_messages(seeded.store_path)
    assert len(stored_recipients(seeded.store_path, first["queue_id"])) == 9
    assert stored_recipients(seeded.store_path, second["queue_id"]) == ["z@d.example"]


async def test_internationalized_addresses_need_and_get_smtputf8(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert (await raw.login("alice"))[0] == 235
    code, text = await raw.command("MAIL FROM:<jörg@a.example>".encode())
    assert (code, text) == (553, "553 5.6.7 <j\\xf6rg@a.example>: non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM")
    assert await raw.command("MAIL FROM:<jörg@a.example> SMTPUTF8".encode()) == (250, "250 2.1.0 Ok")
    assert (await raw.command("RCPT TO:<ñandú@bücher.example>".encode()))[1] == "250 2.1.5 Ok"
    assert (await raw.command(b"RCPT TO:<bad\xff@d.example>"))[0] == 501  # not UTF-8
    assert (await raw.command("DATA"))[0] == 354
    code, text = await raw.command(message("jörg@a.example").replace(b"\r\n\r\n", "\r\nX-Name: Jörg\r\n\r\n".encode()) + b".")
    assert code == 250, text
    await raw.close()
    await settle(relay)
    [row] = stored_messages(seeded.store_path)
    assert row["smtputf8"] == 1
    assert row["mail_from"].startswith("jörg@")
    assert stored_recipients(seeded.store_path, row["queue_id"]) == ["ñandú@bücher.example"]  # as sent
    assert "From: jörg@a.example".encode() in stored_body(seeded.store_path, row["queue_id"])


async def test_curl_sends_with_mail_auth(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is not installed: apt-get install curl"
    process = await asyncio.create_subprocess_exec(
        curl, "--silent", "--show-error", "--url", f"smtp://127.0.0.1:{relay.served[0]}", "--ssl-reqd",
        "--cacert", str(tls_files["ca"]), "--mail-from", "x@a.example", "--mail-rcpt", "r@d.example",
        "--mail-auth", "x@a.example", "--user", f"alice:{PASSWORD['alice']}", "--upload-file", "-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(message()), 60)
    assert process.returncode == 0, err.decode(errors="replace")
    await settle(relay)
    [row] = stored_messages(seeded.store_path)
    assert (row["mail_from"], row["mail_auth"], row["username"]) == ("x@a.example", "x@a.example", "alice")


# ---------------------------------------------------------------------------
# 2. Headers the submission server owns, addresses as sent, Received:


def queue_id_of(reply: bytes | str) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    return text.rsplit(" ", 1)[1]


async def send_with_smtplib(relay: RelayService, tls_files: dict[str, Path], sender: str, recipients: list[str], data: bytes) -> str:
    def send(client: smtplib.SMTP) -> str:
        client.mail(sender)
        for rcpt in recipients:
            code, text = client.rcpt(rcpt)
            assert code == 250, text
        code, text = client.data(data)
        assert code == 250, text
        return queue_id_of(text)

    return await with_smtplib(relay.served[0], tls_files, send)


async def test_message_id_and_date_are_added_when_missing(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    queue_id = await send_with_smtplib(relay, tls_files, "x@a.example", ["r@d.example"], message())
    parsed = email.message_from_bytes(stored_body(seeded.store_path, queue_id), policy=email.policy.default)
    assert re.fullmatch(rf"<\d{{14}}\.{queue_id}@relay\.test>", parsed["Message-ID"]), parsed["Message-ID"]
    date = email.utils.parsedate_to_datetime(parsed["Date"])
    assert abs((date - dt.datetime.now(dt.UTC)).total_seconds()) < 3600  # a real date, not a fixed one
    # A message that has them keeps its own, and gets no second one.
    own = message(extra="Message-ID: <own@a.example>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0100\r\n")
    queue_id = await send_with_smtplib(relay, tls_files, "x@a.example", ["r@d.example"], own)
    parsed = email.message_from_bytes(stored_body(seeded.store_path, queue_id), policy=email.policy.default)
    assert parsed.get_all("Message-ID") == ["<own@a.example>"]
    assert parsed.get_all("Date") == ["Mon, 30 Nov 2026 10:00:00 +0100"]
    assert relay.context.names.lookups == 1  # the client's DNS name: once for both connections


async def test_envelope_and_header_addresses_are_kept_as_sent(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    data = message("Ann Lee <Ann.Lee@A.Example>")
    queue_id = await send_with_smtplib(relay, tls_files, "Ann.Lee@Example.COM", ["Bob.Ray@D.Example", "bob.ray@d.example", "Bob.Ray@d.EXAMPLE"], data)
    [row] = stored_messages(seeded.store_path)
    assert row["mail_from"] == "Ann.Lee@Example.COM"
    # The same mailbox twice (its domain spelled otherwise) once; a local part differing in case is another.
    assert stored_recipients(seeded.store_path, queue_id) == ["Bob.Ray@D.Example", "bob.ray@d.example"]
    assert split_trace(stored_body(seeded.store_path, queue_id))[2] == data


@pytest.mark.parametrize("names_user", [False, True])
async def test_received_header_is_the_one_postfix_writes(
    seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path], names_user: bool
) -> None:
    config = relay_config(tmp_path, tls_files, received_names_user=names_user)
    async with running_relay(seeded.store_path, config) as relay:
        queue_id = await send_with_smtplib(relay, tls_files, "x@a.example", ["r@d.example"], message())
    received = split_trace(stored_body(seeded.store_path, queue_id))[0].decode()
    lines = received.split("\r\n")
    assert lines[0] == "Received: from client.test (localhost [127.0.0.1])"
    assert re.fullmatch(r"\t\(using TLSv1\.[23] with cipher [A-Z0-9_-]+ \((\d+)/\1 bits\)\)", lines[1]), lines[1]
    if names_user:
        assert lines[2] == "\t(Authenticated sender: alice)"
    assert "alice" not in received or names_user
    assert lines[-3] == f"\tby relay.test (smtpplus) with ESMTPSA id {queue_id};"
    assert email.utils.parsedate_to_datetime(lines[-2].strip()) is not None and lines[-1] == ""
    # The email package reads it as one header.
    parsed = email.message_from_bytes(stored_body(seeded.store_path, queue_id), policy=email.policy.default)
    assert "with ESMTPSA id" in str(parsed["Received"])


def test_received_header_forms() -> None:
    header = received_header("h", "2001:db8::1", "relay.test", "UTF8SMTPA", "ABCDEFGHIJKL").decode()
    assert header.startswith("Received: from h (unknown [IPv6:2001:db8::1])\r\n\tby relay.test (smtpplus) with UTF8SMTPA id ABCDEFGHIJKL;")


# ---------------------------------------------------------------------------
# 4. Enhanced codes everywhere, HELP, Postmaster, AUTH after HELO

ENHANCED = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3} ")


async def walk(raw: Raw, steps: list[bytes]) -> list[tuple[bytes, str]]:
    """Send each line, one at a time; (line, reply) for every reply that must carry an
    enhanced code — all but the replies to HELO/EHLO and the intermediate 334 and 354
    (RFC 2034 3, RFC 4954: a 334 is base64)."""
    checked = []
    for step in steps:
        code, text = await raw.command(step)
        if step.upper().startswith((b"EHLO", b"HELO")) or code in (334, 354):
            continue
        checked.append((step, text))
    return checked


async def test_every_reply_after_ehlo_carries_an_enhanced_status_code(seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = relay_config(tmp_path, tls_files, soft_error_limit=19, hard_error_limit=20)
    async with running_relay(seeded.store_path, config) as relay:
        raw = await Raw.connect(relay.served[0])
        before_tls = [
            b"EHLO client.test", b"NOOP", b"HELP", b"HELP mail", b"HELP BOGUS", b"FOO", b"", b"\xff\xfe x",
            b"MAIL FROM:<x@a.example>", b"RCPT TO:<r@d.example>", b"DATA", b"VRFY x", b"EXPN x", b"RSET", b"RSET x",
            b"QUIT x", b"AUTH PLAIN AHgAeA==", b"X" * 600, b"MAIL FROM:<x@a.example> " + b"A" * 1200, b"STARTTLS x",
            b"HELO client.test", b"EHLO client.test",
        ]
        checked = await walk(raw, before_tls)
        code, text = await raw.command("STARTTLS")
        checked.append((b"STARTTLS", text))
        await raw.close()
        # A new connection: the error limit counts per connection.
        raw = await Raw.connect(relay.served[0])
        await raw.starttls(tls_files)
        after_tls = [
            b"EHLO client.test", b"STARTTLS", b"AUTH BOGUS", b"AUTH PLAIN", b"*", b"AUTH PLAIN !!!!",
            b"AUTH LOGIN " + base64.b64encode(b"alice"), base64.b64encode(PASSWORD["alice"].encode()), b"AUTH PLAIN x",
            b"MAIL FROM:<x@a.example> BOGUS=1", b"MAIL FROM:<x@b.example>", b"MAIL FROM x", b"MAIL FROM:<x@a.example> RET=NO",
            b"RCPT TO:<r@d.example>", b"MAIL FROM:<x@a.example>", b"MAIL FROM:<x@a.example>", b"RCPT TO:<bad%x@d.example>",
            b"RCPT TO:<Postmaster>", b"RCPT TO:<r@d.example> NOTIFY=MAYBE", b"RCPT TO:<r@d.example>", b"DATA x", b"DATA",
            message() + b".", b"DATA", b"VRFY r@d.example", b"VRFY", b"VRFY  ", b"NOOP", b"QUIT",
        ]
        checked += await walk(raw, after_tls)
        await raw.close()
    assert len(checked) >= 40
    missing = [f"{step[:40]!r} -> {text!r}" for step, text in checked if not ENHANCED.match(text)]
    assert missing == []
    replies = dict(reversed(checked))  # the first reply to each line
    assert replies[b"NOOP"] == "250 2.0.0 OK"
    assert replies[b"FOO"] == '500 5.5.2 Error: command "FOO" not recognized'
    assert replies[b""] == replies[b"\xff\xfe x"] == "501 5.5.4 Error: bad syntax"
    assert replies[b"X" * 600] == "500 5.5.6 Command line too long"
    assert replies[b"STARTTLS"] == "220 2.0.0 Ready to start TLS"
    assert replies[b"QUIT x"] == "501 5.5.4 Syntax: QUIT"
    assert replies[b"QUIT"] == "221 2.0.0 Bye"
    assert replies[b"VRFY r@d.example"] == "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
    assert replies[b"VRFY"] == replies[b"VRFY  "] == "501 5.5.4 Syntax: VRFY address"


async def test_the_fifth_unknown_command_closes_the_connection_with_421(relay: RelayService) -> None:
    raw = await Raw.connect(relay.served[0])
    replies = [await raw.command(f"FOO{n}") for n in range(5)]
    assert [code for code, _ in replies] == [500, 500, 500, 500, 421]  # RFC 5321 3.8: a server closing says 421
    assert replies[-1][1] == "421 4.7.0 Too many unrecognized commands, closing connection"
    assert await raw.closed()


async def test_help_answers_214_with_the_real_commands(relay: RelayService, tls_files: dict[str, Path]) -> None:
    def ask(client: smtplib.SMTP) -> tuple[bytes, bytes]:
        return client.help(), client.help("MAIL")

    raw = await Raw.connect(relay.served[0])
    code, text = await raw.command("HELP")
    await raw.close()
    assert code == 214
    assert text == "214 2.0.0 Commands: AUTH DATA EHLO EXPN HELO HELP MAIL NOOP QUIT RCPT RSET STARTTLS VRFY"
    listing, mail = await with_smtplib(relay.served[0], tls_files, ask, login=None)  # smtplib wants 214
    assert listing.startswith(b"2.0.0 Commands: AUTH ") and mail.startswith(b"2.0.0 Syntax: MAIL FROM:<address>")


@pytest.mark.parametrize("spelling", ["Postmaster", "POSTMASTER", "postmaster"])
async def test_postmaster_without_a_domain_goes_to_the_operators_address(
    seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path], spelling: str
) -> None:
    config = relay_config(tmp_path, tls_files, postmaster_address="ops@ops.example")
    async with running_relay(seeded.store_path, config) as relay:
        queue_id = await send_with_smtplib(relay, tls_files, "x@a.example", [f"<{spelling}>", "r@d.example"], message())
    assert stored_recipients(seeded.store_path, queue_id) == ["ops@ops.example", "r@d.example"]


async def test_postmaster_without_a_setting_is_550_naming_it(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    assert (await raw.login("alice"))[0] == 235
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
    assert await raw.command("RCPT TO:<Postmaster>") == (
        550, "550 5.1.1 <Postmaster>: no postmaster address is set on this relay (postmaster_address)",
    )
    assert (await raw.command("RCPT TO:<postmaster@>"))[0] == 553  # a malformed address is not the exception
    await raw.close()


def test_a_postmaster_address_that_is_no_address_is_a_config_error() -> None:
    assert load_config(environ={"SMTPPLUS_POSTMASTER_ADDRESS": "ops@ops.example"}).postmaster_address == "ops@ops.example"
    with pytest.raises(ConfigError, match="postmaster_address 'ops' is not a usable address .* e.g. ops@example.com"):
        load_config(environ={"SMTPPLUS_POSTMASTER_ADDRESS": "ops"})


async def test_auth_after_helo_is_accepted(relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]) -> None:
    """A printer: HELO, STARTTLS, HELO again, AUTH, one message."""
    raw = await Raw.connect(relay.served[0])
    assert (await raw.command("HELO printer"))[0] == 250
    assert (await raw.command("STARTTLS"))[0] == 220
    await raw.writer.start_tls(ssl.create_default_context(cafile=str(tls_files["ca"])), server_hostname="127.0.0.1")
    assert (await raw.command("HELO printer"))[0] == 250
    token = base64.b64encode(f"\0alice\0{PASSWORD['alice']}".encode()).decode()
    assert await raw.command(f"AUTH PLAIN {token}") == (235, "235 2.7.0 Authentication successful")
    assert (await raw.command("MAIL FROM:<x@a.example>"))[0] == 250
    assert (await raw.command("RCPT TO:<r@d.example>"))[0] == 250
    assert (await raw.command("DATA"))[0] == 354
    code, text = await raw.command(message() + b".")
    assert code == 250, text
    await raw.close()
    received = split_trace(stored_body(seeded.store_path, queue_id_of(text)))[0]
    assert received.startswith(b"Received: from printer (") and b" with ESMTPSA id " in received


# ---------------------------------------------------------------------------
# 5. Client bytes are escaped in every log line and event


async def test_client_bytes_never_reach_a_log_line_raw(
    relay: RelayService, seeded: Seeded, tls_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    raw = await Raw.connect(relay.served[0])
    await raw.command(b"\x1b[31mEVIL\x1b]52;c;aGk=\x07")  # an unknown command: colour, then OSC 52
    await raw.command(b"EHLO \x1b[2Jhost\x9b")
    await raw.command(b"MAIL FROM:<\x1b[31m@a.example>")  # before AUTH: counted into one event
    await raw.close()
    raw = await Raw.connect(relay.served[0])
    await raw.starttls(tls_files)
    await raw.command("EHLO client.test")
    token = base64.b64encode(b"\0\x1b[31malice\0wrong").decode()
    assert (await raw.command(f"AUTH PLAIN {token}"))[0] == 535
    await raw.close()
    await settle(relay)
    lines = [record.getMessage() for record in caplog.records]
    assert any("unrecognised command \\x1b[31MEVIL" in line for line in lines), lines  # upper-cased by aiosmtpd
    raw_lines = [line for line in lines if any(ch in line for ch in "\x1b\x07\x9b")]
    assert raw_lines == []
    stored = rows(seeded.store_path, lambda db: [tuple(map(str, row)) for row in db.execute("SELECT username, detail FROM events")])
    assert stored and not [row for row in stored if any(ch in "".join(row) for ch in "\x1b\x07\x9b")]
    # The attempted login, defused as every log field is (docs/replies.md): ESC shows as \x1b, not "?".
    assert any(row[0] == "\\x1b[31malice" for row in stored), stored


def _hops(count: int) -> str:
    return "".join(
        f"Received: from hop{n}.example (hop{n}.example [192.0.2.{n % 250 + 1}])\r\n\tby mx{n}.example; "
        "Tue, 1 Dec 2026 05:00:00 +0000\r\n"
        for n in range(count)
    )


async def test_a_mail_loop_ends_at_the_hop_limit_as_postfix_ends_it(
    relay: RelayService, seeded: Seeded, tls_files: dict[str, Path]
) -> None:
    """RFC 5321 6.3, Postfix's hopcount_limit (50): a message that already carries 49
    Received: headers (50 with this relay's own) is refused with 554 5.4.6; one with
    48 goes on (smtplib as the client)."""

    def send(client: smtplib.SMTP) -> tuple[Any, Any]:
        looping = message(extra=_hops(49))
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("x@a.example", ["r@d.example"], looping)
        return (refused.value.smtp_code, refused.value.smtp_error), client.sendmail(
            "x@a.example", ["r@d.example"], message(extra=_hops(48))
        )

    (code, text), accepted = await with_smtplib(relay.served[0], tls_files, send)
    assert (code, text) == (554, b"5.4.6 Too many hops") and accepted == {}
    await settle(relay)
    assert len(stored_messages(seeded.store_path)) == 1
    [event] = events(seeded.store_path, reason="too-many-hops")
    assert "50 Received: headers (hopcount_limit 50)" in event.detail


def test_the_hop_limit_is_a_setting_of_at_least_two() -> None:
    assert load_config(None, {"hopcount_limit": 2}, environ={}).hopcount_limit == 2
    with pytest.raises(ConfigError, match="hopcount_limit 1 must be at least 2"):
        load_config(None, {"hopcount_limit": 1}, environ={})
