"""The session's pure rules (relay.rules), called directly: no socket, no store."""

from __future__ import annotations

from relay.reasons import Reason
from relay.replies import Replies, reply
from relay.rules import (
    MailParameters,
    Refusal,
    address_check,
    check_headers,
    envelope_address,
    hop_refusal,
    mail_auth,
    mail_parameters_refusal,
    needs_smtputf8,
    parse_mail_parameters,
    parse_rcpt_parameters,
    recipient_refusal,
    sender_refusal,
    xtext_decode,
)
from relay.store.directory import AuthRecord
from relay.store.intake import RecipientDsn


def _user(senders: dict[str, str] | None = None, domains: dict[str, str] | None = None) -> AuthRecord:
    return AuthRecord(1, "u", "hash", True, 1, 3, 1, "L", dict(senders or {}), dict(domains or {}))


def test_sender_rules_name_the_reason() -> None:
    user = _user(domains={"a.example": "verified"})
    assert sender_refusal("ann@a.example", user) is None
    assert sender_refusal("", user) is None  # the null reverse-path: From:/Sender: decide at DATA
    routed = sender_refusal("@x.example:ann@a.example", user)
    assert routed is not None and routed.reply == reply(Replies.SENDER_FORM, addr="@x.example:ann@a.example", problem="source-route")
    other = sender_refusal("ann@b.example", user)
    assert other is not None and other.reason is Reason.SENDER_NOT_AUTHORIZED


def test_recipient_rules() -> None:
    assert recipient_refusal("bob@b.example") is None
    bang = recipient_refusal("a!b@b.example")
    assert bang is not None and bang.reply.startswith("553 5.1.3 ")


def test_one_trailing_dot_on_an_envelope_domain_is_dropped_as_postfix_does() -> None:
    user = _user(domains={"a.example": "verified"})
    assert sender_refusal("Ann@A.Example.", user) is None  # authorized as ann@a.example
    assert recipient_refusal("Bob@Example.NET.") is None
    assert address_check("Bob@Example.NET.").address == address_check("bob@example.net").address == "bob@example.net"
    for bad in ("bob@example.net..", "bob@.", "bob@..", "bob@example..net"):
        refused = recipient_refusal(bad)
        assert refused is not None and refused.reason is Reason.RECIPIENT_INVALID, bad
        assert sender_refusal(bad.replace("example.net", "a.example"), user) is not None, bad
    # Kept as sent, case and all, less that one dot.
    assert envelope_address(" Bob@Example.NET. ") == "Bob@Example.NET"
    assert envelope_address("Bob@Example.NET") == "Bob@Example.NET"
    assert envelope_address('"a.b."@example.net.') == '"a.b."@example.net'
    assert envelope_address("") == ""
    assert mail_auth("<Ann@A.Example.>", user) == "Ann@A.Example"


def test_mail_parameters() -> None:
    assert mail_parameters_refusal(["SIZE=10", "BODY=8BITMIME"], 100) is None
    big = mail_parameters_refusal(["SIZE=101"], 100)
    assert big is not None and big.reply == Replies.TOO_LARGE
    bad = mail_parameters_refusal(["BODY=9BIT"], 100)
    assert bad is not None and bad.reply == reply(Replies.PARAMETER_SYNTAX, name="BODY")


def test_xtext() -> None:
    assert xtext_decode("QQ+2B1") == "QQ+1"
    assert xtext_decode("a+40b") == "a@b"
    for bad in ("a+4", "a+zz", "a+4a", "a=b", "a b", "é"):
        assert xtext_decode(bad) is None, bad
    assert xtext_decode("é", utf8=True) == "é"


