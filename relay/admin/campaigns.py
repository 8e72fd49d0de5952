"""Campaigns: compose one from operator input, check its sender, schedule it.

A campaign sends only as verified sender identities: its envelope sender and every
address in its ``From:``/``Sender:`` must be covered by a verified identity (the
exact address, or exactly its domain) — the rule, and the header parsing, the relay
applies to users' mail. The store only writes the row (:func:`relay.store.campaigns.insert_campaign`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from relay import policy
from relay.campaigns import CampaignInputError, build_template, eml_sender, parse_when
from relay.message import address_like, header_addresses, header_section, split_headers
from relay.priority import validate_priority
from relay.store import Connection
from relay.store import campaigns as store
from relay.store.campaigns import CampaignInfo
from relay.store.directory import get_list, identity_states
from relay.store.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class CampaignDraft:
    """A campaign composed from operator input, ready for :func:`create_campaign`."""

    template: bytes
    subject: str
    mail_from: str
    scheduled_at: float | None  # None: now
    priority: int


def compose_campaign(
    *,
    subject: str | None,
    mail_from: str | None,
    body: str | None = None,
    eml: bytes | None = None,
    at: str | None = None,
    priority: int | str = 3,
    now: float | None = None,
) -> CampaignDraft:
    """The message from a plain-text ``body`` or a whole ``eml`` file (exactly one),
    the sender (``mail_from``, else the .eml's From:), ``at`` (``now``, ``+30m``,
    a local date-time) and the queue priority. InvalidInput names the fix."""
    if (body is None) == (eml is None):
        raise InvalidInput("give exactly one of --body TEXT or --eml FILE")
    if body is not None and not subject:
        raise InvalidInput("--subject is required with --body")
    level = validate_priority(priority)
    sender = mail_from or (eml_sender(eml) if eml is not None else None)
    if not sender:
        raise InvalidInput("give the sender with --from ADDRESS" + (
            " (the --eml file has no From: address)" if eml is not None else " (required with --body)"))
    try:
        when = parse_when(at, now=now)
        template, final_subject, _header_from = build_template(
            subject=subject, mail_from=sender, body=body, eml=eml, now=now
        )
    except CampaignInputError as exc:
        raise InvalidInput(str(exc)) from None
    return CampaignDraft(template, final_subject, sender, when, level)


def create_campaign(
    db: Connection,
    list_name: str,
    *,
    subject: str,
    template: bytes,
    mail_from: str,
    scheduled_at: float | None = None,
    priority: int = 3,
    now: float | None = None,
) -> CampaignInfo:
    """Schedule ``template`` (a whole message without ``To:``/``Message-ID:``, CRLF
    line ends — see :func:`compose_campaign`) for every member of ``list_name`` at
    ``scheduled_at`` (default now), with queue ``priority``.

    Refused (:class:`InvalidInput`, one line naming the fix) for a list without
    members, or unless ``mail_from`` and every address in the template's
    ``From:``/``Sender:`` is covered by a verified sender identity."""
    stamp = time.time() if now is None else now
    target = get_list(db, list_name)
    if target.members == 0:
        raise InvalidInput(
            f"list {target.name!r} has no members — add some with `smtpplus lists members import {target.name} FILE.csv`"
        )
    try:
        sender = policy.normalize_address(mail_from)
    except policy.PolicyError as exc:
        raise InvalidInput(f"--from: {exc}") from None
    require_verified_sender(db, sender, "--from")
    for address, header in template_senders(template):
        require_verified_sender(db, address, f"the message's {header}")
    level = validate_priority(priority)
    when = stamp if scheduled_at is None else float(scheduled_at)
    return store.insert_campaign(
        db, target, subject=subject, template=template, mail_from=sender, scheduled_at=when, priority=level, now=stamp
    )


def create_draft(db: Connection, list_name: str, draft: CampaignDraft, *, now: float | None = None) -> CampaignInfo:
    """:func:`create_campaign` for a :class:`CampaignDraft`."""
    return create_campaign(
        db, list_name, subject=draft.subject, template=draft.template, mail_from=draft.mail_from,
        scheduled_at=draft.scheduled_at, priority=draft.priority, now=now,
    )


def template_senders(template: bytes) -> list[tuple[str, str]]:
    """(address, header) for every address a reader could take for the sender of
    ``template``: its ``From:`` and ``Sender:`` addresses, display names and comments
    included. Raises :class:`InvalidInput` for a missing, repeated or unparsable one."""
    # The relay's own parsers, so a campaign passes exactly the checks SMTP mail does.
    fields = split_headers(header_section(template))
    found: list[tuple[str, str]] = []
    for name, header in (("from", "From:"), ("sender", "Sender:")):
        values = [value for field_name, value in fields if field_name == name]
        if not values:
            if name == "from":
                raise InvalidInput("the campaign message has no From: header — give --from ADDRESS")
            continue
        if len(values) > 1:
            raise InvalidInput(f"the campaign message has more than one {header} header — keep one")
        addresses = header_addresses(values[0])
        if addresses is None:
            raise InvalidInput(f"the campaign message's {header} header does not parse: {values[0].strip()[:200]!r}")
        for address in (*addresses, *address_like(values[0])):
            if all(address.lower() != seen.lower() for seen, _ in found):
                found.append((address, header))
    return found


def require_verified_sender(db: Connection, address: str, what: str) -> str:
    """The verified identity (exact address, else exactly its domain) that lets a
    campaign send as ``address``; :class:`InvalidInput` naming the fix otherwise."""
    check = policy.check_address(address)
    if check.problem is not None or check.address is None:
        raise InvalidInput(
            f"{what} {address!r} is not a valid sender address ({policy.describe_address_problem(check.problem)})"
        )
    canonical = check.address
    domain = canonical.rpartition("@")[2]
    states = identity_states(db, [canonical, domain])
    for value in (canonical, domain):
        if states.get(value) == "verified":
            return value
    if states.get(canonical) == "pending":
        raise InvalidInput(
            f"{what} {canonical}: sender identity {canonical} awaits verification — verify it with "
            f"`smtpplus senders send-code {canonical}` (or `smtpplus senders approve {canonical} --reason …`)"
        )
    if states.get(domain) == "pending":
        raise InvalidInput(
            f"{what} {canonical}: sender identity {domain} awaits verification — verify it with "
            f"`smtpplus senders check-dns {domain}` (or `smtpplus senders approve {domain} --reason …`)"
        )
    raise InvalidInput(
        f"{what} {canonical} is not a known sender identity — add it to a user's senders/domains and verify it "
        f"(`smtpplus users edit USER --senders {canonical}` or `--domains {domain}`, then `smtpplus senders …`)"
    )
