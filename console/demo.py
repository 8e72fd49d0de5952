"""``smtpplus demo``: the console on a fresh store of its own, with the relay
in-process on 127.0.0.1, a capture sink as next hop, sample data, and one key that
sends a burst of mixed-priority mail through the real SMTP path (STARTTLS + AUTH) so
a newcomer watches priority-1 mail overtake a campaign.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, ClassVar

from textual.binding import Binding, BindingType

from console.app import ConsoleApp

DEMO_LIST = "Demo newsletter"
DEMO_USER = "demo-sender"
PENDING_USER = "demo-pending"
DEMO_DOMAIN = "demo.example"
MEMBERS = 1000
DEMO_RATE = 20.0
CAMPAIGN_DELAY = 15.0  # seconds from start until the campaign begins
SINK_PORT = 8025


@dataclass(slots=True)
class DemoSeed:
    """What seeding made; the password lives only in this process's memory."""

    username: str
    password: str
    sender: str
    campaign_id: int | None


def seed_demo(db: sqlite3.Connection, *, now: float | None = None, members: int = MEMBERS) -> DemoSeed:
    """A list and its members, an active user with a verified domain, an inactive
    user with a pending sender and a scheduled campaign. On a store seeded before,
    the demo user gets a fresh password (the old one was never kept)."""
    from relay import passwords
    from relay.campaigns import build_template
    from relay.store import campaigns, directory
    from relay.store.errors import NotFound

    stamp = time.time() if now is None else now
    password = passwords.generate_password()
    try:
        directory.get_user(db, DEMO_USER)
    except NotFound:
        pass
    else:
        directory.set_password_hash(db, DEMO_USER, passwords.hash_password(password))
        return DemoSeed(DEMO_USER, password, f"hello@{DEMO_DOMAIN}", None)
    directory.create_list(db, DEMO_LIST, "Sample list made by smtpplus demo")
    directory.import_members(
        db, DEMO_LIST, [(f"reader{n:04d}@example.net", f"Reader {n}") for n in range(1, members + 1)]
    )
    directory.create_user(
        db, list_name=DEMO_LIST, password_hash=passwords.hash_password(password), username=DEMO_USER,
        # Priority 5 (the lowest) lets each message's own header decide its lane.
        priority=5, note="the demo's sender: active, domain verified", domains=[DEMO_DOMAIN], active=True,
    )
    directory.approve_identities(db, [DEMO_DOMAIN], "demo seed")
    directory.create_user(
        db, list_name=DEMO_LIST, password_hash=passwords.hash_password(passwords.generate_password()),
        username=PENDING_USER, note="inactive; its sender awaits verification",
        senders=["someone@pending.example"],
    )
    template, subject, sender = build_template(
        subject="Welcome to smtpplus", mail_from=f"news@{DEMO_DOMAIN}",
        body="Hello!\n\nThis campaign drains at the demo's rate; priority-1 mail overtakes it.\n", now=stamp,
    )
    campaign = campaigns.create_campaign(
        db, DEMO_LIST, subject=subject, template=template, mail_from=sender,
        scheduled_at=stamp + CAMPAIGN_DELAY, priority=3, now=stamp,
    )
    return DemoSeed(DEMO_USER, password, f"hello@{DEMO_DOMAIN}", campaign.id)


def configure_delivery(db: sqlite3.Connection, next_hop: str, rate: float) -> None:
    from relay.store import queue

    queue.set_next_hop(db, next_hop, tls="off")
    queue.set_rate(db, rate)
    if queue.delivery_settings(db).paused:
        queue.set_paused(db, False)


# ---------------------------------------------------------------------------
# The burst

#: (X-Priority header or None, how many) — mixed, then shuffled.
BURST = [(1, 5), (2, 5), (None, 10), (4, 5), (5, 5)]


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

    DEMO_BINDINGS: ClassVar[list[Binding]] = [Binding("b", "burst", "Send burst", id="demo.burst")]
    BINDINGS: ClassVar[list[BindingType]] = [*DEMO_BINDINGS]  # merged with the console's own by Textual

    def __init__(self, store_path: str | Path, *, seed: DemoSeed, sink_port: int = SINK_PORT, **kwargs: Any) -> None:
        super().__init__(store_path, **kwargs)
        self.seed = seed
        self.sink_port = sink_port
        self.sink: Any = None
        self.bursts = 0

    async def prepare(self) -> None:
        """Start the capture sink (8025, else any free port) and point delivery at it."""
        from harness.sink import CaptureSink

        sink = CaptureSink("127.0.0.1", self.sink_port, keep_data=False)
        try:
            port = await sink.start()
        except OSError:
            sink = CaptureSink("127.0.0.1", 0, keep_data=False)
            port = await sink.start()
            self.notify(f"Port {self.sink_port} is taken: the capture sink listens on {port} instead.", timeout=6)
        self.sink = sink
        self.notify(f"Capture sink on 127.0.0.1:{port}: the relay delivers there.", timeout=5)
        await asyncio.to_thread(self._read, configure_delivery, f"127.0.0.1:{port}", DEMO_RATE)

    async def on_unmount(self) -> None:
        # (ConsoleApp.on_unmount stops the relay too: Textual calls both handlers.)
        sink, self.sink = self.sink, None
        if sink is not None:
            await sink.stop()

    def on_ready(self) -> None:
        self.notify(
            "Welcome to the smtpplus demo. A campaign starts shortly; press b to send a burst of "
            "mixed-priority mail and watch priority 1 overtake it. F1 lists every key.",
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
        self.notify(f"Burst {self.bursts}: {accepted} messages accepted on port {port} "
                    "(STARTTLS + AUTH). Priority 1 goes first.", timeout=6)
