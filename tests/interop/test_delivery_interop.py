"""Delivery against real aiosmtpd next hops that lack SIZE, 8BITMIME, SMTPUTF8 or DSN,
or answer 452 after N recipients: messages go in through the intake API with the
envelope parameters a client declared, out through the real delivery engine."""

from __future__ import annotations

import email
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from relay.delivery.prepare import size_limit
from relay.reasons import Reason
from relay.store import queue as q
from relay.store.events import find_events
from relay.store.intake import NewMessage, RecipientDsn, count_messages, insert_messages
from relay.store.settings import Keys, set_setting
from tests.delivery.conftest import eventually, fast_config, running_engine
from tests.interop.nexthop import NextHop, Transaction

SENDER = "ann@example.com"
SYSTEM_SENDER = "postmaster@relay.test"


def plain(to: list[str], *, body: str = "hello\r\n", subject: str = "hi", headers: str = "", **fields: Any) -> NewMessage:
    data = (
        f"From: {SENDER}\r\nTo: {to[0]}\r\nSubject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}@example.com>\r\n"
        f"{headers}\r\n{body}"
    ).encode()
    return NewMessage(mail_from=fields.pop("mail_from", SENDER), recipients=to, data=data, subject=subject, **fields)


def point(db: Any, hop: NextHop) -> None:
    q.set_next_hop(db, hop.address)
    q.set_parallel(db, 1)
    set_setting(db, Keys.SYSTEM_SENDER, SYSTEM_SENDER)


def state_of(db: Any, queue_id: str) -> str:
    return str(q.message_detail(db, queue_id).message.state)


def reasons_of(db: Any, queue_id: str) -> list[str]:
    return [e.reason for e in q.message_detail(db, queue_id).events]


def event_detail(db: Any, queue_id: str, reason: Reason) -> str:
    return next(e.detail for e in q.message_detail(db, queue_id).events if e.reason == str(reason))


def bounces(hop: NextHop) -> list[Transaction]:
    return [t for t in hop.transactions if t.mail_from == ""]


def report_fields(t: Transaction) -> str:
    report = t.parsed()
    status = list(report.iter_parts())[1]
    return "".join(str(p) for p in status.get_payload())  # type: ignore[union-attr]


def recipient_reports(t: Transaction) -> dict[str, Any]:
    """The per-recipient field groups of a bounce's message/delivery-status part, as the
    email package parses them, by Final-Recipient address."""
    report = t.parsed()
    assert report.get_content_type() == "multipart/report"
    status = list(report.iter_parts())[1]
    assert status.get_content_type() == "message/delivery-status"
    _per_message, *per_recipient = status.get_payload()  # type: ignore[misc]
    return {str(group["Final-Recipient"]).partition(";")[2].strip(): group for group in per_recipient}


def diagnostic_type(group: Any) -> str:
    return str(group["Diagnostic-Code"]).partition(";")[0].strip()


