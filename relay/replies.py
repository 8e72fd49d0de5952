"""Every reply the relay words, in one place (as aiosmtpd's ``testing/statuscodes.py``).

The session (``relay.smtp``, ``relay.sasl``, ``relay.rules``) says only what is here,
the tests assert against these names, and ``tests/test_docs.py`` requires a row in
``docs/replies.md`` for every entry with an enhanced status code. An entry with
``{name}`` fields is a template: fill it with :func:`reply`, which keeps client text
out of the fixed part (``str.format`` does not look inside the values it inserts).
"""

from __future__ import annotations

import re
from collections.abc import Iterator


class Replies:
    """Named replies. Comments say when a reply is sent only where the name does not."""

    # -- connection
    TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
    TIMEOUT = "421 4.4.2 Timeout, closing connection"
    NO_MAIL = "421 4.4.2 No mail for too long, closing connection"
    SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
    INTERNAL = "451 4.3.0 Internal error, try again later"
    TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
    BYE = "221 2.0.0 Bye"

    # -- greeting and TLS (RFC 2034: no enhanced code in the HELO and EHLO replies)
    GREETING = "220 {server} {ident}"  # aiosmtpd says it; listed for the exemption
    HELO = "250 {server}"
    EHLO = "250 {lines}"  # one line per extension: see multiline()
    SEND_HELO_FIRST = "503 5.5.1 Error: send {helo} first"
    HELO_SYNTAX = "501 5.5.4 Syntax: HELO hostname"
    EHLO_SYNTAX = "501 5.5.4 Syntax: EHLO hostname"
    STARTTLS_SYNTAX = "501 5.5.4 Syntax: STARTTLS"
    TLS_NOT_AVAILABLE = "454 4.7.0 TLS not available"
    TLS_ACTIVE = "503 5.5.1 TLS already active"

    # -- AUTH
    CHALLENGE = "334 {challenge}"  # base64 (RFC 4954)
    AUTH_OK = "235 2.7.0 Authentication successful"
    AUTH_REQUIRED = "530 5.7.0 Authentication required"
    ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
    BAD_CREDENTIALS = "535 5.7.8 Authentication credentials invalid"
    TOO_MANY_FAILURES = "421 4.7.0 Too many failed authentication attempts, closing connection"
    ALREADY_AUTHENTICATED = "503 5.5.1 Error: already authenticated"
    AUTH_SYNTAX = "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
    AUTH_UNKNOWN_MECHANISM = "504 5.5.4 Unrecognized authentication type"
    AUTH_CANCELLED = "501 5.7.0 Authentication cancelled"
    AUTH_BAD_BASE64 = "501 5.5.2 Cannot decode base64"
    AUTH_BAD_PLAIN = "501 5.5.2 Cannot split PLAIN credentials"
    AUTH_LINE_TOO_LONG = "500 5.5.2 Line too long"
    AUTH_TEMPORARY_FAILURE = "454 4.7.0 Temporary authentication failure"  # the store is unavailable (RFC 4954 6)

    # -- MAIL FROM
    SENDER_OK = "250 2.1.0 Ok"
    NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
    MAIL_SYNTAX = "501 5.5.4 Syntax: MAIL FROM:<address>"
    TOO_LARGE = "552 5.3.4 Message size exceeds fixed maximum message size"
    PARAMETER_SYNTAX = "501 5.5.4 Syntax error in {name} parameter"
    PARAMETER_INVALID = "501 5.5.4 {name} parameter: {why}"
    MAIL_PARAMETER_UNSUPPORTED = "555 5.5.4 MAIL FROM parameter {name} not supported"
    NEEDS_SMTPUTF8 = "553 5.6.7 <{addr}>: non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM"
    SENDER_CONTROL = "501 5.1.7 Control characters are not allowed in addresses"
    SENDER_FORM = "550 5.7.1 <{addr}>: sender address form not allowed ({problem})"
    SENDER_SYNTAX = "553 5.1.7 <{addr}>: bad sender address syntax ({problem})"
    NOT_AUTHORIZED = "550 5.7.1 <{addr}>: {what} not authorized for this login"
    AWAITS_VERIFICATION = "550 5.7.1 <{addr}>: {what} identity {identity} awaits verification"

    # -- RCPT TO
    RECIPIENT_OK = "250 2.1.5 Ok"
    NEED_MAIL = "503 5.5.1 Error: need MAIL command"
    RCPT_SYNTAX = "501 5.5.4 Syntax: RCPT TO:<address>"
    RCPT_PARAMETER_UNSUPPORTED = "555 5.5.4 RCPT TO parameter {name} not supported"
    TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
    RECIPIENT_CONTROL = "501 5.1.3 Control characters are not allowed in addresses"
    RECIPIENT_FORM = "553 5.1.3 <{addr}>: recipient address not allowed ({problem})"
    POSTMASTER_UNSET = "550 5.1.1 <{addr}>: no postmaster address is set on this relay (postmaster_address)"

    # -- DATA
    START_DATA = "354 End data with <CR><LF>.<CR><LF>"
    QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
    NEED_RCPT = "503 5.5.1 Error: need RCPT command"
    DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
    HEADER_TOO_LARGE = "552 5.3.4 Message header section too large"
    TOO_MANY_HOPS = "554 5.4.6 Too many hops"
    NUL = "554 5.6.0 Message contains NUL characters"
    NO_FROM = "550 5.6.0 Message has no From: header"
    SEVERAL_FROM = "550 5.7.1 Message has more than one From: header"
    SEVERAL_SENDER = "550 5.7.1 Message has more than one Sender: header"
    FROM_UNPARSED = "550 5.7.1 From: header does not parse"
    SENDER_UNPARSED = "550 5.7.1 Sender: header does not parse"
    HEADER_ADDRESS_TOO_LONG = "550 5.7.1 {header} address too long"
    HEADER_ADDRESS_FORM = "550 5.7.1 <{addr}>: {header} address form not allowed ({problem})"
    LOOKALIKE = "550 5.7.1 {header} display name shows another address <{other}> than its own <{own}>"
    # The store (relay.writer words these; they are the same text).
    STORE_FULL = "452 4.3.1 Insufficient system storage, try again later"
    STORE_TEMPORARY = "451 4.3.0 Temporary failure, try again later"

    # -- other commands
    NOOP_OK = "250 2.0.0 OK"
    HELP = "214 2.0.0 Commands: {commands}"
    HELP_SYNTAX = "214 2.0.0 Syntax: {syntax}"
    HELP_UNKNOWN = "501 5.5.4 HELP: no such command {name}"
    QUIT_SYNTAX = "501 5.5.4 Syntax: QUIT"
    # aiosmtpd's command loop words these; push() puts them in these words (see enhanced()).
    READY_FOR_TLS = "220 2.0.0 Ready to start TLS"
    UNKNOWN_COMMAND = '500 5.5.2 Error: command "{name}" not recognized'
    TOO_MANY_UNKNOWN = "421 4.7.0 Too many unrecognized commands, closing connection"
    BAD_SYNTAX = "501 5.5.4 Error: bad syntax"
    COMMAND_TOO_LONG = "500 5.5.6 Command line too long"
    RSET_OK = "250 2.0.0 Ok"
    RSET_SYNTAX = "501 5.5.4 Syntax: RSET"
    VRFY = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
    VRFY_SYNTAX = "501 5.5.4 Syntax: VRFY address"
    EXPN = "502 5.5.1 EXPN not implemented"


