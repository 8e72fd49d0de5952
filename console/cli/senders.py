"""``smtpplus senders``: sender identities and their verification — codes mailed to
addresses, DNS TXT records on domains, and operators' approvals with a reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from console.cli import common
from console.cli.common import CliError

senders = common.LazyGroup(
    name="senders",
    commands_spec={},
    help="Sender identities (addresses and domains) and their verification.\n\n"
    "A new identity is pending until a code mailed to it is confirmed, its domain publishes "
    "the TXT record shown here, or an operator approves it with a reason.",
)


def _duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h``, ``2d`` → seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise CliError(f"--ttl {text!r}: give a positive duration such as 90s, 30m, 24h or 2d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _how_to_verify(view: Any) -> str:
    """What the operator does next (pending) or still needs to know (verified)."""
    if view.identity.kind == "domain":
        return f"TXT {view.txt_record}"
    if view.code is None:
        return "no code sent" if not view.identity.verified else ""
    status = view.code.status()
    if status == "open":
        return f"code sent, {view.code.attempts_left} tries left, until {common.fmt_time(view.code.expires_at)}"
    return f"code {status}"


@senders.command("ls")
@click.option("--state", type=click.Choice(["pending", "verified"]), default=None, help="Only identities in this state.")
@common.json_option
@common.db_option
def ls(state: str | None, as_json: bool, db_path: Path | None) -> None:
    """List sender identities: state, how and when verified, users, what to do next."""
    from relay.store.verification import sender_views

    with common.open_db(db_path, create=False) as db:
        views = sender_views(db, state=state)
    if as_json:
        common.print_json([v.as_dict() for v in views])
        return
    if not views:
        click.echo("no sender identities" + (f" in state {state}" if state else "") + " — add domains or senders to a user")
        return
    from rich.markup import escape
    from rich.table import Table

    from relay.display import clean

    table = Table(box=None, pad_edge=False)
    for column in ("IDENTITY", "KIND", "STATE", "METHOD", "VERIFIED AT", "REASON", "USERS", "TXT RECORD / CODE"):
        table.add_column(column, overflow="fold")
    for v in views:
        i = v.identity
        table.add_row(
            i.value,
            i.kind,
            i.state,
            i.method or "-",
            common.fmt_time(i.verified_at),
            escape(clean(i.reason or "-")),
            escape(clean(", ".join(v.users) or "-")),
            _how_to_verify(v) or "-",
        )
    common.stdout_console().print(table)


@senders.command("show")
@click.argument("identity")
@common.json_option
@common.db_option
def show(identity: str, as_json: bool, db_path: Path | None) -> None:
    """Show one identity: state, method, reason, users, and the TXT record or code."""
    from relay.store.verification import sender_view
    from relay.verification import txt_instructions

    with common.open_db(db_path, create=False) as db:
        view = sender_view(db, identity)
    if as_json:
        common.print_json(view.as_dict())
        return
    from relay.display import clean

    i = view.identity
    lines = [
        ("identity", i.value),
        ("kind", i.kind),
        ("state", i.state),
        ("method", i.method or "-"),
        ("verified at", common.fmt_time(i.verified_at)),
        ("reason", i.reason or "-"),
        ("users", ", ".join(view.users) or "-"),
    ]
    if i.kind == "domain":
        lines.append(("TXT record", view.txt_record or ""))
        lines.append(("publish", txt_instructions(i.value, i.dns_token)))
        if not i.verified:
            lines.append(("then run", f"smtpplus senders check-dns {i.value}"))
    elif view.code is not None:
        lines.append(("code", f"{view.code.status()}, sent {common.fmt_time(view.code.sent_at)}, "
                      f"valid until {common.fmt_time(view.code.expires_at)}, {view.code.attempts_left} tries left"))
    elif not i.verified:
        lines.append(("code", f"none sent — run `smtpplus senders send-code {i.value}`"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {clean(value)}")


@senders.command("approve")
@click.argument("identities", nargs=-1, required=True)
@click.option("--reason", required=True, help='Why they may send, recorded and shown (e.g. "existing account").')
@common.json_option
@common.db_option
def approve(identities: tuple[str, ...], reason: str, as_json: bool, db_path: Path | None) -> None:
    """Approve identities by hand, with a reason. Every name is checked before any
    changes; approving one already verified changes nothing and succeeds."""
    from relay.admin.verification import approve as approve_identities

    with common.open_db(db_path) as db:
        results = approve_identities(db, identities, reason)
    if as_json:
        common.print_json(
            [
                {"identity": i.value, "changed": changed, "state": i.state, "method": i.method, "reason": i.reason}
                for i, changed in results
            ]
        )
        return
    for identity, changed in results:
        if changed:
            click.echo(f"approved {identity.value} ({identity.reason})")
        else:
            click.echo(
                f"{identity.value} was already verified ({identity.method}, {common.fmt_time(identity.verified_at)}) — unchanged"
            )


@senders.command("send-code")
@click.argument("address")
@click.option("--ttl", "ttl_text", default="24h", show_default=True, help="How long the code stays valid (90s, 30m, 24h, 2d).")
@click.option("--from", "sender", default=None, help="Sender of the code mail (default: the system sender — see `senders settings`).")
@common.json_option
@common.db_option
def send_code(address: str, ttl_text: str, sender: str | None, as_json: bool, db_path: Path | None) -> None:
    """Mail a single-use code to ADDRESS through the relay's queue (system mail,
    priority 2). A new code replaces any earlier one. The code is not shown here:
    the address's owner reads it in the mail and gives it to you."""
    from relay.admin.verification import send_code as queue_code

    ttl = _duration(ttl_text)
    with common.open_db(db_path) as db:
        sent = queue_code(db, address, ttl=ttl, sender=sender)
    if as_json:
        common.print_json(
            {
                "identity": sent.identity.value,
                "queue_id": sent.queue_id,
                "sender": sent.sender,
                "expires_at": sent.expires_at,
            }
        )
        return
    click.echo(
        f"code for {sent.identity.value} queued as {sent.queue_id} (from {sent.sender}, priority 2), "
        f"valid until {common.fmt_time(sent.expires_at)}"
    )
    click.echo(f"next: smtpplus senders confirm {sent.identity.value} CODE")


