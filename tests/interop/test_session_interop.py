"""The session as clients nobody on this project wrote see it: Python's smtplib, curl
and raw pipelined bytes, against a real relay on 127.0.0.1 with real TLS and a real
store (issue 12: MAIL/RCPT parameters, PIPELINING, SMTPUTF8, headers, null sender,
enhanced codes everywhere, Postmaster, escaped logs)."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import email.utils
import re
import shutil
import smtplib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.message import received_header
from relay.service import RelayService
from tests.relay.support import (
    PASSWORD,
    Raw,
    Seeded,
    message,
    relay_config,
    rows,
    running_relay,
    seed_store,
    settle,
    split_trace,
    stored_body,
    stored_messages,
    stored_recipients,
)


@pytest.fixture
def seeded(store_path: Path) -> Seeded:
    return seed_store(store_path)


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