_FIELD = re.compile(r"\{[a-z_]+\}")
ENHANCED = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3} ")

# What aiosmtpd says in its own code (the command loop, STARTTLS, QUIT), in our words.
_AIOSMTPD_WORDS = {
    "250 OK": Replies.NOOP_OK,
    "220 Ready to start TLS": Replies.READY_FOR_TLS,
    "500 Error: bad syntax": Replies.BAD_SYNTAX,
    "500 Command line too long": Replies.COMMAND_TOO_LONG,
    "501 Syntax: QUIT": Replies.QUIT_SYNTAX,
}
_UNKNOWN_COMMAND = '500 Error: command "'


def has_enhanced_code(status: str) -> bool:
    """The cheap test every reply passes first (``250 2.1.0 …``; codes are ASCII)."""
    return status[4:5].isdigit() and status[5:6] == "." and ENHANCED.match(status) is not None


def enhanced(status: str) -> str:
    """``status`` with an enhanced status code (RFC 2034; ENHANCEDSTATUSCODES is always
    offered): aiosmtpd's own replies in the registry's words, and any other reply
    without one given its class's generic code (``X.0.0``). Never anything internal:
    aiosmtpd's last-resort ``500 Error: (<exception>) …`` becomes ``INTERNAL``."""
    known = _AIOSMTPD_WORDS.get(status)
    if known is not None:
        return known
    if status.startswith(_UNKNOWN_COMMAND):
        return "500 5.5.2 " + status[4:]
    if status.startswith("500 Error: ("):
        return Replies.INTERNAL
    if ENHANCED.match(status) or len(status) < 4 or status[0] not in "245":
        return status
    return f"{status[:3]} {status[0]}.0.0 {status[4:]}"


def reply(template: str, **values: object) -> str:
    """``template`` with its ``{name}`` fields filled (the values are not parsed)."""
    return template.format(**values)


def multiline(template: str, lines: list[str]) -> str:
    """A multi-line reply: ``250-a``, ``250-b``, ``250 c`` (the code of ``template``)."""
    code = template[:3]
    return "\r\n".join(f"{code}-{line}" for line in lines[:-1]) + f"\r\n{code} {lines[-1]}"


def entries() -> Iterator[tuple[str, str]]:
    """(name, reply) for every entry of the registry."""
    for name, value in vars(Replies).items():
        if name.isupper() and isinstance(value, str):
            yield name, value


def fixed_pieces(template: str) -> list[str]:
    """The parts of a template that are always there (its fields left out)."""
    return _FIELD.split(template)