@senders.command("confirm")
@click.argument("address")
@click.argument("code")
@common.json_option
@common.db_option
def confirm(address: str, code: str, as_json: bool, db_path: Path | None) -> None:
    """Verify ADDRESS with the CODE mailed to it. After 5 wrong codes a new one is needed."""
    from relay.admin.verification import confirm_code

    with common.open_db(db_path) as db:
        check = confirm_code(db, address, code)
    if as_json:
        common.print_json(
            {
                "identity": check.identity.value,
                "outcome": str(check.outcome),
                "ok": check.ok,
                "attempts_left": check.attempts_left,
                "message": check.message,
            }
        )
        if not check.ok:
            raise click.exceptions.Exit(1)
        return
    if not check.ok:
        raise CliError(check.message)
    click.echo(check.message)


@senders.command("check-dns")
@click.argument("domain")
@click.option("--resolver", default=None, metavar="HOST[:PORT]",
              help="DNS server to ask (default: the store setting, else $SMTPPLUS_DNS_RESOLVER, else the system's).")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=60), default=5.0, show_default=True, help="Seconds to wait.")
@click.option("--tcp", is_flag=True, help="Query over TCP instead of UDP.")
@common.json_option
@common.db_option
def check_dns(domain: str, resolver: str | None, timeout: float, tcp: bool, as_json: bool, db_path: Path | None) -> None:
    """Look up DOMAIN's TXT record; verify the domain when it carries its token."""
    from relay.admin.verification import check_dns as check

    with common.open_db(db_path) as db:
        checked = check(db, domain, resolver=resolver, timeout=timeout, tcp=tcp)
    result, identity, after, elapsed = checked.result, checked.before, checked.after, checked.seconds
    if as_json:
        common.print_json(
            {
                "identity": after.value,
                "outcome": str(result.outcome),
                "message": result.message,
                "resolver": result.resolver,
                "transport": result.transport,
                "expected": result.expected,
                "found": list(result.found),
                "state": after.state,
                "method": after.method,
                "seconds": round(elapsed, 3),
            }
        )
        if not result.verified:
            raise click.exceptions.Exit(1)
        return
    if not result.verified:
        if after.verified:
            raise CliError(f"{result.message} (the domain stays verified: {after.method}, {common.fmt_time(after.verified_at)})")
        raise CliError(result.message)
    if identity.verified:
        click.echo(f"{result.message}; {after.value} was already verified ({after.method}) — unchanged")
    else:
        click.echo(f"{result.message}; {after.value} is verified (dns)")


@senders.command("settings")
@click.option("--system-sender", default=None, metavar="ADDRESS", help="Sender of verification mail ('' to unset).")
@click.option("--resolver", default=None, metavar="HOST[:PORT]", help="DNS resolver for check-dns, domains check and MX routing ('' to unset).")
@common.json_option
@common.db_option
def settings(system_sender: str | None, resolver: str | None, as_json: bool, db_path: Path | None) -> None:
    """Show or set the verification settings: system sender and DNS resolver
    (the resolver is also the one MX routing and `domains check` use)."""
    from relay import policy
    from relay.dnscheck import ResolverError, parse_resolver
    from relay.store import transaction
    from relay.store.settings import Keys, delete_setting, get_setting, set_setting
    from relay.store.verification import system_sender_choice

    updates: dict[str, str | None] = {}
    if system_sender is not None:
        updates[Keys.SYSTEM_SENDER] = policy.normalize_address(system_sender) if system_sender.strip() else None
    if resolver is not None:
        try:
            updates[Keys.DNS_RESOLVER] = str(parse_resolver(resolver)) if resolver.strip() else None
        except ResolverError as exc:
            raise CliError(str(exc)) from None
    with common.open_db(db_path, create=bool(updates)) as db:
        if updates:
            with transaction(db):
                for key, value in updates.items():
                    if value is None:
                        delete_setting(db, key)
                    else:
                        set_setting(db, key, value)
        choice = system_sender_choice(db)
        current = {
            "system_sender": get_setting(db, Keys.SYSTEM_SENDER),
            "effective_system_sender": choice.address,
            "system_sender_source": choice.source or None,
            "system_sender_note": choice.explanation,
            "dns_resolver": get_setting(db, Keys.DNS_RESOLVER),
        }
    if as_json:
        common.print_json(current)
        return
    # What send-code will really use, from the same function send-code calls.
    if choice.address is None:
        click.echo(f"system sender  - ({choice.explanation})")
    elif choice.source == "setting":
        click.echo(f"system sender  {choice.address}")
    else:
        click.echo(f"system sender  {choice.address} (default: {choice.explanation}; change with --system-sender)")
    click.echo(f"dns resolver   {current['dns_resolver'] or '- ($SMTPPLUS_DNS_RESOLVER, else the system resolver)'}")
