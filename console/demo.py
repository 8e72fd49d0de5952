"""``smtpplus demo``: the console on a fresh store of its own, with the relay
in-process on 127.0.0.1, a capture sink as next hop, sample data, and one key that
sends a burst of mixed-priority mail through the real SMTP path (STARTTLS + AUTH) so
a newcomer watches priority-1 mail overtake a campaign.

The relay gets a dotted server name and a system sender, and the sink records every
message (with its body) to ``sink.jsonl`` in the relay's data directory, so a verification
completes inside the demo: Senders → ``s`` mails a code, the sink catches the mail,
the demo shows the code (again with ``v``), ``c`` confirms it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import re
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual.binding import Binding, BindingType

from console.app import ConsoleApp
from relay.store import Connection

if TYPE_CHECKING:
    from relay.config import RelayConfig

DEMO_LIST = "Demo newsletter"
DEMO_USER = "demo-sender"
PENDING_USER = "demo-pending"
PENDING_SENDER = "someone@pending.example"
DEMO_DOMAIN = "demo.example"
# Reserved names (RFC 2606): dotted, so smtpplus@<name> would be a valid sender too.
DEMO_SERVER_NAME = "relay.demo.example"
SYSTEM_SENDER = f"verification@{DEMO_DOMAIN}"
MEMBERS = 1000
DEMO_RATE = 20.0
CAMPAIGN_DELAY = 15.0  # seconds from start until the campaign begins
SINK_PORT = 8025
SINK_RECORD = "sink.jsonl"  # in the relay's data directory, one JSON object per message


@dataclass(slots=True)
class DemoSeed:
    """What seeding made; the password lives only in this process's memory."""

    username: str
    password: str
    sender: str
    campaign_id: int | None


def seed_demo(db: Connection, *, now: float | None = None, members: int = MEMBERS) -> DemoSeed:
    """A list and its members, an active user with a verified domain, an inactive
    user with a pending sender and a scheduled campaign. On a store seeded before,
    the demo user gets a fresh password (the old one was never kept)."""
    from relay.admin import campaigns as campaign_admin
    from relay.admin import users as user_admin
    from relay.admin import verification as verification_admin
    from relay.campaigns import build_template
    from relay.store import directory
    from relay.store.errors import NotFound

    stamp = time.time() if now is None else now
    try:
        fresh = user_admin.reset_password(db, DEMO_USER)
    except NotFound:
        pass
    else:
        return DemoSeed(DEMO_USER, fresh.password, f"hello@{DEMO_DOMAIN}", None)
    directory.create_list(db, DEMO_LIST, "Sample list made by smtpplus demo")
    directory.import_members(
        db, DEMO_LIST, [(f"reader{n:04d}@example.net", f"Reader {n}") for n in range(1, members + 1)]
    )
    demo_user = user_admin.create_user(
        db, list_name=DEMO_LIST, username=DEMO_USER,
        # Priority 5 (the lowest) lets each message's own header decide its lane.
        priority=5, note="the demo's sender: active, domain verified", domains=[DEMO_DOMAIN], active=True,
    )
    verification_admin.approve(db, [DEMO_DOMAIN], "demo seed")
    user_admin.create_user(
        db, list_name=DEMO_LIST, username=PENDING_USER, note="inactive; its sender awaits verification",
        senders=[PENDING_SENDER],
    )
    template, subject, sender = build_template(
        subject="Welcome to smtpplus", mail_from=f"news@{DEMO_DOMAIN}",
        body="Hello!\n\nThis campaign drains at the demo's rate; priority-1 mail overtakes it.\n", now=stamp,
    )
    campaign = campaign_admin.create_campaign(
        db, DEMO_LIST, subject=subject, template=template, mail_from=sender,
        scheduled_at=stamp + CAMPAIGN_DELAY, priority=3, now=stamp,
    )
    return DemoSeed(DEMO_USER, demo_user.password, f"hello@{DEMO_DOMAIN}", campaign.id)


def configure_delivery(db: Connection, next_hop: str, rate: float) -> None:
    """Delivery to the sink at the demo's rate, and the sender of code mails."""
    from relay.store import queue
    from relay.store.settings import Keys, set_setting

    queue.set_next_hop(db, next_hop, tls="off")
    queue.set_rate(db, rate)
    if queue.delivery_settings(db).paused:
        queue.set_paused(db, False)
    set_setting(db, Keys.SYSTEM_SENDER, SYSTEM_SENDER)


