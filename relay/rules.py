"""The session's pure rules: envelope paths and parameters, who may send as whom,
and the From:/Sender: checks. No I/O and no session state, so they are tested
directly (``tests/relay/test_rules.py``) and may run in a worker thread."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from relay import policy
from relay.message import (
    CACHED_TEXT,
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
from relay.store.intake import RecipientDsn


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


def address_check(text: str, utf8: bool = False) -> policy.AddressCheck:
    """:func:`check_address`, and with ``utf8`` (RFC 6531) a local part may hold
    non-ASCII characters too (the domain is IDNA-checked either way)."""
    stripped = text.strip()
    local, at, domain = stripped.rpartition("@")
    if not utf8 or not at or local.isascii():
        return check_address(text)
    if any(0x80 <= ord(ch) <= 0x9F or 0xD800 <= ord(ch) <= 0xDFFF for ch in local):
        # C1 controls, or bytes that were not UTF-8 (kept as surrogates)
        return policy.AddressCheck(None, policy.AddressProblem.CONTROL)
    if len(local.encode("utf-8")) > policy.MAX_LOCAL_PART:
        return policy.AddressCheck(None, policy.AddressProblem.LOCAL_TOO_LONG)
    # Every rule but the character set is the ASCII one: check an ASCII stand-in.
    stand_in = "".join(ch if ch.isascii() else "u" for ch in local)
    check = check_address(f"{stand_in}@{domain}")
    if check.address is None:
        return check
    return policy.AddressCheck(f"{local.lower()}@{check.address.rpartition('@')[2]}")


def envelope_address(path: str) -> str:
    """An accepted envelope path as it is kept, stored and relayed: exactly as sent
    (case and all), less ONE trailing dot on its domain, as Postfix's trivial-rewrite
    canonicalises it (``ann@example.net.`` → ``ann@example.net``). Only for a path the
    rules accepted: ``ann@example.net..`` and ``ann@.`` are refused before this."""
    address = path.strip()
    if address.endswith(".") and "@" in address:
        return address[:-1]
    return address


def needs_smtputf8(path: str) -> Refusal | None:
    """A non-ASCII address from a client that did not declare SMTPUTF8 (as Postfix)."""
    if path.isascii():
        return None
    return Refusal(reply(Replies.NEEDS_SMTPUTF8, addr=shown(path)), None)


def sender_refusal(path: str, user: AuthRecord, utf8: bool = False) -> Refusal | None:
    """Why MAIL FROM:<path> is refused for ``user``, or None.

    The null reverse-path ``<>`` is accepted (only ever after AUTH): an MTA behind the
    relay sends its bounces and reports with it (RFC 5321 4.5.5). Its ``From:`` and
    ``Sender:`` addresses pass the sender rules at DATA as every message's do, and
    delivery never bounces such a message."""
    if path == "":
        return None
    check = address_check(path, utf8)
    problem = check.problem
    if problem is None:  # the usual case: no detail to build
        assert check.address is not None
        denied = authorization(check.address, user, "sender")
        if denied is None:
            return None
        status, reason = denied
        return Refusal(status, reason, f"envelope sender {text_of(status)}")
    detail = f"<{shown(path)}>: {problem}"
    if problem is policy.AddressProblem.CONTROL:
        return Refusal(Replies.SENDER_CONTROL, Reason.SENDER_INVALID, detail)
    if problem in SENDER_FORM_PROBLEMS:
        return Refusal(reply(Replies.SENDER_FORM, addr=shown(path), problem=problem), Reason.SENDER_INVALID, detail)
    return Refusal(reply(Replies.SENDER_SYNTAX, addr=shown(path), problem=problem), Reason.SENDER_INVALID, detail)


def recipient_refusal(path: str, utf8: bool = False) -> Refusal | None:
    """Why RCPT TO:<path> is refused, or None."""
    check = address_check(path, utf8)
    if check.problem is policy.AddressProblem.CONTROL:
        return Refusal(Replies.RECIPIENT_CONTROL, Reason.RECIPIENT_INVALID, f"<{shown(path)}>: control-character")
    if check.problem is not None or check.address is None:
        return Refusal(
            reply(Replies.RECIPIENT_FORM, addr=shown(path), problem=check.problem),
            Reason.RECIPIENT_INVALID,
            f"<{shown(path)}>: {check.problem}",
        )
    return None


# ---------------------------------------------------------------------------
# MAIL and RCPT parameters (RFC 1870 SIZE, 6152 BODY, 6531 SMTPUTF8, 4954 AUTH,
# 3461 RET/ENVID/NOTIFY/ORCPT)

ENVID_LIMIT = 100  # characters (RFC 3461 4.4)
AUTH_LIMIT = 500  # characters of AUTH= (RFC 4954 5)
ORCPT_LIMIT = 500  # characters (RFC 3461 4.2)
NOTIFY_VALUES = ("SUCCESS", "FAILURE", "DELAY")


@dataclass(slots=True)
class MailParameters:
    """What a client declared on MAIL FROM (None/False: not declared)."""

    size: int | None = None
    body: str | None = None  # "7BIT" | "8BITMIME"
    smtputf8: bool = False
    auth: str | None = None  # AUTH= decoded: "<>" or an address (checked with the user later)
    ret: str | None = None  # "FULL" | "HDRS"
    envid: str | None = None  # as given (xtext)


def xtext_decode(value: str, *, utf8: bool = False) -> str | None:
    """RFC 3461 4 xtext decoded, or None when ``value`` is not xtext. ``utf8``: also
    accept non-ASCII characters as themselves (RFC 6533's unitext)."""
    out = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "+":
            digits = value[i + 1 : i + 3]
            if len(digits) != 2 or any(d not in "0123456789ABCDEF" for d in digits):
                return None
            out.append(chr(int(digits, 16)))
            i += 3
            continue
        if ch == "=" or (not ("!" <= ch <= "~") and not (utf8 and ord(ch) > 0x9F and ch.isprintable())):
            return None
        out.append(ch)
        i += 1
    return "".join(out)


def _invalid(name: str, why: str) -> Refusal:
    return Refusal(reply(Replies.PARAMETER_INVALID, name=name, why=why), None)


def parse_mail_parameters(params: list[str], size_limit: int) -> MailParameters | Refusal:
    """MAIL FROM's parameters, or why they are refused."""
    found = MailParameters()
    seen: set[str] = set()
    for param in params:
        name, eq, value = param.partition("=")
        name = name.upper()
        if name in seen:
            return _invalid(shown(name, 32), "given twice")
        seen.add(name)
        if name == "SIZE":
            if not (eq and value.isascii() and value.isdigit()):
                return Refusal(reply(Replies.PARAMETER_SYNTAX, name=name), None)
            if size_limit and int(value) > size_limit:
                return Refusal(Replies.TOO_LARGE, Reason.MESSAGE_TOO_LARGE, f"SIZE={value} over {size_limit}")
            found.size = int(value)
        elif name == "BODY":
            if value.upper() not in {"7BIT", "8BITMIME"}:
                return Refusal(reply(Replies.PARAMETER_SYNTAX, name=name), None)
            found.body = value.upper()
        elif name == "SMTPUTF8":
            if eq:
                return _invalid(name, "takes no value")
            found.smtputf8 = True
        elif name == "AUTH":
            if len(value) > AUTH_LIMIT:
                return _invalid(name, f"over {AUTH_LIMIT} characters")
            decoded = xtext_decode(value, utf8=True) if eq and value else None
            if decoded is None:
                return _invalid(name, "needs <> or an address as xtext (RFC 4954 5)")
            found.auth = decoded
        elif name == "RET":
            if value.upper() not in {"FULL", "HDRS"}:
                return _invalid(name, "must be FULL or HDRS")
            found.ret = value.upper()
        elif name == "ENVID":
            if not (eq and value) or xtext_decode(value) is None:
                return _invalid(name, "needs a value as xtext (RFC 3461 4.4)")
            if len(value) > ENVID_LIMIT:
                return _invalid(name, f"over {ENVID_LIMIT} characters")
            found.envid = value
        else:
            return Refusal(reply(Replies.MAIL_PARAMETER_UNSUPPORTED, name=shown(name, 32)), None)
    return found


def mail_parameters_refusal(params: list[str], size_limit: int) -> Refusal | None:
    """Why MAIL FROM's parameters are refused, or None."""
    parsed = parse_mail_parameters(params, size_limit)
    return parsed if isinstance(parsed, Refusal) else None


def parse_rcpt_parameters(params: list[str], utf8: bool) -> RecipientDsn | Refusal:
    """RCPT TO's NOTIFY= and ORCPT= (RFC 3461 4.1, 4.2), or why they are refused.
    NOTIFY is kept upper-case, ORCPT as given."""
    notify: str | None = None
    orcpt: str | None = None
    seen: set[str] = set()
    for param in params:
        name, eq, value = param.partition("=")
        name = name.upper()
        if name in seen:
            return _invalid(shown(name, 32), "given twice")
        seen.add(name)
        if name == "NOTIFY":
            values = value.upper().split(",")
            if values == ["NEVER"]:
                notify = "NEVER"
            elif not eq or any(v not in NOTIFY_VALUES for v in values) or len(set(values)) != len(values):
                return _invalid(name, "must be NEVER or a list of SUCCESS, FAILURE, DELAY")
            else:
                notify = ",".join(values)
        elif name == "ORCPT":
            kind, semicolon, address = value.partition(";")
            if len(value) > ORCPT_LIMIT:
                return _invalid(name, f"over {ORCPT_LIMIT} characters")
            if not (semicolon and kind and address and _ATOM.fullmatch(kind)) or xtext_decode(address, utf8=utf8) is None:
                return _invalid(name, "must be addr-type;xtext (rfc822;ann@example.com)")
            orcpt = value
        else:
            return Refusal(reply(Replies.RCPT_PARAMETER_UNSUPPORTED, name=shown(name, 32)), None)
    return RecipientDsn(notify, orcpt)


_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")


def mail_auth(declared: str | None, user: AuthRecord) -> str | None:
    """The AUTH= value to keep (RFC 4954 5): ``<>`` as given, an address only when
    the user may send as it, else ``<>``."""
    if declared is None or declared == "<>":
        return declared
    address = declared[1:-1] if declared.startswith("<") and declared.endswith(">") else declared
    return envelope_address(address) if address and sender_refusal(address, user) is None else "<>"


# ---------------------------------------------------------------------------
# From: and Sender:


def hop_refusal(fields: list[tuple[str, str]], limit: int) -> Refusal | None:
    """RFC 5321 6.3: a loop between mail systems shows as Received: headers piling up.
    ``fields`` are the message's (lower-case names); this relay's own Received: (added
    before them) counts too, as Postfix counts its own against ``hopcount_limit``."""
    hops = 1 + sum(1 for name, _ in fields if name == "received")
    if hops < limit:
        return None
    return Refusal(Replies.TOO_MANY_HOPS, Reason.TOO_MANY_HOPS, f"{hops} Received: headers (hopcount_limit {limit}): a mail loop?")


def check_headers(
    section: bytes, user: AuthRecord, refuse_lookalikes: bool, utf8: bool = False
) -> tuple[Refusal | None, list[tuple[str, str]], str]:
    """(refusal or None, the header fields, the From: value). Pure and linear in the
    section's size, so it may run in a worker thread. ``utf8``: the client declared
    SMTPUTF8, so header addresses may be internationalized (RFC 6532)."""
    fields = split_headers(section)
    froms = [value for name, value in fields if name == "from"]
    senders = [value for name, value in fields if name == "sender"]
    if not froms:
        return Refusal(Replies.NO_FROM, Reason.HEADER_FROM_MISSING, "no From: header"), fields, ""
    if len(froms) > 1:
        return Refusal(Replies.SEVERAL_FROM, Reason.HEADER_FROM_MULTIPLE, f"{len(froms)} From: headers"), fields, ""
    if len(senders) > 1:
        return Refusal(Replies.SEVERAL_SENDER, Reason.HEADER_SENDER_MULTIPLE, f"{len(senders)} Sender: headers"), fields, ""
    plan = _header_plan(froms[0], senders[0] if senders else None, refuse_lookalikes, utf8)
    if isinstance(plan, Refusal):
        return plan, fields, froms[0] if plan.reason in _LOOKALIKE_REASONS else ""
    for header, refusal, address in plan:
        if refusal is not None:
            return refusal, fields, froms[0]
        denied = authorization(address, user, f"{header} address")
        if denied is not None:
            return _header_denial(denied, header == "Sender:"), fields, froms[0]
    return None, fields, froms[0]


_LOOKALIKE_REASONS = frozenset({Reason.HEADER_FROM_LOOKALIKE, Reason.HEADER_SENDER_LOOKALIKE})
# (header, the form refusal, or None and the checked address to authorize)
_Plan = tuple[tuple[str, "Refusal | None", str], ...]


def _header_plan(from_value: str, sender_value: str | None, refuse_lookalikes: bool, utf8: bool) -> Refusal | _Plan:
    """Everything :func:`check_headers` decides from the From:/Sender: values alone:
    a refusal, or the addresses to authorize in order, each with its form refusal.
    Pure, so remembered: bulk mail repeats its From:. Long values are read every time."""
    if len(from_value) + len(sender_value or "") <= CACHED_TEXT:
        return _header_plan_cached(from_value, sender_value, refuse_lookalikes, utf8)
    return _read_header_plan(from_value, sender_value, refuse_lookalikes, utf8)


def _read_header_plan(from_value: str, sender_value: str | None, refuse_lookalikes: bool, utf8: bool) -> Refusal | _Plan:
    from_addresses = header_addresses(from_value)
    if from_addresses is None:
        return Refusal(Replies.FROM_UNPARSED, Reason.HEADER_FROM_INVALID, f"From: {shown(from_value, 200)}")
    checks: list[tuple[str, str]] = [(a, "From:") for a in from_addresses]
    checks += [(a, "From:") for a in address_like(from_value)]
    headers = [("From:", from_value, from_addresses)]
    if sender_value is not None:
        sender_addresses = header_addresses(sender_value)
        if sender_addresses is None or len(sender_addresses) != 1:
            return Refusal(Replies.SENDER_UNPARSED, Reason.HEADER_SENDER_INVALID, f"Sender: {shown(sender_value, 200)}")
        checks.append((sender_addresses[0], "Sender:"))
        checks += [(a, "Sender:") for a in address_like(sender_value)]
        headers.append(("Sender:", sender_value, sender_addresses))
    if refuse_lookalikes:
        for header, value, actual in headers:
            others = lookalike_addresses(value, actual)
            if others:
                reason = Reason.HEADER_SENDER_LOOKALIKE if header == "Sender:" else Reason.HEADER_FROM_LOOKALIKE
                status = reply(Replies.LOOKALIKE, header=header, other=shown(others[0]), own=shown(actual[0]))
                return Refusal(status, reason, text_of(status))
    seen: set[tuple[str, str]] = set()
    plan: list[tuple[str, Refusal | None, str]] = []
    for address, header in checks:
        if (address.lower(), header) in seen:
            continue
        seen.add((address.lower(), header))
        refusal, checked = _header_address_form(address, header, utf8)
        plan.append((header, refusal, checked))
        if refusal is not None:
            break  # nothing after a form refusal is ever looked at
    return tuple(plan)


_header_plan_cached = functools.lru_cache(maxsize=1024)(_read_header_plan)


def header_address_refusal(address: str, header: str, user: AuthRecord, utf8: bool = False) -> Refusal | None:
    refusal, checked = _header_address_form(address, header, utf8)
    if refusal is not None:
        return refusal
    denied = authorization(checked, user, f"{header} address")
    return None if denied is None else _header_denial(denied, header == "Sender:")


def _header_address_form(address: str, header: str, utf8: bool) -> tuple[Refusal | None, str]:
    """(the refusal of a From:/Sender: address's form, or None and the address as checked)."""
    invalid = Reason.HEADER_SENDER_INVALID if header == "Sender:" else Reason.HEADER_FROM_INVALID
    if len(address) > policy.MAX_LOCAL_PART + policy.MAX_DOMAIN + 1:
        return Refusal(reply(Replies.HEADER_ADDRESS_TOO_LONG, header=header), invalid, f"{header} address of {len(address)} characters"), ""
    check = address_check(address, utf8)
    if check.problem is not None or check.address is None:
        return Refusal(
            reply(Replies.HEADER_ADDRESS_FORM, addr=shown(address), header=header, problem=check.problem),
            invalid,
            f"{header} <{shown(address)}>: {check.problem}",
        ), ""
    return None, check.address


def _header_denial(denied: tuple[str, Reason], sender: bool) -> Refusal:
    status, reason = denied
    unverified = reason is Reason.SENDER_UNVERIFIED
    if sender:
        reason = Reason.HEADER_SENDER_UNVERIFIED if unverified else Reason.HEADER_SENDER_NOT_AUTHORIZED
    else:
        reason = Reason.HEADER_FROM_UNVERIFIED if unverified else Reason.HEADER_FROM_NOT_AUTHORIZED
    return Refusal(status, reason, text_of(status))
