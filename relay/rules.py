"""The session's pure rules: envelope paths and parameters, who may send as whom,
and the From:/Sender: checks. No I/O and no session state, so they are tested
directly (``tests/relay/test_rules.py``) and may run in a worker thread."""

from __future__ import annotations

from dataclasses import dataclass

from relay import policy
from relay.message import (
    address_like,
    check_address,
    header_addresses,
    lookalike_addresses,
    shown,
    split_headers,
)
from relay.reasons import Reason
from relay.replies import Replies, reply
from relay.store.directory import AuthRecord


@dataclass(frozen=True, slots=True)
class Refusal:
    reply: str
    reason: Reason | None  # None: a plain syntax answer, no event
    detail: str = ""


SENDER_FORM_PROBLEMS = frozenset(
    {
        policy.AddressProblem.PERCENT,
        policy.AddressProblem.BANG,
        policy.AddressProblem.QUOTED_AT,
        policy.AddressProblem.SOURCE_ROUTE,
        policy.AddressProblem.LITERAL,
        policy.AddressProblem.NO_DOMAIN,
    }
)


def text_of(status: str) -> str:
    """A reply without its code and enhanced code (for event details)."""
    return status.split(" ", 2)[2]


# ---------------------------------------------------------------------------
# Paths


def split_path(arg: str | None, keyword: str) -> tuple[str, list[str]] | None:
    """``FROM:<a@b> SIZE=10`` → (``a@b``, [``SIZE=10``]); None when malformed.

    The path is taken verbatim (source routes and quotes kept) so policy sees what
    the client sent, not what a lenient parser made of it."""
    if arg is None or arg[: len(keyword)].upper() != keyword:
        return None
    rest = arg[len(keyword) :].lstrip()
    if not rest:
        return None
    if not rest.startswith("<"):
        parts = rest.split()
        return parts[0], parts[1:]
    end = _closing_angle(rest)
    if end is None:
        return None
    tail = rest[end + 1 :]
    if tail and not tail[0].isspace():
        return None
    return rest[1:end], tail.split()


def _closing_angle(text: str) -> int | None:
    quoted = False
    i = 1
    while i < len(text):
        ch = text[i]
        if quoted and ch == "\\":
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i
        i += 1
    return None


# ---------------------------------------------------------------------------
# Who may send as whom


def authorization(address: str, user: AuthRecord, what: str) -> tuple[str, Reason] | None:
    """Why ``user`` may not send as ``address`` (the reply and the reason), or None
    when it may.

    Exact address or exact domain, compared case-insensitively; the identity that
    authorizes it must be verified (either one, when both the address and its domain
    are listed)."""
    address = address.lower()
    domain = address.rpartition("@")[2]
    states = []
    if address in user.senders:
        states.append((address, user.senders[address]))
    if domain in user.domains:
        states.append((domain, user.domains[domain]))
    if not states:
        return reply(Replies.NOT_AUTHORIZED, addr=shown(address), what=what), Reason.SENDER_NOT_AUTHORIZED
    if any(state == "verified" for _, state in states):
        return None
    return (
        reply(Replies.AWAITS_VERIFICATION, addr=shown(address), what=what, identity=shown(states[0][0])),
        Reason.SENDER_UNVERIFIED,
    )


def sender_refusal(path: str, user: AuthRecord) -> Refusal | None:
    """Why MAIL FROM:<path> is refused for ``user``, or None."""
    if path == "":
        return Refusal(Replies.SENDER_EMPTY, Reason.SENDER_EMPTY, "MAIL FROM:<>")
    check = check_address(path)
    problem = check.problem
    detail = f"<{shown(path)}>: {problem}"
    if problem is policy.AddressProblem.CONTROL:
        return Refusal(Replies.SENDER_CONTROL, Reason.SENDER_INVALID, detail)
    if problem in SENDER_FORM_PROBLEMS:
        return Refusal(reply(Replies.SENDER_FORM, addr=shown(path), problem=problem), Reason.SENDER_INVALID, detail)
    if problem is not None:
        return Refusal(reply(Replies.SENDER_SYNTAX, addr=shown(path), problem=problem), Reason.SENDER_INVALID, detail)
    assert check.address is not None
    denied = authorization(check.address, user, "sender")
    if denied is not None:
        status, reason = denied
        return Refusal(status, reason, f"envelope sender {text_of(status)}")
    return None


def recipient_refusal(path: str) -> Refusal | None:
    """Why RCPT TO:<path> is refused, or None."""
    check = check_address(path)
    if check.problem is policy.AddressProblem.CONTROL:
        return Refusal(Replies.RECIPIENT_CONTROL, Reason.RECIPIENT_INVALID, f"<{shown(path)}>: control-character")
    if check.problem is not None or check.address is None:
        return Refusal(
            reply(Replies.RECIPIENT_FORM, addr=shown(path), problem=check.problem),
            Reason.RECIPIENT_INVALID,
            f"<{shown(path)}>: {check.problem}",
        )
    return None


