"""Campaigns: building the message template, reading the schedule time, and the
engine's task that starts due campaigns, expands them in batches and marks them done.

Expansion happens in batches of :data:`relay.store.campaigns.EXPAND_BATCH` members,
each its own transaction on the engine's store connection, so the scheduler's
rounds run between batches and a 100,000-member list never blocks delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import logging
import re
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP as SMTP_POLICY

from relay.store import AsyncStore, StoreError
from relay.store.campaigns import (
    expand_batch,
    expandable_campaigns,
    finish_campaigns,
    next_scheduled_at,
    start_due_campaigns,
)

log = logging.getLogger("smtpplus.campaigns")

POLL = 0.5


class CampaignInputError(ValueError):
    """Bad campaign input (the message says what to fix)."""


def display_state(state: str, paused_reason: str | None, *, delivery_paused: bool) -> str:
    """The one label operators see for a campaign, in the CLI and the console alike.

    ``paused: priority traffic`` while preempted, ``paused (all delivery paused)``
    while nothing at all is delivered (``smtpplus queue pause``): a campaign that
    cannot send is never shown as sending. An operator's own pause wins, since
    resuming delivery would not restart that campaign."""
    if state == "paused" and paused_reason == "operator":
        return "paused"
    if delivery_paused and state in ("sending", "paused"):
        return "paused (all delivery paused)"
    if state == "paused":
        return "paused: priority traffic" if paused_reason == "priority" else "paused"
    return state


def build_template(*, subject: str | None, mail_from: str, body: str | None = None, eml: bytes | None = None, now: float | None = None) -> tuple[bytes, str, str]:
    """The message every member receives, without ``To:`` and ``Message-ID:``
    (added per member). Returns (template bytes with CRLF line ends, subject, From).

    ``body`` makes a plain-text UTF-8 message; ``eml`` takes a whole message file,
    whose ``To``/``Cc``/``Bcc``/``Message-ID`` are dropped and whose ``Subject`` and
    ``From`` are replaced by ``subject``/``mail_from`` when those are given."""
    if (body is None) == (eml is None):
        raise CampaignInputError("give exactly one of --body TEXT or --eml FILE")
    stamp = time.time() if now is None else now
    if body is not None:
        msg = EmailMessage(policy=SMTP_POLICY)
        msg["From"] = mail_from
        msg["Subject"] = subject or ""
        msg["Date"] = email.utils.formatdate(stamp, localtime=True)
        msg["MIME-Version"] = "1.0"
        msg.set_content(body if body.endswith("\n") else body + "\n", charset="utf-8")
        del msg["To"]
        return msg.as_bytes(), subject or "", mail_from
    assert eml is not None
    parsed = BytesParser(policy=SMTP_POLICY).parsebytes(eml)
    if not parsed.keys():
        raise CampaignInputError("the --eml file has no headers — is it a message file (.eml)?")
    # List-Unsubscribe is made per member from the list's settings (relay.unsubscribe).
    for name in ("To", "Cc", "Bcc", "Message-ID", "Return-Path", "Delivered-To", "List-Unsubscribe", "List-Unsubscribe-Post"):
        del parsed[name]
    if subject is not None:
        del parsed["Subject"]
        parsed["Subject"] = subject
    if mail_from:
        del parsed["From"]
        parsed["From"] = mail_from
    if parsed["Date"] is None:
        parsed["Date"] = email.utils.formatdate(stamp, localtime=True)
    data = parsed.as_bytes()
    data = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    return data, str(parsed["Subject"] or ""), str(parsed["From"] or mail_from)


def eml_sender(eml: bytes) -> str | None:
    """The address in an .eml file's ``From:`` (for a default --from)."""
    parsed = BytesParser(policy=SMTP_POLICY).parsebytes(eml, headersonly=True)
    value = parsed["From"]
    if value is None:
        return None
    address = email.utils.parseaddr(str(value))[1]
    return address or None


_RELATIVE = re.compile(r"^\+?(\d+(?:\.\d+)?)\s*([smhd])$")


def parse_when(text: str | None, *, now: float | None = None) -> float | None:
    """``--at``: ``now``, ``+30m`` / ``+2h`` / ``+45s`` / ``+1d``, an ISO date-time in
    local time (``2025-06-01 09:30``), or one with an offset. None = now."""
    if text is None or not text.strip() or text.strip().lower() == "now":
        return None
    stamp = time.time() if now is None else now
    value = text.strip()
    match = _RELATIVE.match(value)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return stamp + float(match.group(1)) * unit
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CampaignInputError(
            f"--at {text!r} is not a time — use e.g. '2025-06-01 09:30' (local time), '+30m' or 'now'"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time
    return when.timestamp()


class CampaignRunner:
    """The engine's campaign task: start due campaigns, expand them, mark them done."""

    def __init__(
        self,
        store: AsyncStore,
        *,
        server_name: str,
        notify: Callable[[], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.store = store
        self.server_name = server_name
        self.notify = notify
        self.stopping = stopping
        self.expanded = 0

    async def run(self, wake: asyncio.Event) -> None:
        while not self.stopping():
            try:
                await self.step()
            except StoreError as exc:
                log.warning("campaigns: %s", exc)
            wait = POLL
            try:
                upcoming = await self.store.run(next_scheduled_at)
            except StoreError:
                upcoming = None
            if upcoming is not None:
                wait = min(wait, max(0.0, upcoming - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)
            wake.clear()

    async def step(self) -> None:
        """One pass: start, expand every expandable campaign to the end, finish."""
        await self.store.run(start_due_campaigns)
        for campaign_id in await self.store.run(expandable_campaigns):
            while not self.stopping():
                created = await self.store.run(expand_batch, campaign_id, server_name=self.server_name)
                if created == 0:
                    break
                self.expanded += created
                self.notify()
                await asyncio.sleep(0)
        await self.store.run(finish_campaigns)
