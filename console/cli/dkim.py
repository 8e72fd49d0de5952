"""``smtpplus dkim``: DKIM signing keys — add one and publish its record, check DNS,
rotate (stage a key, activate it once published), remove. The operations are :mod:`relay.admin.dkim`; private keys stay in the
store and no command here prints one."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import click

from console.cli import common
from relay.dkim import ALGORITHMS, DEFAULT_ALGORITHM, RETIRED_KEEP_DAYS

if TYPE_CHECKING:
    from relay.admin.dkim import DnsRecord

dkim = common.LazyGroup(
    name="dkim",
    commands_spec={},
    help="DKIM signing keys, one active key per sender domain.\n\n"
    "The relay signs every message whose From: domain has an active key (relaxed/relaxed, "
    "at delivery). Private keys live in the store — every relay on it signs alike, and the "
    "store file is a secret (mode 0600). `dkim rotate` stages a new key: publish its record, then "
    "`dkim activate` checks DNS and switches; the old key then signs nothing but stays "
    f"listed for {RETIRED_KEEP_DAYS} days: keep its DNS record published until `dkim ls` says removable.",
)

_SELECTOR_HELP = "Selector (a DNS label; default: s + the year and month, e.g. s202611)."
_RESOLVER_HELP = "DNS server to ask (default: the store setting, else $SMTPPLUS_DNS_RESOLVER, else the system's)."


def _publish_lines(record: DnsRecord) -> list[str]:
    return [
        "publish this TXT record (a DNS provider splits the text into 255-character strings as needed):",
        f'  {record.name}. IN TXT "{record.value}"',
    ]


def _warn_if_readable(db_path: Path | None) -> None:
    """The store now holds a private key: say so when others can read the file."""
    path = common.resolve_db_path(db_path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        click.echo(
            f"warning: store {path} is readable by others (mode {stat.S_IMODE(mode):04o}) and now holds a "
            f"private key — chmod 600 {path}",
            err=True,
        )


@dkim.command("add")
@click.argument("domain")
@click.option("--selector", default=None, help=_SELECTOR_HELP)
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default=DEFAULT_ALGORITHM, show_default=True,
              help="Key type (ed25519: RFC 8463; not every receiver verifies it yet).")
@common.json_option
@common.db_option
def add(domain: str, selector: str | None, algorithm: str, as_json: bool, db_path: Path | None) -> None:
    """Generate a key for DOMAIN and print the DNS record to publish.

    The relay signs DOMAIN's mail with it from now on (within 10 s); publish the record
    at once — receivers fail the signature until DNS has it. --json gives exactly
    {"domain", "selector", "name", "value"}.
    """
    from relay.admin.dkim import add as add_key

    with common.open_db(db_path) as db:
        record = add_key(db, domain, selector=selector, algorithm=algorithm)
    _warn_if_readable(db_path)
    if as_json:
        common.print_json(record.as_dict())
        return
    click.echo(f"DKIM key {record.selector} ({algorithm}) added for {record.domain}; it signs from now on")
    for line in _publish_lines(record):
        click.echo(line)
    click.echo(f"then check: smtpplus dkim check {record.domain}")


@dkim.command("ls")
@click.argument("domain", required=False)
@common.json_option
@common.db_option
def ls(domain: str | None, as_json: bool, db_path: Path | None) -> None:
    """List keys: domain, selector, algorithm, state (active; pending: publish its record,
    then `dkim activate`; retired: keep it published until the date shown; removable:
    delete its record, then `dkim rm`)."""
    from relay.admin.dkim import keys

    with common.open_db(db_path, create=False) as db:
        views = keys(db, domain)
    if as_json:
        common.print_json([v.as_dict() for v in views])
        return
    if not views:
        click.echo("no DKIM keys" + (f" for {domain}" if domain else "") + " — add one with `smtpplus dkim add DOMAIN`")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("DOMAIN", "SELECTOR", "ALGORITHM", "STATE", "CREATED", "KEEP PUBLISHED UNTIL", "RECORD NAME"):
        table.add_column(column, overflow="fold")
    for v in views:
        until = "-" if v.keep_until is None else common.fmt_time(v.keep_until)
        state = "removable (delete the record, then dkim rm)" if v.state == "removable" else v.state
        table.add_row(v.domain, v.selector, v.algorithm, state, common.fmt_time(v.created_at), until, v.record.name)
    common.stdout_console().print(table)


@dkim.command("check")
@click.argument("domain")
@click.option("--resolver", default=None, metavar="HOST[:PORT]", help=_RESOLVER_HELP)
@click.option("--timeout", type=click.FloatRange(min=0.1, max=60), default=5.0, show_default=True, help="Seconds to wait.")
@common.json_option
@common.db_option
def check(domain: str, resolver: str | None, timeout: float, as_json: bool, db_path: Path | None) -> None:
    """Is each key of DOMAIN (active, pending and retired) published in DNS, with this key?
    Exits 1 when one is not."""
    from relay.admin.dkim import check as check_keys

    with common.open_db(db_path, create=False) as db:
        checks = check_keys(db, domain, resolver=resolver, timeout=timeout)
    if as_json:
        common.print_json([c.as_dict() for c in checks])
    else:
        for c in checks:
            click.echo(f"{c.key.selector} ({c.key.state}): {c.outcome} — {c.message}")
    if not all(c.ok for c in checks):
        raise click.exceptions.Exit(1)


@dkim.command("rotate")
@click.argument("domain")
@click.option("--selector", default=None, help=_SELECTOR_HELP)
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default=None,
              help="Key type of the new key (default: the current key's).")
@click.option("--now", "at_once", is_flag=True,
              help="Sign with the new key at once, before its record can be published (a leaked key): "
              "receivers fail its signatures until they find the record.")
@common.json_option
@common.db_option
def rotate(domain: str, selector: str | None, algorithm: str | None, at_once: bool, as_json: bool, db_path: Path | None) -> None:
    """A new key for DOMAIN, pending: the current key signs on. Publish the new
    record, then `smtpplus dkim activate DOMAIN` (it checks DNS first) — the old key
    then signs nothing and stays listed (keep its record published) for the days
    `dkim ls` shows."""
    from relay.admin.dkim import rotate as rotate_key

    with common.open_db(db_path) as db:
        rotation = rotate_key(db, domain, selector=selector, algorithm=algorithm, at_once=at_once)
    _warn_if_readable(db_path)
    new, old = rotation.new, rotation.retired
    if as_json:
        common.print_json({
            **new.as_dict(), "state": rotation.state, "signing": rotation.signing.as_dict(),
            "retired": None if old is None else old.as_dict(),
        })
        return
    if old is None:
        click.echo(f"DKIM key {new.selector} is staged for {new.domain}; {rotation.signing.selector} signs until it is activated")
        for line in _publish_lines(new):
            click.echo(line)
        click.echo(f"then: smtpplus dkim activate {new.domain}   (it checks that DNS publishes the record first)")
        return
    click.echo(f"DKIM key {new.selector} now signs for {new.domain}; {old.selector} is retired")
    for line in _publish_lines(new):
        click.echo(line)
    click.echo(f"keep {old.record.name} published until {common.fmt_time(old.keep_until)}, then remove it")


@dkim.command("activate")
@click.argument("domain")
@click.option("--selector", default=None, help="The pending key (default: the one `dkim rotate` staged).")
@click.option("--force", is_flag=True, help="Activate without looking for its record in DNS.")
@click.option("--resolver", default=None, metavar="HOST[:PORT]", help=_RESOLVER_HELP)
@click.option("--timeout", type=click.FloatRange(min=0.1, max=60), default=5.0, show_default=True, help="Seconds to wait.")
@common.json_option
@common.db_option
def activate(domain: str, selector: str | None, force: bool, resolver: str | None, timeout: float, as_json: bool,
             db_path: Path | None) -> None:
    """Switch DOMAIN to the key `dkim rotate` staged, once DNS publishes its record.

    Exits 1 with what to publish when DNS does not have it yet; the old key is then
    retired (it signs nothing, keep its record published until `dkim ls` says
    removable)."""
    from relay.admin.dkim import activate as activate_key

    with common.open_db(db_path, create=False) as db:
        done = activate_key(db, domain, selector=selector, force=force, resolver=resolver, timeout=timeout)
    new, old = done.active, done.retired
    if as_json:
        common.print_json({**new.as_dict(), "retired": None if old is None else old.as_dict(),
                           "checked": None if done.check is None else done.check.as_dict()})
        return
    how = "unchecked (--force)" if done.check is None else f"its record is published ({done.check.resolver})"
    click.echo(f"DKIM key {new.selector} now signs for {new.domain}: {how}")
    if old is not None:
        click.echo(f"{old.selector} is retired: keep {old.record.name} published until "
                   f"{common.fmt_time(old.keep_until)}, then remove it")


@dkim.command("rm")
@click.argument("domain")
@click.argument("selector")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@common.json_option
@common.db_option
def rm(domain: str, selector: str, yes: bool, as_json: bool, db_path: Path | None) -> None:
    """Delete a key. Removing the active key stops signing DOMAIN's mail."""
    from relay.admin.dkim import keys, remove

    with common.open_db(db_path, create=False) as db:
        current = {(v.domain, v.selector): v for v in keys(db, domain)}
        shown = current.get((domain.strip().lower().rstrip("."), selector.strip().lower()))
        what = f"delete the {shown.state} DKIM key {selector} of {domain}" if shown else f"delete DKIM key {selector} of {domain}"
        if shown is not None and shown.state == "active":
            what += " (its mail goes unsigned)"
        common.confirm_or_require_yes(what, yes)
        removed = remove(db, domain, selector)
    if as_json:
        common.print_json(removed.as_dict())
        return
    click.echo(f"removed DKIM key {removed.selector} of {removed.domain} ({removed.state})")
    if removed.state == "active":
        click.echo(f"{removed.domain} is no longer signed — add a key with `smtpplus dkim add {removed.domain}`")