def mail_parameters_refusal(params: list[str], size_limit: int) -> Refusal | None:
    """Why MAIL FROM's parameters are refused, or None."""
    for param in params:
        name, eq, value = param.partition("=")
        name = name.upper()
        if name == "SIZE" and eq and value.isdigit():
            if size_limit and int(value) > size_limit:
                return Refusal(Replies.TOO_LARGE, Reason.MESSAGE_TOO_LARGE, f"SIZE={value} over {size_limit}")
        elif name == "BODY" and value.upper() in {"7BIT", "8BITMIME"}:
            continue
        elif name in {"SIZE", "BODY"}:
            return Refusal(reply(Replies.PARAMETER_SYNTAX, name=name), None)
        else:
            return Refusal(reply(Replies.MAIL_PARAMETER_UNSUPPORTED, name=shown(name, 32)), None)
    return None


# ---------------------------------------------------------------------------
# From: and Sender:


def check_headers(section: bytes, user: AuthRecord, refuse_lookalikes: bool) -> tuple[Refusal | None, list[tuple[str, str]], str]:
    """(refusal or None, the header fields, the From: value). Pure and linear in the
    section's size, so it may run in a worker thread."""
    fields = split_headers(section)
    froms = [value for name, value in fields if name == "from"]
    senders = [value for name, value in fields if name == "sender"]
    if not froms:
        return Refusal(Replies.NO_FROM, Reason.HEADER_FROM_MISSING, "no From: header"), fields, ""
    if len(froms) > 1:
        return Refusal(Replies.SEVERAL_FROM, Reason.HEADER_FROM_MULTIPLE, f"{len(froms)} From: headers"), fields, ""
    if len(senders) > 1:
        return Refusal(Replies.SEVERAL_SENDER, Reason.HEADER_SENDER_MULTIPLE, f"{len(senders)} Sender: headers"), fields, ""
    from_addresses = header_addresses(froms[0])
    if from_addresses is None:
        return Refusal(Replies.FROM_UNPARSED, Reason.HEADER_FROM_INVALID, f"From: {shown(froms[0], 200)}"), fields, ""
    checks: list[tuple[str, str]] = [(a, "From:") for a in from_addresses]
    checks += [(a, "From:") for a in address_like(froms[0])]
    headers = [("From:", froms[0], from_addresses)]
    if senders:
        sender_addresses = header_addresses(senders[0])
        if sender_addresses is None or len(sender_addresses) != 1:
            return Refusal(Replies.SENDER_UNPARSED, Reason.HEADER_SENDER_INVALID, f"Sender: {shown(senders[0], 200)}"), fields, ""
        checks.append((sender_addresses[0], "Sender:"))
        checks += [(a, "Sender:") for a in address_like(senders[0])]
        headers.append(("Sender:", senders[0], sender_addresses))
    if refuse_lookalikes:
        for header, value, actual in headers:
            others = lookalike_addresses(value, actual)
            if others:
                reason = Reason.HEADER_SENDER_LOOKALIKE if header == "Sender:" else Reason.HEADER_FROM_LOOKALIKE
                status = reply(Replies.LOOKALIKE, header=header, other=shown(others[0]), own=shown(actual[0]))
                return Refusal(status, reason, text_of(status)), fields, froms[0]
    seen: set[tuple[str, str]] = set()
    for address, header in checks:
        if (address.lower(), header) in seen:
            continue
        seen.add((address.lower(), header))
        refusal = header_address_refusal(address, header, user)
        if refusal is not None:
            return refusal, fields, froms[0]
    return None, fields, froms[0]


def header_address_refusal(address: str, header: str, user: AuthRecord) -> Refusal | None:
    sender = header == "Sender:"
    invalid = Reason.HEADER_SENDER_INVALID if sender else Reason.HEADER_FROM_INVALID
    if len(address) > policy.MAX_LOCAL_PART + policy.MAX_DOMAIN + 1:
        return Refusal(reply(Replies.HEADER_ADDRESS_TOO_LONG, header=header), invalid, f"{header} address of {len(address)} characters")
    check = check_address(address)
    if check.problem is not None or check.address is None:
        return Refusal(
            reply(Replies.HEADER_ADDRESS_FORM, addr=shown(address), header=header, problem=check.problem),
            invalid,
            f"{header} <{shown(address)}>: {check.problem}",
        )
    denied = authorization(check.address, user, f"{header} address")
    if denied is None:
        return None
    status, reason = denied
    unverified = reason is Reason.SENDER_UNVERIFIED
    if sender:
        reason = Reason.HEADER_SENDER_UNVERIFIED if unverified else Reason.HEADER_SENDER_NOT_AUTHORIZED
    else:
        reason = Reason.HEADER_FROM_UNVERIFIED if unverified else Reason.HEADER_FROM_NOT_AUTHORIZED
    return Refusal(status, reason, text_of(status))