def demo_data_dir(store: str | os.PathLike[str]) -> Path:
    """Where the demo on a store given with ``--db`` keeps its TLS pair and the sink's
    record: beside a SQLite file (``demo-data/`` for ``demo.db``). A PostgreSQL store has
    no directory, and a path made from its URL would be a directory named after it —
    password included — under the working directory: it gets one in the user's data
    directory, named after its database."""
    from relay.config import default_data_dir
    from relay.store.postgres.location import database_name, is_postgres, normalize

    if is_postgres(store):
        name = re.sub(r"[^A-Za-z0-9._-]", "_", database_name(normalize(store))) or "default"
        return default_data_dir() / f"demo-postgresql-{name}-data"
    path = Path(store)
    return path.parent / f"{path.stem}-data"


def demo_farewell(store: str | os.PathLike[str]) -> str:
    """The line the demo prints on exit: where its store stays, fit to print and paste
    (a URL's password as ``***``: pass the real one, or use ~/.pgpass)."""
    import shlex

    from relay.store.postgres.location import masked

    where = masked(store)
    return f"The demo store stays at {where} — look around with: smtpplus --help, e.g. smtpplus queue ls --db {shlex.quote(where)}"


def demo_config(config: RelayConfig | None = None, **overrides: Any) -> RelayConfig:
    """The demo relay's settings: ``config`` (or the defaults) with a dotted server
    name when it has none, so code mails have a valid sender and name the relay."""
    from relay.config import RelayConfig

    config = dataclasses.replace(config, **overrides) if config else RelayConfig(**overrides)
    if "." not in config.server_name:
        config = dataclasses.replace(config, server_name=DEMO_SERVER_NAME)
    return config


def code_in_mail(data: bytes) -> str | None:
    """The code a verification mail carries (``1234 5678``), as the recipient reads it."""
    import email
    from email import policy as email_policy

    message = email.message_from_bytes(data, policy=email_policy.default)
    body = message.get_body(("plain",)) if isinstance(message, email.message.EmailMessage) else None
    text = body.get_content() if body is not None else data.decode("utf-8", "replace")
    match = re.search(r"^\s+(\d{4} \d{4})\s*$", text, flags=re.M)
    return match.group(1) if match else None


# ---------------------------------------------------------------------------
# The burst

#: (X-Priority header or None, how many) — mixed, then shuffled. At the demo's
#: 20 a second the priority-1 mail alone takes 4 s: long enough to watch it go first.
BURST = [(1, 80), (2, 20), (None, 20), (4, 10), (5, 10)]


def burst_messages(sender: str, *, count_scale: int = 1, seed: int | None = None) -> list[EmailMessage]:
    """Mixed-priority messages from the demo user's verified domain."""
    out: list[EmailMessage] = []
    n = 0
    for priority, count in BURST:
        for _ in range(count * count_scale):
            n += 1
            message = EmailMessage()
            message["From"] = f"Demo <{sender}>"
            message["To"] = f"customer{n:03d}@example.org"
            label = f"priority {priority}" if priority else "normal priority"
            message["Subject"] = f"Burst #{n} ({label})"
            if priority is not None:
                message["X-Priority"] = str(priority)
            message.set_content(f"Message {n} of a demo burst, {label}.\n")
            out.append(message)
    random.Random(seed).shuffle(out)
    return out


async def send_burst(
    host: str, port: int, username: str, password: str, sender: str, cafile: str | None
) -> int:
    """Send the burst over one connection: STARTTLS (verifying the relay's own
    certificate) and AUTH, like any mail client. Returns how many were accepted."""
    import aiosmtplib

    context = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=True, tls_context=context, timeout=30)
    accepted = 0
    await client.connect()
    try:
        await client.login(username, password)
        for message in burst_messages(sender):
            await client.send_message(message)
            accepted += 1
    finally:
        try:
            await client.quit()
        except aiosmtplib.SMTPException:
            pass
    return accepted


# ---------------------------------------------------------------------------
# The app


