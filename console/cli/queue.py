"""``smtpplus queue``: the sending queue — inspect, hold, release, retry, delete;
pause and resume all delivery; the shared rate, parallel connections, next hop and
anti-starvation share.

Every change is a row or setting in the store (recorded as an operator event); a
relay in another process follows it within about a second.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from console.cli import common
from console.cli.common import CliError, LazyGroup

queue = LazyGroup(name="queue", help="The sending queue: inspect, hold, retry; pause, rate, next hop, starvation share.")

STATES = ("active", "all", "queued", "sending", "deferred", "held", "sent", "failed")


def _escape(value: object) -> str:
    """Outside text for a Rich table: terminal controls escaped, then markup."""
    from rich.markup import escape

    from relay.display import clean

    return escape(clean(value))


def message_json(row: Any) -> dict[str, Any]:
    """The public fields of a queued message (``relay.store.queue.MessageRow``)."""
    return {
        "queue_id": row.queue_id,
        "state": row.state,
        "priority": row.priority,
        "header_priority": row.header_priority,
        "user_priority": row.user_priority,
        "origin": row.origin,
        "list": row.list_name,
        "user": row.username,
        "campaign_id": row.campaign_id,
        "mail_from": row.mail_from,
        "header_from": row.header_from,
        "subject": row.subject,
        "recipients": row.recipients,
        "size": row.size,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at if row.state in ("queued", "deferred") else None,
        "last_reply": row.last_reply,
        "client": row.client,
        "port": row.port,
        "created_at": row.created_at,
        "finished_at": row.finished_at,
    }


def _wait(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


@queue.command("ls")
@click.option("--state", type=click.Choice(STATES), default="active", show_default=True,
              help="Which messages: active = queued, sending, deferred and held.")
@click.option("--priority", type=click.IntRange(1, 5), default=None, help="Only this effective priority (1–5).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True, help="At most this many rows.")
@common.json_option
@common.db_option
def ls(state: str, priority: int | None, limit: int, as_json: bool, db_path: Path | None) -> None:
    """Messages in dispatch order: priority first, then first in, first out."""
    import time

    from relay.store import queue as store_queue

    with common.open_db(db_path, create=False) as db:
        rows = store_queue.list_messages(db, state=state, priority=priority, limit=limit)
        overview = store_queue.queue_overview(db) if not as_json else None
    if as_json:
        common.print_json([message_json(r) for r in rows])
        return
    assert overview is not None
    settings = overview.settings
    status = overview.delivery_state[0]
    if overview.relay_alive and settings.paused:
        status = "paused"
    click.echo(
        f"delivery: {status} · next hop {settings.next_hop or 'none'} "
        f"· rate {'unlimited' if not settings.rate else f'{settings.rate:g}/s'} · parallel {settings.parallel}"
    )
    if not rows:
        click.echo({"active": "The queue is empty.", "all": "No messages."}.get(state, f"No {state} messages."))
        return
    from rich import box
    from rich.table import Table

    now = time.time()
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("queue id", "state", "prio", "origin", "from", "rcpts", "subject", "tries", "waiting", "last reply"):
        table.add_column(column, no_wrap=column in ("queue id", "state"))
    for r in rows:
        table.add_row(
            r.queue_id, r.state, str(r.priority), r.origin, _escape(r.mail_from or "<>"), str(r.recipients),
            _escape(r.subject[:40]), str(r.attempts),
            _wait(now - r.created_at) if r.finished_at is None else "-",
            _escape((r.last_reply or "")[:50]),
        )
    common.stdout_console().print(table)


@queue.command("show")
@click.argument("queue_id")
@common.json_option
@common.db_option
def show(queue_id: str, as_json: bool, db_path: Path | None) -> None:
    """One message: envelope, priorities, recipients and its event timeline."""
    from relay.priority import NAMES
    from relay.store import queue as store_queue

    with common.open_db(db_path, create=False) as db:
        detail = store_queue.message_detail(db, queue_id)
    m = detail.message
    if as_json:
        out = message_json(m)
        out["recipient_states"] = [
            {"address": r.address, "state": r.state, "last_reply": r.last_reply} for r in detail.recipients
        ]
        out["events"] = [
            {"at": e.at, "kind": e.kind, "reason": e.reason, "detail": e.detail, "client": e.client, "port": e.port}
            for e in detail.events
        ]
        out["headers"] = detail.headers
        common.print_json(out)
        return
    from relay.display import clean

    lines = [
        f"queue id      {m.queue_id}",
        f"state         {m.state} (attempts {m.attempts})",
        f"priority      {m.priority} {NAMES.get(m.priority, '')} — header {m.header_priority}, user {m.user_priority}",
        f"origin        {m.origin}" + (f" (campaign {m.campaign_id})" if m.campaign_id else ""),
        f"list / user   {clean(m.list_name or '-')} / {clean(m.username or '-')}",
        f"from          {clean(m.mail_from or '<>')}" + (f"   (header: {clean(m.header_from)})" if m.header_from else ""),
        f"subject       {clean(m.subject)}",
        f"size          {m.size} bytes",
        f"received      {common.fmt_time(m.created_at)}" + (f" from {m.client}, port {m.port}" if m.client else ""),
    ]
    if m.state in ("queued", "deferred"):
        lines.append(f"next attempt  {common.fmt_time(m.next_attempt_at)}")
    if m.finished_at:
        lines.append(f"finished      {common.fmt_time(m.finished_at)}")
    if m.last_reply:
        lines.append(f"last reply    {clean(m.last_reply)}")
    if m.header_priority == 1:
        lines.append("note          header priority 1: recipients' mail clients show it as urgent")
    for line in lines:
        click.echo(line)
    click.echo("recipients")
    for r in detail.recipients:
        click.echo(f"  {clean(r.address)}  {r.state}" + (f"  {clean(r.last_reply)}" if r.last_reply else ""))
    click.echo("timeline")
    for e in detail.events:
        click.echo(f"  {common.fmt_time(e.at)}  {e.kind:<9} {e.reason:<22} {clean(e.detail)}")


def _report(results: list[Any], verb: str) -> None:
    found = [r for r in results if r.found]
    changed = 0
    for r in found:
        if r.after is None and verb != "deleted":
            click.echo(f"{r.queue_id}: unchanged — {r.note}")
        else:
            changed += 1
            suffix = f" ({r.note})" if r.note else ""
            click.echo(f"{r.queue_id}: {verb}{suffix}")
    if len(found) > 1 or len(found) != len(results):
        click.echo(f"{changed} of {len(found)} message(s) {verb}.")


def read_ids(queue_ids: tuple[str, ...], action: str, db: Any) -> list[str]:
    """The ids to act on: as given, ``-`` for ids on stdin (one per line), or ``ALL``
    for every message the action applies to (as postsuper)."""
    from relay.store import queue as store_queue

    if "ALL" in queue_ids:
        if len(queue_ids) > 1:
            raise CliError("ALL stands alone — give ALL or queue ids, not both")
        return store_queue.queue_ids_in(db, store_queue.ALL_TARGETS[action])
    ids: list[str] = []
    for given in queue_ids:
        if given == "-":
            ids.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            ids.append(given)
    return list(dict.fromkeys(ids))


def _action(name: str, verb: str, help_text: str, all_means: str) -> None:
    action = {"rm": "delete"}.get(name, name)

    @queue.command(name, help=f"{help_text}\n\nID is a queue id; - reads ids from stdin (one per line); ALL means "
                   f"{all_means}. Unknown ids are named on stderr with exit 1; the known ones are still acted on.")
    @click.argument("queue_ids", nargs=-1, required=True, metavar="ID...|-|ALL")
    @common.json_option
    @common.db_option
    def command(queue_ids: tuple[str, ...], as_json: bool, db_path: Path | None, **extra: Any) -> None:
        from relay.store import queue as store_queue

        fn = getattr(store_queue, action)
        with common.open_db(db_path) as db:
            ids = read_ids(queue_ids, action, db)
            if name == "rm" and "ALL" in queue_ids:
                common.confirm_or_require_yes(f"delete all {len(ids)} message(s) not yet sent", extra.get("yes", False))
            results = fn(db, ids, skip_unknown=True) if ids else []
        if as_json:
            common.print_json(results)
        elif not ids:
            click.echo(f"No message to be {verb}.")
        else:
            _report(results, verb)
        unknown = [r.queue_id for r in results if not r.found]
        if unknown:
            raise CliError(f"no message with queue id {', '.join(unknown)} — see `smtpplus queue ls`")

    if name == "rm":
        click.option("--yes", is_flag=True, help="Do not ask before rm ALL (needed when not on a terminal).")(command)


# What ALL means is decided in relay.store.queue.ALL_TARGETS; tests hold these texts to it.
_action("hold", "held", "Hold messages: nothing delivers them until released.", "every queued or deferred message")
_action("release", "released", "Release held messages back into the queue.", "every held message")
_action("retry", "queued for a retry now", "Retry now: deferred, held or failed messages become ready at once.",
        "every deferred, held or failed message")
_action("rm", "deleted", "Delete messages from the queue (recorded as an operator event).",
        "every queued, deferred, held or failed message (asks first; --yes for scripts)")


def _rate_text(value: float) -> str:
    return "unlimited" if value == 0 else f"{value:g} messages per second"


@queue.command("pause")
@common.json_option
@common.db_option
def pause(as_json: bool, db_path: Path | None) -> None:
    """Pause all delivery (deliveries under way finish)."""
    from relay.store import queue as store_queue

    with common.open_db(db_path) as db:
        was = store_queue.set_paused(db, True)
    if as_json:
        common.print_json({"paused": True, "was_paused": was})
        return
    click.echo("Delivery was already paused." if was else "Delivery paused. Resume with: smtpplus queue resume")


@queue.command("resume")
@common.json_option
@common.db_option
def resume(as_json: bool, db_path: Path | None) -> None:
    """Resume all delivery."""
    from relay.store import queue as store_queue

    with common.open_db(db_path) as db:
        was = store_queue.set_paused(db, False)
    if as_json:
        common.print_json({"paused": False, "was_paused": was})
        return
    click.echo("Delivery resumed." if was else "Delivery was not paused.")


@queue.command("rate")
@click.argument("rate", required=False)
@common.json_option
@common.db_option
def rate(rate: str | None, as_json: bool, db_path: Path | None) -> None:
    """Show or set the shared delivery rate in messages per second (0 = unlimited)."""
    from relay.store import queue as store_queue

    _show_or_set(db_path, as_json, "rate", "rate", rate, store_queue.set_rate, _rate_text)


@queue.command("parallel")
@click.argument("count", required=False)
@common.json_option
@common.db_option
def parallel(count: str | None, as_json: bool, db_path: Path | None) -> None:
    """Show or set the maximum parallel next-hop connections (1–256)."""
    from relay.store import queue as store_queue

    _show_or_set(db_path, as_json, "parallel", "parallel connections", count, store_queue.set_parallel, str)


def _show_or_set(db_path: Path | None, as_json: bool, key: str, label: str, given: str | None,
                 setter: Any, text: Any) -> None:
    """A delivery control: show it (no value given) or set it, then say what it is now."""
    from relay.store import queue as store_queue

    with common.open_db(db_path, create=given is not None) as db:
        if given is not None:
            setter(db, given)
        value = getattr(store_queue.delivery_settings(db), key)
    if as_json:
        common.print_json({key: value})
    elif given is None:
        click.echo(f"{label}: {text(value)}")
    else:
        click.echo(f"{label[0].upper()}{label[1:]}: {text(value)}.")


@queue.command("starvation")
@click.argument("share", required=False)
@common.json_option
@common.db_option
def starvation(share: str | None, as_json: bool, db_path: Path | None) -> None:
    """Show or set the anti-starvation share: the fraction of the bandwidth reserved
    for the oldest lower-priority message (0 = off, the default: strict priority;
    at most 0.5). E.g. 0.05 sends 1 message in 20 from the oldest lower priority
    while higher-priority mail is waiting."""
    from relay.store import queue as store_queue

    with common.open_db(db_path, create=share is not None) as db:
        if share is None:
            value = store_queue.delivery_settings(db).starvation_share
        else:
            value = store_queue.set_starvation_share(db, share)
    if as_json:
        common.print_json({"starvation_share": value, "description": store_queue.describe_starvation_share(value)})
    elif share is None:
        click.echo(f"starvation share: {store_queue.describe_starvation_share(value)}")
    else:
        click.echo(f"Starvation share: {store_queue.describe_starvation_share(value)}.")


@queue.command("next-hop")
@click.argument("hop", required=False, metavar="HOST:PORT|mx")
@click.option("--tls", type=click.Choice(["required", "opportunistic", "off"]), default=None,
              help="STARTTLS toward the next hop (required never sends in plain text).")
@click.option("--auth-user", default=None, help="AUTH at the next hop as this user ('' for none).")
@click.option("--auth-password-env", default=None, metavar="VAR",
              help="Read the next hop's AUTH password from this environment variable.")
@click.option("--cafile", default=None, help="PEM CA bundle to trust for STARTTLS 'required' ('' for the system's).")
@click.option("--clear", is_flag=True, help="Remove the next hop: delivery waits.")
@common.json_option
@common.db_option
def next_hop(hop: str | None, tls: str | None, auth_user: str | None, auth_password_env: str | None,
             cafile: str | None, clear: bool, as_json: bool, db_path: Path | None) -> None:
    """Show or set where mail goes: a next hop (smarthost) every message is delivered
    to, or `mx`: each recipient domain's MX hosts (on the relay's `mx_port`, STARTTLS as
    --tls says, opportunistic by default; never AUTH; `smtpplus routes` first)."""
    from relay.store import queue as store_queue

    if clear and hop:
        raise CliError("give HOST:PORT, mx or --clear, not both")
    mx = hop is not None and hop.strip().lower() == store_queue.MX_MODE
    if mx and (auth_user or auth_password_env):
        raise CliError("MX hosts never get AUTH: drop --auth-user/--auth-password-env with mx")
    password = None
    if auth_password_env is not None:
        password = os.environ.get(auth_password_env)
        if password is None:
            raise CliError(f"environment variable {auth_password_env} is not set — export it first")
    if cafile and not Path(cafile).is_file():
        raise CliError(f"--cafile {cafile} does not exist")
    show_only = not clear and hop is None and tls is None and auth_user is None and password is None and cafile is None
    with common.open_db(db_path, create=not show_only) as db:
        if not show_only:
            current = store_queue.delivery_settings(db).next_hop
            value = None if clear else (hop or current)
            store_queue.set_next_hop(db, value, tls=tls, user=auth_user, password=password, cafile=cafile)
        s = store_queue.delivery_settings(db)
        from relay.store.settings import Keys, get_setting

        published_name = get_setting(db, Keys.SERVER_NAME) if s.mx and not show_only else None
    if published_name is not None and "." not in published_name.strip("."):
        # The relay refuses MX delivery without a dotted EHLO name: say so now, not
        # only in an event the operator may never read.
        click.echo(f"warning: the relay's server name {published_name!r} has no dot, so MX delivery waits — "
                   "set server_name (SMTPPLUS_SERVER_NAME or the TOML file) and restart the relay", err=True)
    if as_json:  # never the password
        common.print_json({"next_hop": s.next_hop, "tls": s.next_hop_tls, "auth_user": s.next_hop_user,
                           "cafile": s.next_hop_cafile})
    elif show_only:
        click.echo(f"next hop: {s.next_hop or 'none (delivery waits)'}, STARTTLS {s.next_hop_tls}"
                   + (f", AUTH as {s.next_hop_user}" if s.next_hop_user else ""))
    elif s.next_hop is None:
        click.echo("Next hop cleared: delivery waits until one is set.")
    elif s.mx:
        click.echo(f"Delivery: each recipient domain's MX hosts (STARTTLS {s.next_hop_tls}; routes first).")
    else:
        click.echo(f"Next hop: {s.next_hop}" + (f" (STARTTLS {tls})" if tls else ""))


@queue.command("status")
@common.json_option
@common.db_option
def status(as_json: bool, db_path: Path | None) -> None:
    """Counts per priority, the oldest wait, the controls and the engine's state."""
    import time

    from relay.store import queue as store_queue

    now = time.time()
    with common.open_db(db_path, create=False) as db:
        o = store_queue.queue_overview(db, now=now)
    s = o.settings
    if as_json:
        common.print_json({
            "paused": s.paused, "rate": s.rate, "parallel": s.parallel, "next_hop": s.next_hop,
            "next_hop_tls": s.next_hop_tls, "starvation_share": s.starvation_share, "status": o.status,
            "relay_alive": o.relay_alive, "delivery": dict(zip(("state", "detail"), o.delivery_state, strict=True)),
            "sent_last_minute": o.sent_last_minute,
            "priorities": [
                {"priority": lane.priority, "queued": lane.queued, "deferred": lane.deferred, "sending": lane.sending,
                 "held": lane.held, "oldest_wait": lane.oldest_wait(now)}
                for lane in o.lanes
            ],
        })
        return
    state, detail = o.delivery_state
    click.echo(f"delivery: {state}" + (f" ({detail})" if detail else ""))
    click.echo(f"paused {s.paused} · next hop {s.next_hop or 'none'} ({s.next_hop_tls}) · rate "
               f"{'unlimited' if not s.rate else f'{s.rate:g}/s'} · parallel {s.parallel} · sent last minute {o.sent_last_minute}")
    click.echo(f"starvation share {store_queue.describe_starvation_share(s.starvation_share)}")
    for lane in o.lanes:
        wait = lane.oldest_wait(now)
        click.echo(f"  priority {lane.priority}: queued {lane.queued}, deferred {lane.deferred}, sending {lane.sending}, "
                   f"held {lane.held}, oldest waiting {_wait(wait) if wait is not None else '-'}")


