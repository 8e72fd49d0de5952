"""The swaks-like dialogue client, on aiosmtplib.

One call of :func:`run_dialogue` walks a whole SMTP session — connect (with TLS from
the first byte when ``tls_on_connect``: an implicit-TLS port, RFC 8314), banner, EHLO,
STARTTLS (required, optional or none), AUTH PLAIN/LOGIN, MAIL, RCPT…, DATA, QUIT —
and returns a :class:`DialogueResult`: every client (``->``) and server (``<-``) line
with its time since connect, the TLS details, each stage's reply, and the stage that
failed (if any). AUTH payloads never appear in the transcript: they are masked.

Commands go out through aiosmtplib's ``execute_command`` so the transcript shows exactly
what was sent; aiosmtplib refuses control characters in commands and normalizes
message line endings, which is right for a well-behaved client. Byte-exact bad input
is :mod:`harness.raw`'s job.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import re
import ssl
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate

import aiosmtplib
from aiosmtplib import SMTPResponse

MASK = "****"
DEFAULT_EHLO_NAME = "smtpplus-harness.localdomain"
DEFAULT_TIMEOUT = 30.0


class Stage(enum.StrEnum):
    """Stages of a session, in order. A failed stage decides the exit code."""

    CONNECT = "connect"
    BANNER = "banner"
    EHLO = "ehlo"
    TLS = "tls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


class TlsMode(enum.StrEnum):
    REQUIRED = "required"  # no STARTTLS offered, or the handshake fails → the TLS stage fails
    OPTIONAL = "optional"  # STARTTLS when offered, carry on in clear text otherwise
    NONE = "none"  # never STARTTLS


# `smtpplus send` exit codes, one per failed stage (0 = every stage passed; 1 = usage).
EXIT_CODES: dict[Stage, int] = {
    Stage.CONNECT: 2,
    Stage.TLS: 3,
    Stage.AUTH: 4,
    Stage.MAIL: 5,
    Stage.RCPT: 6,
    Stage.DATA: 7,
    Stage.BANNER: 8,
    Stage.EHLO: 8,
}

QUIT_AFTER_CHOICES = ("connect", "banner", "ehlo", "tls", "auth", "mail", "rcpt")

_ENHANCED_RE = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\b")
_QUEUED_RE = re.compile(r"queued as\s+(\S+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: code and text (continuation lines joined by newlines)."""

    code: int
    text: str

    @property
    def enhanced(self) -> str:
        """The RFC 3463 enhanced status code (``5.7.1``), or ``""``."""
        match = _ENHANCED_RE.match(self.text)
        return match.group(1) if match else ""

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    def lines(self) -> list[str]:
        """Reply lines as they were on the wire (``250-…``, …, ``250 …``)."""
        parts = self.text.split("\n") if self.text else [""]
        return [f"{self.code}{'-' if i < len(parts) - 1 else ' '}{p}".rstrip() for i, p in enumerate(parts)]

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


@dataclass(frozen=True, slots=True)
class Line:
    """One transcript line: ``->`` client, ``<-`` server, ``**`` a note from the client."""

    at: float  # seconds since the connection attempt started
    direction: str
    text: str


@dataclass(frozen=True, slots=True)
class TlsInfo:
    version: str
    cipher: str
    peer_fingerprint: str  # "SHA256:AB:CD:…" as the relay publishes it
    verified: bool


@dataclass(slots=True)
class SendRequest:
    """What one dialogue should do. ``message`` is the DATA payload (None → no DATA)."""

    host: str = "127.0.0.1"
    port: int = 25
    tls: TlsMode = TlsMode.REQUIRED  # STARTTLS; moot with tls_on_connect
    tls_on_connect: bool = False  # TLS from the first byte (an implicit-TLS port: 465), no STARTTLS
    cafile: str | None = None
    insecure: bool = False
    tls_context: ssl.SSLContext | None = None  # prebuilt and shared, for sweeps
    auth_user: str | None = None
    auth_password: str | None = None
    auth_mech: str = "plain"
    mail_from: str | None = None
    recipients: Sequence[str] = ()
    message: bytes | None = None
    ehlo_name: str = DEFAULT_EHLO_NAME
    timeout: float = DEFAULT_TIMEOUT
    quit_after: str | None = None