class DemoApp(ConsoleApp):
    """The console plus a capture sink and the burst key."""

    DEMO_BINDINGS: ClassVar[list[Binding]] = [
        Binding("b", "burst", "Burst", tooltip="Send a burst of mixed-priority mail through SMTP", id="demo.burst"),
        Binding("v", "last_code", "Last code", show=False,
                tooltip="Show the last verification code the capture sink caught", id="demo.last-code"),
    ]
    BINDINGS: ClassVar[list[BindingType]] = [*DEMO_BINDINGS]  # merged with the console's own by Textual

    def __init__(self, store_path: str | Path, *, seed: DemoSeed, sink_port: int = SINK_PORT, **kwargs: Any) -> None:
        from relay.config import RelayConfig

        given = kwargs.get("relay_config") or RelayConfig(host="127.0.0.1", data_dir=demo_data_dir(store_path))
        kwargs["relay_config"] = demo_config(given)
        super().__init__(store_path, **kwargs)
        self.seed = seed
        self.sink_port = sink_port
        self.sink: Any = None
        self.sink_record = Path(self.relay_config.data_dir) / SINK_RECORD
        self.last_code: tuple[str, str] | None = None  # (address, code) the sink caught last
        self.bursts = 0

    async def prepare(self) -> None:
        """Start the capture sink (8025, else any free port), recording to a file, and
        point delivery at it."""
        from harness.sink import CaptureSink

        def sink_on(port: int) -> CaptureSink:
            # Bodies kept: a verification code must be readable from the record.
            return CaptureSink("127.0.0.1", port, record_path=self.sink_record, on_message=self._sink_got)

        sink = sink_on(self.sink_port)
        try:
            port = await sink.start()
        except OSError:
            sink = sink_on(0)
            port = await sink.start()
            self.notify(f"Port {self.sink_port} is taken: the capture sink listens on {port} instead.", timeout=6)
        self.sink = sink
        self.notify(f"Capture sink on 127.0.0.1:{port}: the relay delivers there; it records to {self.sink_record}.",
                    timeout=6)
        await asyncio.to_thread(self._read, configure_delivery, f"127.0.0.1:{port}", DEMO_RATE)

    def _sink_got(self, record: Any) -> None:
        """A verification mail reached the sink (the recipient's mailbox, in the demo):
        show its code, as the recipient would read it."""
        from relay.verification import CODE_SUBJECT

        if record.subject != CODE_SUBJECT:
            return
        code = code_in_mail(record.data)
        if code is None:
            return
        address = record.rcpt_tos[0] if record.rcpt_tos else "?"
        self.last_code = (address, code)
        self._show_code()

    def _show_code(self) -> None:
        if self.last_code is None:
            self.notify("No verification code yet: on Senders (4) select a pending address and press s.",
                        timeout=6)
            return
        address, code = self.last_code
        # A no-break space: the toast never splits the code over two lines.
        self.notify(
            f"{code.replace(' ', chr(0xA0))} for {address} (caught by the capture sink). On Senders (4) "
            f"press c and type it; v shows it again. The mail itself: {self.sink_record}",
            title="Verification code", timeout=20,
        )

    def action_last_code(self) -> None:
        self._show_code()

    async def on_unmount(self) -> None:
        # (ConsoleApp.on_unmount stops the relay too: Textual calls both handlers.)
        sink, self.sink = self.sink, None
        if sink is not None:
            await sink.stop()

    def on_ready(self) -> None:
        self.notify(
            "Welcome to the smtpplus demo. A campaign starts shortly; press b to send a burst of "
            "mixed-priority mail and watch priority 1 overtake it. Senders (4), then s: verify an "
            "address with a mailed code. F1 lists every key.",
            timeout=12,
        )

    def extra_status(self) -> str | None:
        if self.sink is None:
            return None
        # The sink's address is the next hop shown just before: only its count here.
        return f"sink got {len(self.sink.messages):,}"

    def action_burst(self) -> None:
        relay = self.relay
        if relay is None or not relay.served:
            self.notify("The relay is not serving yet: wait a moment.", severity="warning")
            return
        port = next((p for p in relay.served if p in (2525, 587)), None) or next(
            (p for p in relay.served if p > 1024), relay.served[0]
        )
        cafile = str(relay.tls.cert_path) if relay.tls is not None else None
        self.run_worker(self._burst(port, cafile), group="demo", exit_on_error=False, name="burst")

    async def _burst(self, port: int, cafile: str | None) -> None:
        self.bursts += 1
        try:
            accepted = await send_burst("127.0.0.1", port, self.seed.username, self.seed.password, self.seed.sender,
                                        cafile)
        except Exception as exc:
            from console.app import one_line_error

            self.notify(f"Burst failed: {one_line_error(exc)}", severity="error", timeout=8)
            return
        ones = sum(count for priority, count in BURST if priority == 1)
        self.notify(f"Burst {self.bursts}: {accepted} messages accepted on port {port} "
                    f"(STARTTLS + AUTH). The {ones} of priority 1 go first: watch lane 1 empty "
                    "while the campaign waits.", timeout=8)