@queue.command("destinations")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True, help="At most this many rows.")
@common.json_option
@common.db_option
def destinations(limit: int, as_json: bool, db_path: Path | None) -> None:
    """Mail per destination (recipient domain): recipients queued, deliveries in flight,
    the last reply and, after failures, until when it backs off. Busiest first."""
    import time

    from relay.store.routing import destination_rows

    now = time.time()
    with common.open_db(db_path, create=False) as db:
        rows = destination_rows(db, limit=limit)
    if as_json:
        common.print_json([
            {"destination": r.domain, "queued": r.queued, "in_flight": r.in_flight, "last_reply": r.last_reply,
             "last_at": r.last_at, "backoff_until": r.backoff_until if r.backing_off(now) else None, "route": r.route}
            for r in rows
        ])
        return
    if not rows:
        click.echo("No destinations: nothing queued, nothing delivered in MX mode yet.")
        return
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD)
    for column in ("destination", "queued", "in flight", "backing off", "route", "last reply"):
        table.add_column(column, no_wrap=column != "last reply")
    for r in rows:
        backoff = f"{_wait(r.backoff_until - now)} more" if r.backing_off(now) and r.backoff_until else "-"
        table.add_row(
            _escape(r.domain or "-"), str(r.queued), str(r.in_flight), backoff,
            _escape(r.route or "MX"), _escape((r.last_reply or "")[:60]),
        )
    common.stdout_console().print(table)
