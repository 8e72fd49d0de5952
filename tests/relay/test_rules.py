"""The session's pure rules (relay.rules), called directly: no socket, no store."""

from __future__ import annotations

from relay.reasons import Reason
from relay.replies import Replies, reply
from relay.rules import mail_parameters_refusal, recipient_refusal, sender_refusal
from relay.store.directory import AuthRecord


def _user(senders: dict[str, str] | None = None, domains: dict[str, str] | None = None) -> AuthRecord:
    return AuthRecord(1, "u", "hash", True, 1, 3, 1, "L", dict(senders or {}), dict(domains or {}))


def test_sender_rules_name_the_reason() -> None:
    user = _user(domains={"a.example": "verified"})
    assert sender_refusal("ann@a.example", user) is None
    empty = sender_refusal("", user)
    assert empty is not None and empty.reply == Replies.SENDER_EMPTY and empty.reason is Reason.SENDER_EMPTY
    routed = sender_refusal("@x.example:ann@a.example", user)
    assert routed is not None and routed.reply == reply(Replies.SENDER_FORM, addr="@x.example:ann@a.example", problem="source-route")
    other = sender_refusal("ann@b.example", user)
    assert other is not None and other.reason is Reason.SENDER_NOT_AUTHORIZED


def test_recipient_rules() -> None:
    assert recipient_refusal("bob@b.example") is None
    bang = recipient_refusal("a!b@b.example")
    assert bang is not None and bang.reply.startswith("553 5.1.3 ")


def test_mail_parameters() -> None:
    assert mail_parameters_refusal(["SIZE=10", "BODY=8BITMIME"], 100) is None
    big = mail_parameters_refusal(["SIZE=101"], 100)
    assert big is not None and big.reply == Replies.TOO_LARGE
    bad = mail_parameters_refusal(["BODY=9BIT"], 100)
    assert bad is not None and bad.reply == reply(Replies.PARAMETER_SYNTAX, name="BODY")
