"""``smtpplus campaigns``: a message to every member of a list, scheduled, with a
queue priority (3 unless set), paused by priority traffic and resumed by itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from console.cli import common
from console.cli.common import LazyGroup

campaigns = LazyGroup(name="campaigns", help="Campaigns sent to every member of a list.")


def campaign_json(c: Any) -> dict[str, Any]:
    """The public fields of a campaign (``relay.store.campaigns.CampaignInfo``)."""
    return {
        "id": c.id,
        "list": c.list_name,
        "subject": c.subject,
        "from": c.mail_from,
        "priority": c.priority,
        "state": c.display_state,
        "scheduled_at": c.scheduled_at,
        "total": c.total,
        "expanded": c.expanded,
        "skipped": c.skipped,
        "sent": c.sent,
        "failed": c.failed,
        "pending": c.pending,
        "created_at": c.created_at,
        "finished_at": c.finished_at,
    }


@campaigns.command("add")
@click.option("--list", "list_name", required=True, help="Send to every member of this list.")
@click.option("--subject", default=None, help="Subject (required with --body; replaces the file's with --eml).")
@click.option("--body", default=None, help="Plain-text body.")
@click.option("--eml", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A whole message file (.eml) to send instead of --body.")
@click.option("--from", "mail_from", default=None,
              help="Sender address: required with --body; optional with --eml (default: the file's From:, "
              "which --from replaces). It and every From:/Sender: address must be a verified sender identity "
              "(the exact address, or exactly its domain) — see `smtpplus senders ls`.")
@click.option("--at", "at", default=None, help="When: 'now' (default), '+30m', or '2025-06-01 09:30' (local time).")
@click.option("--priority", default="3", show_default=True, help="Queue priority 1 (very high) – 5 (very low).")
@common.json_option
@common.db_option
def add(list_name: str, subject: str | None, body: str | None, eml: Path | None, mail_from: str | None,
        at: str | None, priority: str, as_json: bool, db_path: Path | None) -> None:
    """Schedule a campaign: one message per list member.

    The sender must be verified like any relay user's: a campaign from an address
    whose identity (the address, or exactly its domain) is pending or unknown is
    refused, with the `smtpplus senders …` command that verifies it."""
    from relay.admin.campaigns import compose_campaign, create_draft

    draft = compose_campaign(
        subject=subject, mail_from=mail_from, body=body, eml=eml.read_bytes() if eml is not None else None, at=at,
        priority=priority,
    )
    when = draft.scheduled_at
    from relay.admin.unsubscribe import unsubscribe_settings

    with common.open_db(db_path) as db:
        info = create_draft(db, list_name, draft)
        _target, unsubscribe = unsubscribe_settings(db, info.list_name)
    if not unsubscribe.configured:
        click.echo(
            f"smtpplus: warning: list {info.list_name!r} has no List-Unsubscribe target, so its messages carry none "
            f"(large mailbox providers refuse or file such bulk mail) — set one before it starts: "
            f"smtpplus lists unsubscribe {common.shell_word(info.list_name)} --url-template 'https://…/{{token}}' "
            "and/or --mailto ADDRESS",
            err=True,
        )
    if as_json:
        common.print_json(campaign_json(info))
        return
    click.echo(
        f"Campaign {info.id} to list {info.list_name!r} ({info.total} member(s)), priority {info.priority}, "
        f"starts {'now' if when is None else common.fmt_time(info.scheduled_at)}."
    )
    click.echo(f"Follow it with: smtpplus campaigns ls   (pause: smtpplus campaigns pause {info.id})")


@campaigns.command("ls")
@common.json_option
@common.db_option
def ls(as_json: bool, db_path: Path | None) -> None:
    """Campaigns, newest first, with state and progress."""
    from relay.store import campaigns as store_campaigns

    with common.open_db(db_path, create=False) as db:
        infos = store_campaigns.list_campaigns(db)
    if as_json:
        common.print_json([campaign_json(c) for c in infos])
        return
    if not infos:
        click.echo("No campaigns yet — create one with: smtpplus campaigns add --list NAME --subject S --body T --from ADDR")
        return
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from relay.display import clean

    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "list", "state", "prio", "subject", "scheduled", "sent", "failed", "pending", "total"):
        table.add_column(column, no_wrap=column in ("id", "state"))
    for c in infos:
        table.add_row(
            str(c.id), escape(clean(c.list_name)), c.display_state, str(c.priority), escape(clean(c.subject[:40])),
            common.fmt_time(c.scheduled_at), str(c.sent), str(c.failed), str(c.pending),
            str(c.total if c.total is not None else "-"),
        )
    common.stdout_console().print(table)


def _change(name: str, help_text: str) -> None:
    @campaigns.command(name, help=help_text)
    @click.argument("campaign_id", type=int)
    @common.json_option
    @common.db_option
    def command(campaign_id: int, as_json: bool, db_path: Path | None) -> None:
        from relay.store import campaigns as store_campaigns

        fn = getattr(store_campaigns, f"{name}_campaign")
        with common.open_db(db_path) as db:
            info = fn(db, campaign_id)
        if as_json:
            common.print_json(campaign_json(info))
            return
        click.echo(f"Campaign {info.id}: {info.display_state} (sent {info.sent}, pending {info.pending}).")


_change("pause", "Pause a campaign: its waiting messages are held until resumed.")
_change("resume", "Resume a campaign an operator paused.")
_change("cancel", "Cancel a campaign: unsent messages are removed; sent ones stay sent.")