def test_mail_and_rcpt_parameters_parse_to_what_intake_keeps() -> None:
    parsed = parse_mail_parameters(["size=10", "body=8bitmime", "SMTPUTF8", "AUTH=<>", "ret=hdrs", "ENVID=x+2B"], 100)
    assert parsed == MailParameters(size=10, body="8BITMIME", smtputf8=True, auth="<>", ret="HDRS", envid="x+2B")
    assert parse_rcpt_parameters(["notify=delay,failure", "ORCPT=rfc822;a+40b"], False) == RecipientDsn("DELAY,FAILURE", "rfc822;a+40b")
    assert parse_rcpt_parameters([], False) == RecipientDsn()
    assert isinstance(parse_rcpt_parameters(["NOTIFY=NEVER,DELAY"], False), Refusal)


def test_auth_parameter_kept_only_for_an_address_the_user_may_send_as() -> None:
    user = _user(domains={"a.example": "verified", "p.example": "pending"})
    assert mail_auth(None, user) is None
    assert mail_auth("<>", user) == "<>"
    assert mail_auth("Ann@A.example", user) == "Ann@A.example"
    assert mail_auth("<ann@a.example>", user) == "ann@a.example"
    assert mail_auth("ann@p.example", user) == "<>"
    assert mail_auth("ann@elsewhere.example", user) == "<>"


def test_internationalized_local_parts_only_with_smtputf8() -> None:
    assert address_check("jörg@a.example").problem is not None
    assert address_check("jörg@a.example", utf8=True).address == "jörg@a.example"
    assert address_check("jörg%x@a.example", utf8=True).problem is not None
    assert address_check("j\udcffrg@a.example", utf8=True).problem is not None
    assert needs_smtputf8("jörg@a.example") is not None and needs_smtputf8("j@a.example") is None


def test_header_checks_remembered_per_value_still_judge_each_user() -> None:
    """check_headers remembers what it reads from a From:/Sender: value; who may send
    as the addresses in it is decided for every message's user."""
    section = b"From: Ann <ann@a.example>\r\nSender: ops@b.example\r\nSubject: hi\r\n"
    allowed = _user(senders={"ann@a.example": "verified"}, domains={"b.example": "verified"})
    unverified = _user(senders={"ann@a.example": "verified"}, domains={"b.example": "pending"})
    stranger = _user()
    for _ in range(2):  # the second round reads the values from memory
        refusal, fields, from_value = check_headers(section, allowed, True)
        assert refusal is None and from_value == " Ann <ann@a.example>" and len(fields) == 3
        refusal, _, _ = check_headers(section, unverified, True)
        assert refusal is not None and refusal.reason is Reason.HEADER_SENDER_UNVERIFIED
        refusal, _, _ = check_headers(section, stranger, True)
        assert refusal is not None and refusal.reason is Reason.HEADER_FROM_NOT_AUTHORIZED
        refusal, _, from_value = check_headers(b"From: \"x@a.example\" <ann@a.example>\r\n", allowed, True)
        assert refusal is not None and refusal.reason is Reason.HEADER_FROM_LOOKALIKE and from_value
        refusal, _, from_value = check_headers(b"From: \"x@a.example\" <ann@a.example>\r\n", allowed, False)
        assert refusal is not None and refusal.reason is Reason.HEADER_FROM_NOT_AUTHORIZED  # x@a.example
        refusal, _, from_value = check_headers(b"From: <ann@a.example\r\n", allowed, True)
        assert refusal is not None and refusal.reason is Reason.HEADER_FROM_INVALID and from_value == ""


def test_the_hop_count_includes_this_relays_own_received_header() -> None:
    def fields(received: int, other: int = 3) -> list[tuple[str, str]]:
        return [("received", f"from h{n}") for n in range(received)] + [("x-received", "not one"), ("from", "a@b.example")] * other

    for limit in (2, 3, 50, 100):
        for received in range(limit + 2):
            refusal = hop_refusal(fields(received), limit)
            if received + 1 < limit:
                assert refusal is None, (limit, received)
            else:
                assert refusal is not None and refusal.reply == Replies.TOO_MANY_HOPS, (limit, received)
                assert refusal.reason is Reason.TOO_MANY_HOPS
                assert f"{received + 1} Received: headers (hopcount_limit {limit})" in refusal.detail