async def test_size_and_dsn_parameters_go_to_a_hop_that_offers_them_and_it_reports_by_itself(db: Any, store_path: Path) -> None:
    async with NextHop() as hop:
        point(db, hop)
        msg = plain(
            ["bob@example.net", "cy@example.net"], dsn_ret="HDRS", dsn_envid="QQ+2B314", mail_auth=SENDER,
            recipient_dsn={"bob@example.net": RecipientDsn("SUCCESS,FAILURE", "rfc822;Bob@Example.NET")},
        )
        [queued] = insert_messages(db, [msg])
        async with running_engine(store_path):
            [t] = await hop.wait_for(1)
            await eventually(lambda: state_of(db, queued.queue_id) == "sent")
    assert t.mail_params["SIZE"] == str(len(t.data)) == str(len(msg.data))
    assert t.mail_params["RET"] == "HDRS" and t.mail_params["ENVID"] == "QQ+2B314"
    assert dict(t.rcpts) == {
        "bob@example.net": {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;Bob@Example.NET"},
        "cy@example.net": {},
    }
    assert "BODY" not in t.mail_params and "SMTPUTF8" not in t.mail_params and "AUTH" not in t.mail_params
    # The hop offers DSN: it sends the success report, not this relay.
    assert count_messages(db, origin="system") == 0


async def test_a_hop_without_size_or_dsn_gets_neither_and_notify_success_gets_a_relayed_report(db: Any, store_path: Path) -> None:
    async with NextHop(size=False, dsn=False) as hop:
        point(db, hop)
        msg = plain(
            ["bob@example.net", "cy@example.net"], dsn_envid="env+2D1",
            recipient_dsn={"bob@example.net": RecipientDsn("SUCCESS", "rfc822;bob@example.net")},
        )
        [queued] = insert_messages(db, [msg])
        async with running_engine(store_path):
            transactions = await hop.wait_for(2)
            await eventually(lambda: state_of(db, queued.queue_id) == "sent")
    [mail, report] = transactions
    assert mail.mail_params == {} and all(params == {} for _address, params in mail.rcpts)
    assert report.mail_from == "" and report.rcpt_tos == [SENDER]
    parsed = report.parsed()
    assert parsed["From"].addresses[0].addr_spec == SYSTEM_SENDER
    assert parsed["Subject"] == "Successful Mail Delivery Report"
    fields = report_fields(report)
    assert "Original-Envelope-Id: env-1" in fields
    assert "Original-Recipient: rfc822;bob@example.net" in fields
    assert "Final-Recipient: rfc822; bob@example.net" in fields and "Action: relayed" in fields
    assert "cy@example.net" not in fields  # no NOTIFY: nothing to say about a success
    assert "Remote-MTA: dns; [127.0.0.1]\n" in fields and f":{hop.port}" not in fields
    assert str(Reason.DSN_RELAYED) in reasons_of(db, queued.queue_id)


async def test_bounces_honour_notify_never_ret_hdrs_ret_full_and_envid(db: Any, store_path: Path) -> None:
    async with NextHop(dsn=False) as hop:
        point(db, hop)
        never = plain(
            ["bad-never@example.net", "bad-told@example.net"], subject="secret one", body="the secret body\r\n",
            dsn_ret="HDRS", dsn_envid="E1",
            recipient_dsn={
                "bad-never@example.net": RecipientDsn("NEVER"),
                "bad-told@example.net": RecipientDsn("FAILURE", "rfc822;told@example.net"),
            },
        )
        full = plain(["bad-full@example.net"], subject="full one", body="the whole body\r\n", dsn_ret="FULL")
        silent = plain(["bad-quiet@example.net"], subject="quiet", recipient_dsn={"bad-quiet@example.net": RecipientDsn("NEVER")})
        queued = insert_messages(db, [never, full, silent])
        async with running_engine(store_path, fast_config(server_name="relay.test")):
            await hop.wait_for(2)
            await eventually(lambda: all(state_of(db, m.queue_id) == "failed" for m in queued))
    assert len(bounces(hop)) == 2
    hdrs = next(t for t in bounces(hop) if b"Subject: secret one" in t.data)
    fields = report_fields(hdrs)
    assert "Original-Envelope-Id: E1" in fields and "Reporting-MTA: dns; relay.test" in fields
    assert "bad-told@example.net" in fields and "Original-Recipient: rfc822;told@example.net" in fields
    notice = list(hdrs.parsed().iter_parts())[0].get_content()  # type: ignore[attr-defined]
    assert "bad-told@example.net" in notice
    assert "bad-never@example.net" not in notice and "bad-never@example.net" not in fields
    assert b"the secret body" not in hdrs.data
    assert list(hdrs.parsed().iter_parts())[2].get_content_type() == "text/rfc822-headers"
    whole = next(t for t in bounces(hop) if b"Subject: full one" in t.data)
    returned = list(whole.parsed().iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822" and b"the whole body" in whole.data
    assert "Status: 5.1.1" in report_fields(whole)
    assert str(Reason.BOUNCE_SUPPRESSED) in reasons_of(db, queued[2].queue_id)
    assert str(Reason.BOUNCE_QUEUED) not in reasons_of(db, queued[2].queue_id)


async def test_no_bounce_is_ever_sent_for_a_null_reverse_path(db: Any, store_path: Path) -> None:
    async with NextHop() as hop:
        point(db, hop)
        [queued] = insert_messages(db, [plain(["bad@example.net"], mail_from="", dsn_ret="FULL")])
        async with running_engine(store_path):
            await eventually(lambda: state_of(db, queued.queue_id) == "failed")
    assert hop.transactions == [] and count_messages(db, origin="system") == 0
    assert "null reverse path" in event_detail(db, queued.queue_id, Reason.BOUNCE_SUPPRESSED)


EIGHT_BIT = (
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n"
)
EIGHT_BIT_BODY = (
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + "Grüße aus Köln — ½ € ✓\r\nzweite Zeile\r\n".encode()
    + b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    + bytes(range(1, 256)).replace(b"\r", b"").replace(b"\n", b"")
    + b"\r\n--b1--\r\n"
)


def eight_bit_message(to: str, **fields: Any) -> NewMessage:
    head = f"From: {SENDER}\r\nTo: {to}\r\nSubject: 8bit\r\n".encode() + EIGHT_BIT
    return NewMessage(mail_from=SENDER, recipients=[to], data=head + b"\r\n" + EIGHT_BIT_BODY, body_type="8BITMIME", **fields)


async def test_8bit_mime_is_downgraded_for_a_hop_without_8bitmime_and_reads_the_same(db: Any, store_path: Path) -> None:
    async with NextHop(eightbit=False) as old, NextHop() as modern:
        point(db, old)
        msg = eight_bit_message("bob@example.net")
        [queued] = insert_messages(db, [msg])
        async with running_engine(store_path):
            [t] = await old.wait_for(1)
            await eventually(lambda: state_of(db, queued.queue_id) == "sent")
        point(db, modern)
        [again] = insert_messages(db, [eight_bit_message("cy@example.net")])
        async with running_engine(store_path):
            [same] = await modern.wait_for(1)
            await eventually(lambda: state_of(db, again.queue_id) == "sent")
    assert t.data.isascii() and "BODY" not in t.mail_params
    original = email.message_from_bytes(msg.data, policy=default_policy)
    received = t.parsed()
    assert [p.get_payload(decode=True) for p in received.walk() if not p.is_multipart()] == [
        p.get_payload(decode=True) for p in original.walk() if not p.is_multipart()
    ]
    assert list(received.iter_parts())[0].get_content() == list(original.iter_parts())[0].get_content()  # type: ignore[attr-defined]
    assert "2 8-bit MIME part(s)" in event_detail(db, queued.queue_id, Reason.DOWNGRADED_8BIT)
    # A hop with 8BITMIME gets the bytes as they were, declared.
    assert same.data == eight_bit_message("cy@example.net").data and same.mail_params["BODY"] == "8BITMIME"


async def test_lines_over_998_octets_are_folded_on_delivery_with_an_event(db: Any, store_path: Path) -> None:
    long_subject = " ".join(f"w{i}" for i in range(600))
    async with NextHop() as hop:
        point(db, hop)
        body = "A" * 2500 + "\r\nshort\r\n"
        msg = plain(["bob@example.net"], body=body, headers=f"X-Long: {long_subject}\r\n")
        [queued] = insert_messages(db, [msg])
        async with running_engine(store_path):
            [t] = await hop.wait_for(1)
            await eventually(lambda: state_of(db, queued.queue_id) == "sent")
    assert max(len(line) for line in t.data.split(b"\r\n")) <= 998
    parsed = email.message_from_bytes(t.data, policy=default_policy)
    assert parsed["X-Long"] == long_subject  # folded at its own spaces: unfolds to the same
    assert parsed.get_content().replace("\r\n ", "") == "A" * 2500 + "\r\nshort\r\n"  # type: ignore[attr-defined]
    assert "2 line(s) over 998 octets folded" in event_detail(db, queued.queue_id, Reason.LINES_FOLDED)


async def test_a_message_needing_smtputf8_fails_with_5_6_7_at_a_hop_without_it_and_bounces(db: Any, store_path: Path) -> None:
    async with NextHop(smtputf8=False) as old, NextHop() as modern:
        point(db, old)
        [needs] = insert_messages(db, [plain(["bob@example.net"], headers="X-Name: Jürgen\r\n", smtputf8=True)])
        # Declared, but all ASCII: it does not need SMTPUTF8 and goes without it (as Postfix does).
        [ascii_only] = insert_messages(db, [plain(["cy@example.net"], smtputf8=True)])
        async with running_engine(store_path):
            await old.wait_for(2)
            await eventually(lambda: state_of(db, needs.queue_id) == "failed")
            await eventually(lambda: state_of(db, ascii_only.queue_id) == "sent")
        [bounce] = bounces(old)
        point(db, modern)
        [ok] = insert_messages(db, [plain(["jürgen@example.net"], smtputf8=True)])
        async with running_engine(store_path):
            [t] = await modern.wait_for(1)
            await eventually(lambda: state_of(db, ok.queue_id) == "sent")
    detail = q.message_detail(db, needs.queue_id)
    assert detail.recipients[0].state == "failed" and "5.6.7" in str(detail.recipients[0].last_reply)
    assert str(Reason.FAILED_NO_SMTPUTF8) in reasons_of(db, needs.queue_id)
    assert old.rcpt_commands == 2  # the ASCII message's and the bounce's: the other never went out
    assert [t.rcpt_tos for t in old.transactions if t.mail_from] == [["cy@example.net"]]
    assert bounce.rcpt_tos == [SENDER] and "Status: 5.6.7" in report_fields(bounce)
    # The relay refused it before sending: no server said 5.6.7 (RFC 3464 §2.3.6).
    group = recipient_reports(bounce)["bob@example.net"]
    assert diagnostic_type(group) == "X-Smtpplus" and "5.6.7" in str(group["Diagnostic-Code"])
    assert group["Remote-MTA"] is None
    assert "SMTPUTF8" in t.mail_params and t.rcpt_tos == ["jürgen@example.net"]


async def test_a_452_for_some_recipients_sends_the_rest_in_a_new_transaction_at_once(db: Any, store_path: Path) -> None:
    recipients = [f"r{i}@example.net" for i in range(8)]
    async with NextHop(rcpt_limit=3) as hop:
        point(db, hop)
        [queued] = insert_messages(db, [plain(recipients)])
        async with running_engine(store_path):
            await eventually(lambda: state_of(db, queued.queue_id) == "sent")
    assert [len(t.rcpt_tos) for t in hop.transactions] == [3, 3, 2]
    assert sorted(a for t in hop.transactions for a in t.rcpt_tos) == sorted(recipients)
    detail = q.message_detail(db, queued.queue_id)
    assert detail.message.attempts == 1 and {r.state for r in detail.recipients} == {"sent"}
    assert "8 recipient(s) in 3 transaction(s)" in event_detail(db, queued.queue_id, Reason.RECIPIENTS_SPLIT)
    assert str(Reason.DEFERRED_4XX) not in reasons_of(db, queued.queue_id)


async def test_recipients_per_transaction_splits_a_large_list_by_itself(db: Any, store_path: Path) -> None:
    recipients = [f"r{i}@example.net" for i in range(5)]
    async with NextHop() as hop:
        point(db, hop)
        [queued] = insert_messages(db, [plain(recipients)])
        async with running_engine(store_path, fast_config(recipients_per_transaction=2)):
            await eventually(lambda: state_of(db, queued.queue_id) == "sent")
    assert [len(t.rcpt_tos) for t in hop.transactions] == [2, 2, 1]
    assert hop.rcpt_commands == 5  # no recipient was offered twice


async def test_an_undotted_server_name_is_a_warning_with_the_fix_at_start(db: Any, store_path: Path) -> None:
    async with running_engine(store_path, fast_config(server_name="vm")):
        await eventually(lambda: find_events(db, reason=str(Reason.SERVER_NAME_UNDOTTED), limit=5))
    [warning] = find_events(db, reason=str(Reason.SERVER_NAME_UNDOTTED), limit=5)
    assert "'vm' has no dot" in warning.detail and "server_name" in warning.detail and "--system-sender" in warning.detail
    async with running_engine(store_path, fast_config(server_name="relay.test")):
        pass
    assert len(find_events(db, reason=str(Reason.SERVER_NAME_UNDOTTED), limit=5)) == 1


async def test_a_bounce_names_non_ascii_addresses_as_they_are_and_goes_with_smtputf8(db: Any, store_path: Path) -> None:
    sender = "j\u00f6rg@example.com"
    async with NextHop() as hop:
        point(db, hop)
        msg = plain(["bad@b\u00fccher.example", "bad\u00fcser@example.net"], mail_from=sender, smtputf8=True)
        [queued] = insert_messages(db, [msg])
        async with running_engine(store_path, fast_config(server_name="relay.test")):
            await eventually(lambda: state_of(db, queued.queue_id) == "failed")
            await hop.wait_for(1)
    [bounce] = bounces(hop)
    assert bounce.rcpt_tos == [sender] and "SMTPUTF8" in bounce.mail_params
    assert b"\r\nTo: <" + sender.encode() + b">\r\n" in bounce.data
    fields = report_fields(bounce)
    assert "Final-Recipient: rfc822; bad@xn--bcher-kva.example" in fields
    assert "Final-Recipient: utf-8; bad\\x{FC}ser@example.net" in fields
    notice = list(bounce.parsed().iter_parts())[0].get_content()  # type: ignore[attr-defined]
    assert "<bad@b\u00fccher.example>" in notice and "<bad\u00fcser@example.net>" in notice


async def test_smtputf8_goes_on_only_when_the_client_declared_it(db: Any, store_path: Path) -> None:
    async with NextHop() as hop:
        point(db, hop)
        undeclared = plain(["bob@example.net"], subject="t\u00e9", body_type="8BITMIME", mail_from="ceo@other.example")
        declared = plain(["cy@example.net"], subject="t\u00e9 too", body_type="8BITMIME", smtputf8=True)
        queued = insert_messages(db, [undeclared, declared])
        async with running_engine(store_path):
            await hop.wait_for(2)
            await eventually(lambda: all(state_of(db, m.queue_id) == "sent" for m in queued))
    [plain_8bit] = hop.to("bob@example.net")
    [utf8] = hop.to("cy@example.net")
    # 8-bit header text from a client that did not declare SMTPUTF8 goes as it came,
    # without the relay vouching for it (Postfix: no autodetect for smtpd mail).
    assert plain_8bit.mail_params.get("BODY") == "8BITMIME" and "SMTPUTF8" not in plain_8bit.mail_params
    assert plain_8bit.data == undeclared.data
    assert "SMTPUTF8" in utf8.mail_params


async def test_a_message_over_the_hops_size_fails_with_5_3_4_unsent_and_bounces(db: Any, store_path: Path) -> None:
    async with NextHop(size_limit=3000, refuse_prefix="nobody") as hop:  # room for the bounce (headers only)
        point(db, hop)
        big = plain(["bob@example.net"], subject="big", body=("x" * 70 + "\r\n") * 60)
        small = plain(["cy@example.net"], subject="small")
        queued = insert_messages(db, [big, small])
        async with running_engine(store_path):
            await hop.wait_for(2)
            await eventually(lambda: state_of(db, queued[0].queue_id) == "failed")
            await eventually(lambda: state_of(db, queued[1].queue_id) == "sent")
    assert hop.to("bob@example.net") == []  # never offered: no MAIL SIZE=… the hop must refuse
    [sent] = hop.to("cy@example.net")
    assert int(sent.mail_params["SIZE"]) == len(sent.data) <= 3000
    detail = q.message_detail(db, queued[0].queue_id)
    reply = str(detail.recipients[0].last_reply)
    assert reply == f"552 5.3.4 message size {len(big.data)} exceeds size limit 3000 of server {hop.address}"
    assert str(Reason.FAILED_SIZE_LIMIT) in reasons_of(db, queued[0].queue_id)
    [bounce] = bounces(hop)
    assert bounce.rcpt_tos == [SENDER] and "Status: 5.3.4" in report_fields(bounce)
    group = recipient_reports(bounce)["bob@example.net"]  # refused here, before MAIL: the relay's own words
    assert diagnostic_type(group) == "X-Smtpplus" and str(group["Diagnostic-Code"]).endswith(reply)
    assert group["Remote-MTA"] is None and group["Action"] == "failed" and group["Status"] == "5.3.4"


async def test_a_bounce_says_smtp_and_remote_mta_only_for_what_the_hop_answered(db: Any, store_path: Path) -> None:
    # One recipient the hop refuses with its own 550, one message the relay refuses by
    # itself (over the hop's SIZE): two bounces, told apart by their Diagnostic-Code.
    async with NextHop(size_limit=3000) as hop:
        point(db, hop)
        refused = plain(["bad-one@example.net", "cy@example.net"], subject="refused")
        big = plain(["dee@example.net"], subject="big", body=("x" * 70 + "\r\n") * 60)
        queued = insert_messages(db, [refused, big])
        async with running_engine(store_path):
            await eventually(lambda: len(bounces(hop)) == 2)
            await eventually(lambda: state_of(db, queued[1].queue_id) == "failed")
    by_recipient = {a: g for t in bounces(hop) for a, g in recipient_reports(t).items()}
    assert set(by_recipient) == {"bad-one@example.net", "dee@example.net"}
    remote, local = by_recipient["bad-one@example.net"], by_recipient["dee@example.net"]
    assert diagnostic_type(remote) == "smtp" and str(remote["Diagnostic-Code"]).startswith("smtp; 550 5.1.1")
    assert remote["Remote-MTA"] == "dns; [127.0.0.1]" and remote["Status"] == "5.1.1"
    assert diagnostic_type(local) == "X-Smtpplus" and "552 5.3.4 message size" in str(local["Diagnostic-Code"])
    assert local["Remote-MTA"] is None and local["Status"] == "5.3.4"


def test_the_size_keyword_gives_a_limit_only_when_it_names_one() -> None:
    assert size_limit("200") == 200 and size_limit(" 10240000 ") == 10240000
    assert size_limit(None) is None and size_limit("") is None and size_limit("0") is None and size_limit("x") is None