@dataclass(slots=True)
class DialogueResult:
    host: str
    port: int
    lines: list[Line] = field(default_factory=list)
    replies: dict[str, Reply] = field(default_factory=dict)  # stage → its (last) reply
    recipient_replies: list[tuple[str, Reply]] = field(default_factory=list)
    tls: TlsInfo | None = None
    failed_stage: Stage | None = None
    error: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    stopped_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed_stage is None

    @property
    def exit_code(self) -> int:
        return 0 if self.failed_stage is None else EXIT_CODES[self.failed_stage]

    @property
    def accepted_recipients(self) -> list[str]:
        return [addr for addr, reply in self.recipient_replies if reply.ok]

    @property
    def decisive_reply(self) -> Reply | None:
        """The reply that decided the outcome: the failing stage's, else the last one.

        When no recipient was accepted, the first refusal is the telling one."""
        if self.failed_stage is Stage.RCPT and self.recipient_replies:
            return next(r for _, r in self.recipient_replies if not r.ok)
        if self.failed_stage is not None:
            return self.replies.get(str(self.failed_stage))
        for stage in reversed(list(Stage)):
            if str(stage) in self.replies:
                return self.replies[str(stage)]
        return None

    @property
    def queue_id(self) -> str | None:
        reply = self.replies.get(str(Stage.DATA))
        if reply is None or reply.code != 250:
            return None
        match = _QUEUED_RE.search(reply.text)
        return match.group(1) if match else None

    def to_json(self) -> dict[str, object]:
        decisive = self.decisive_reply
        return {
            "host": self.host,
            "port": self.port,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "failed_stage": None if self.failed_stage is None else str(self.failed_stage),
            "stopped_after": self.stopped_after,
            "error": self.error,
            "reply": None if decisive is None else str(decisive),
            "queue_id": self.queue_id,
            "tls": None
            if self.tls is None
            else {
                "version": self.tls.version,
                "cipher": self.tls.cipher,
                "peer_fingerprint": self.tls.peer_fingerprint,
                "verified": self.tls.verified,
            },
            "recipients": [{"address": a, "reply": str(r)} for a, r in self.recipient_replies],
            "replies": {stage: str(reply) for stage, reply in self.replies.items()},
            "stage_seconds": {k: round(v, 6) for k, v in self.stage_seconds.items()},
            "total_seconds": round(self.total_seconds, 6),
            "dialogue": [{"at": round(line.at, 6), "dir": line.direction, "text": line.text} for line in self.lines],
        }


# ---------------------------------------------------------------------------
# Building pieces


def client_tls_context(*, cafile: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """The client context: system trust (plus ``cafile``), or no verification at all."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def fingerprint(der: bytes) -> str:
    """``SHA256:AB:CD:…`` of a DER certificate, as the relay publishes its own."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def build_message(
    *,
    header_from: str | None,
    to: Iterable[str] = (),
    subject: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    priority: int | None = None,
    body: str = "",
    data: bytes | None = None,
) -> bytes:
    """A message for DATA. Default headers (Date, From, To, Subject, Message-ID) come
    first; an extra header with the same name replaces the default, and one with an
    empty value removes it (``--header "From:"`` sends a message without ``From:``).
    With ``data`` (a whole message), extra headers replace the same-named headers of
    its header block the same way and go in front of it."""
    defaults: dict[str, str] = {}
    if data is None:
        defaults["Date"] = formatdate(localtime=True)
        if header_from:
            defaults["From"] = header_from
        recipients = list(to)
        if recipients:
            defaults["To"] = ", ".join(recipients)
        defaults["Subject"] = subject if subject is not None else "smtpplus test message"
        defaults["Message-ID"] = f"<{uuid.uuid4().hex}@smtpplus.harness>"
    extra: list[tuple[str, str]] = []
    if priority is not None:
        extra.append(("X-Priority", str(priority)))
    extra.extend(headers)
    for name, _ in extra:
        for default in list(defaults):
            if default.lower() == name.lower():
                del defaults[default]
    lines = [f"{k}: {v}" for k, v in defaults.items()]
    lines += [f"{k}: {v}" for k, v in extra if v != ""]
    head = "\r\n".join(lines).encode("utf-8")
    if data is not None:
        data = _without_headers(data, {name.lower() for name, _ in extra})
        return (head + b"\r\n" if head else b"") + data
    text = body.replace("\r\n", "\n").replace("\n", "\r\n")
    return head + b"\r\n\r\n" + text.encode("utf-8") + (b"" if text.endswith("\r\n") else b"\r\n")


def _without_headers(data: bytes, names: set[str]) -> bytes:
    """``data`` without the named header fields (and their folded continuation lines)."""
    if not names:
        return data
    match = re.search(rb"\r?\n\r?\n", data)
    head, rest = (data[: match.start()], data[match.start() :]) if match else (data, b"")
    kept: list[bytes] = []
    dropping = False
    for line in re.split(rb"(?<=\n)", head):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("latin-1").lower()
        dropping = name in names
        if not dropping:
            kept.append(line)
    block = b"".join(kept)
    if block.endswith(b"\n") and rest[:1] in (b"\r", b"\n"):
        # The dropped field was the last one: its line ending must not become a blank line.
        block = block[:-2] if block.endswith(b"\r\n") else block[:-1]
    return block + rest


def parse_header_option(text: str) -> tuple[str, str]:
    """``"Name: value"`` → (name, value); raises ValueError naming the fix."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in " \t"):
        raise ValueError(f'header {text!r} is not "Name: value" — e.g. --header "X-Tag: test"')
    return name.strip(), value.strip()


def _dot_stuffed(message: bytes) -> bytes:
    # Same wire form aiosmtplib's DATA gives: CRLF line endings, leading dots doubled.
    message = re.sub(rb"\r\n|\n|\r", b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", message) + b".\r\n"


# ---------------------------------------------------------------------------
# The dialogue


class _StageFailed(Exception):
    def __init__(self, stage: Stage, error: str) -> None:
        super().__init__(error)
        self.stage = stage


class _Dialogue:
    def __init__(self, request: SendRequest) -> None:
        self.request = request
        self.result = DialogueResult(host=request.host, port=request.port)
        self.started = time.perf_counter()
        self.smtp: aiosmtplib.SMTP | None = None

    def _now(self) -> float:
        return time.perf_counter() - self.started

    def client(self, text: str) -> None:
        self.result.lines.append(Line(self._now(), "->", text))

    def server(self, reply: Reply) -> None:
        at = self._now()
        self.result.lines.extend(Line(at, "<-", text) for text in reply.lines())

    def note(self, text: str) -> None:
        self.result.lines.append(Line(self._now(), "**", text))

    async def command(self, stage: Stage, shown: str, *args: bytes) -> Reply:
        """Send one command (``shown`` is what the transcript says), record the reply."""
        assert self.smtp is not None
        self.client(shown)
        try:
            response = await self.smtp.execute_command(*args)
        except aiosmtplib.SMTPTimeoutError:
            raise _StageFailed(stage, f"timed out waiting for the reply to {shown.split()[0]}") from None
        except aiosmtplib.SMTPServerDisconnected:
            raise _StageFailed(stage, "server closed the connection") from None
        except aiosmtplib.SMTPResponseException as exc:
            response = SMTPResponse(exc.code, exc.message)
        reply = Reply(response.code, response.message)
        self.server(reply)
        return reply

    def stage_reply(self, stage: Stage, reply: Reply, *, expect: Iterable[int]) -> None:
        self.result.replies[str(stage)] = reply
        if reply.code not in set(expect):
            raise _StageFailed(stage, f"{stage} refused: {reply}")

    def stop_here(self, stage: str) -> bool:
        if self.request.quit_after == stage:
            self.result.stopped_after = stage
            return True
        return False

    async def run(self) -> DialogueResult:
        timed = self.result.stage_seconds
        try:
            t = self._now()
            await self.connect()
            timed["connect"] = self._now() - t
            if self.stop_here("connect") or self.stop_here("banner"):
                return await self.finish()
            t = self._now()
            await self.ehlo()
            timed["ehlo"] = self._now() - t
            if self.stop_here("ehlo"):
                return await self.finish()
            t = self._now()
            await self.starttls()
            timed["tls"] = self._now() - t
            if self.stop_here("tls"):
                return await self.finish()
            if self.request.auth_user is not None:
                t = self._now()
                await self.auth()
                timed["auth"] = self._now() - t
            if self.stop_here("auth"):
                return await self.finish()
            if self.request.mail_from is None:
                return await self.finish()
            t = self._now()
            await self.mail()
            timed["mail"] = self._now() - t
            if self.stop_here("mail"):
                return await self.finish()
            t = self._now()
            await self.rcpt()
            timed["rcpt"] = self._now() - t
            if self.stop_here("rcpt") or self.request.message is None:
                return await self.finish()
            t = self._now()
            await self.data()
            timed["data"] = self._now() - t
            return await self.finish()
        except _StageFailed as failed:
            self.result.failed_stage = failed.stage
            self.result.error = str(failed)
            self.note(f"{failed.stage} failed: {failed}")
            return await self.finish()
        except (OSError, ssl.SSLError, aiosmtplib.SMTPException) as exc:
            # Anything the stage handlers did not map: the connection broke under us.
            stage = Stage.CONNECT if self.smtp is None else Stage(self._current_stage())
            self.result.failed_stage = stage
            self.result.error = f"{type(exc).__name__}: {exc}"
            self.note(f"{stage} failed: {self.result.error}")
            return await self.finish()

    def _current_stage(self) -> str:
        order = [str(s) for s in Stage]
        done = [s for s in order if s in self.result.replies]
        following = order.index(done[-1]) + 1 if done else 0
        return order[min(following, len(order) - 1)]

    async def connect(self) -> None:
        r = self.request
        self.note(f"Trying {r.host}:{r.port}{' (TLS on connect)' if r.tls_on_connect else ''}…")
        context = (r.tls_context or client_tls_context(cafile=r.cafile, insecure=r.insecure)) if r.tls_on_connect else None
        smtp = aiosmtplib.SMTP(
            hostname=r.host,
            port=r.port,
            timeout=r.timeout,
            start_tls=False,
            use_tls=r.tls_on_connect,
            tls_context=context,
            local_hostname=r.ehlo_name,
        )
        try:
            response = await smtp.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            reply = Reply(exc.code, exc.message)
            self.server(reply)
            self.result.replies[str(Stage.BANNER)] = reply
            raise _StageFailed(Stage.BANNER, f"banner refused: {reply}") from None
        except aiosmtplib.SMTPConnectTimeoutError as exc:
            stage = Stage.BANNER if "ready message" in str(exc) else Stage.CONNECT
            raise _StageFailed(stage, str(exc)) from None
        except (aiosmtplib.SMTPConnectError, OSError) as exc:
            if r.tls_on_connect and isinstance(exc.__cause__, ssl.SSLError | ssl.CertificateError):
                text = _handshake_error_text(exc.__cause__)
                if not isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                    text += " — is it an implicit-TLS port? (`smtpplus status` lists them; use --starttls on the others)"
                raise _StageFailed(Stage.TLS, text) from None
            raise _StageFailed(Stage.CONNECT, _connect_error_text(exc)) from None
        self.smtp = smtp
        peer = smtp.get_transport_info("peername")
        self.note(f"Connected to {peer[0]}:{peer[1]}")
        if r.tls_on_connect:
            self._tls_started(smtp)
        reply = Reply(response.code, response.message)
        self.server(reply)
        self.result.replies[str(Stage.BANNER)] = reply

    async def ehlo(self) -> None:
        assert self.smtp is not None
        name = self.request.ehlo_name
        self.client(f"EHLO {name}")
        try:
            response = await self.smtp.ehlo(hostname=name)
        except aiosmtplib.SMTPHeloError as exc:
            reply = Reply(exc.code, exc.message)
            self.server(reply)
            self.stage_reply(Stage.EHLO, reply, expect=(250,))
            return
        except aiosmtplib.SMTPServerDisconnected:
            raise _StageFailed(Stage.EHLO, "server closed the connection") from None
        except aiosmtplib.SMTPTimeoutError:
            raise _StageFailed(Stage.EHLO, "timed out waiting for the EHLO reply") from None
        reply = Reply(response.code, response.message)
        self.server(reply)
        self.stage_reply(Stage.EHLO, reply, expect=(250,))

    async def starttls(self) -> None:
        r, smtp = self.request, self.smtp
        assert smtp is not None
        if r.tls is TlsMode.NONE or r.tls_on_connect:
            return
        if not smtp.supports_extension("starttls"):
            if r.tls is TlsMode.REQUIRED:
                raise _StageFailed(Stage.TLS, "server does not offer STARTTLS (use --starttls-optional or --no-tls)")
            self.note("STARTTLS not offered; carrying on without TLS")
            return
        context = r.tls_context or client_tls_context(cafile=r.cafile, insecure=r.insecure)
        self.client("STARTTLS")
        try:
            response = await smtp.starttls(tls_context=context, server_hostname=r.host)
        except aiosmtplib.SMTPResponseException as exc:
            reply = Reply(exc.code, exc.message)
            self.server(reply)
            self.stage_reply(Stage.TLS, reply, expect=(220,))
            return
        except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
            raise _StageFailed(Stage.TLS, _handshake_error_text(exc)) from None
        reply = Reply(response.code, response.message)
        self.server(reply)
        self.result.replies[str(Stage.TLS)] = reply
        self._tls_started(smtp)
        await self.ehlo()

    def _tls_started(self, smtp: aiosmtplib.SMTP) -> None:
        self.result.tls = _tls_info(smtp, verified=not self.request.insecure)
        tls = self.result.tls
        self.note(f"TLS started: {tls.version}, cipher {tls.cipher}")
        self.note(f"peer certificate {tls.peer_fingerprint}{'' if tls.verified else ' (not verified: --insecure)'}")

    async def auth(self) -> None:
        r = self.request
        user = r.auth_user or ""
        password = r.auth_password or ""
        mech = r.auth_mech.lower()
        if self.smtp is not None and not self.smtp.supports_extension("auth"):
            self.note("server did not offer AUTH; trying anyway")
        if mech == "plain":
            payload = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
            reply = await self.command(Stage.AUTH, f"AUTH PLAIN {MASK}", b"AUTH", b"PLAIN", payload.encode("ascii"))
        elif mech == "login":
            reply = await self.command(Stage.AUTH, "AUTH LOGIN", b"AUTH", b"LOGIN")
            if reply.code == 334:
                encoded_user = base64.b64encode(user.encode()).decode("ascii")
                reply = await self.command(Stage.AUTH, f"{encoded_user}", encoded_user.encode("ascii"))
            if reply.code == 334:
                encoded_password = base64.b64encode(password.encode()).decode("ascii")
                reply = await self.command(Stage.AUTH, MASK, encoded_password.encode("ascii"))
        else:
            raise _StageFailed(Stage.AUTH, f"unknown AUTH mechanism {r.auth_mech!r} — use plain or login")
        self.stage_reply(Stage.AUTH, reply, expect=(235,))

    async def mail(self) -> None:
        sender = self.request.mail_from or ""
        line = f"MAIL FROM:<{sender}>"
        reply = await self.command(Stage.MAIL, line, line.encode("utf-8"))
        self.stage_reply(Stage.MAIL, reply, expect=(250,))

    async def rcpt(self) -> None:
        if not self.request.recipients:
            raise _StageFailed(Stage.RCPT, "no recipients given — add --to")
        for address in self.request.recipients:
            line = f"RCPT TO:<{address}>"
            reply = await self.command(Stage.RCPT, line, line.encode("utf-8"))
            self.result.recipient_replies.append((address, reply))
            self.result.replies[str(Stage.RCPT)] = reply
        if not self.result.accepted_recipients:
            first = next(r for _, r in self.result.recipient_replies if not r.ok)
            raise _StageFailed(Stage.RCPT, f"no recipient accepted: {first}")

    async def data(self) -> None:
        smtp = self.smtp
        assert smtp is not None and self.request.message is not None
        reply = await self.command(Stage.DATA, "DATA", b"DATA")
        self.stage_reply(Stage.DATA, reply, expect=(354,))
        payload = _dot_stuffed(self.request.message)
        self.client(f"<message: {len(self.request.message)} bytes>")
        self.client(".")
        protocol = smtp.protocol
        if protocol is None:
            raise _StageFailed(Stage.DATA, "server closed the connection")
        try:
            # Written straight to the protocol so the DATA command's reply and the
            # end-of-data reply are recorded apart (aiosmtplib's data() merges them).
            protocol.write(payload)
            response = await protocol.read_response(timeout=self.request.timeout)
        except aiosmtplib.SMTPTimeoutError:
            raise _StageFailed(Stage.DATA, "timed out waiting for the reply to the message") from None
        except aiosmtplib.SMTPServerDisconnected:
            raise _StageFailed(Stage.DATA, "server closed the connection during DATA") from None
        reply = Reply(response.code, response.message)
        self.server(reply)
        self.stage_reply(Stage.DATA, reply, expect=(250,))

    async def finish(self) -> DialogueResult:
        smtp = self.smtp
        if smtp is not None and smtp.is_connected:
            self.client("QUIT")
            try:
                response = await asyncio.wait_for(smtp.quit(), timeout=min(self.request.timeout, 5.0))
                self.server(Reply(response.code, response.message))
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                self.note("connection closed without a QUIT reply")
            finally:
                smtp.close()
        self.result.total_seconds = self._now()
        return self.result


def _tls_info(smtp: aiosmtplib.SMTP, *, verified: bool) -> TlsInfo:
    sslobject = smtp.get_transport_info("ssl_object")
    if sslobject is None:
        sslobject = smtp.get_transport_info("sslobject")
    der = sslobject.getpeercert(binary_form=True) if sslobject is not None else None
    cipher = sslobject.cipher() if sslobject is not None else None
    return TlsInfo(
        version=(sslobject.version() if sslobject is not None else None) or "?",
        cipher=cipher[0] if cipher else "?",
        peer_fingerprint=fingerprint(der) if der else "?",
        verified=verified,
    )


def _handshake_error_text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message}) — pass --cafile (see `smtpplus tls export`) or --insecure"
    return f"TLS handshake failed: {exc}"


def _connect_error_text(exc: BaseException) -> str:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused — is a relay listening there? (`smtpplus status` lists served ports)"
    return str(exc)


async def run_dialogue(request: SendRequest) -> DialogueResult:
    """Run one SMTP session as ``request`` says; never raises for server behaviour."""
    return await _Dialogue(request).run()


def format_dialogue(result: DialogueResult, *, timings: bool = True) -> list[str]:
    """Human lines: ``[  12.3 ms] -> EHLO …`` / ``<- 250 …`` / ``** note``."""
    out = []
    for line in result.lines:
        stamp = f"[{line.at * 1000:8.1f} ms] " if timings else ""
        out.append(f"{stamp}{line.direction} {line.text}")
    return out
