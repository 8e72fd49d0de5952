"""``smtpplus domains``: what a sender domain has in place for mail from this relay —
verification, DKIM, SPF, DMARC — as a report, never enforcement."""

from __future__ import annotations

from pathlib import Path

import click

from console.cli import common

domains = common.LazyGroup(
    name="domains",
    commands_spec={},
    help="Sender domains: is each one ready to send through this relay?\n\n"
    "`domains check DOMAIN` reports its verification state and the DNS records receivers "
    "look at; it changes nothing.",
)

_MARK = {True: "ok", False: "FIX", None: "?"}


@domains.command("check")
@click.argument("domain")
@click.option("--resolver", default=None, metavar="HOST[:PORT]",
              help="DNS server to ask (default: the store setting dns.resolver, else $SMTPPLUS_DNS_RESOLVER, else the system's).")
@click.option("--public-address", default=None, metavar="IP[,IP]",
              help="The relay's public address(es) SPF must authorize (default: the store setting delivery.public_address).")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=60), default=5.0, show_default=True, help="Seconds per DNS lookup.")
@common.json_option
@common.db_option
def check(domain: str, resolver: str | None, public_address: str | None, timeout: float, as_json: bool, db_path: Path | None) -> None:
    """Report DOMAIN's verification, DKIM, SPF and DMARC state. Exit 0 whatever it finds."""
    from relay.dnscheck import choose_resolver
    from relay.domains import check_domain, parse_public_addresses
    from relay.store.settings import Keys, get_setting

    with common.open_db(db_path, create=False) as db:
        server = choose_resolver(resolver, get_setting(db, Keys.DNS_RESOLVER))
        addresses = parse_public_addresses(public_address or get_setting(db, Keys.PUBLIC_ADDRESS) or "")
        report = check_domain(db, domain, resolver=server, public_addresses=addresses, timeout=timeout)
    if as_json:
        common.print_json(report.as_dict())
        return
    click.echo(f"{report.domain} (resolver {report.resolver})")
    for finding in report.findings:
        click.echo(f"  {finding.check:<13} {_MARK[finding.ok]:<4} {finding.status:<10} {finding.message}")
        for record in finding.records:
            click.echo(f"  {'':<13} {'':<4} {'':<10} {record}")


@domains.command("settings")
@click.option("--public-address", default=None, metavar="IP[,IP]",
              help="The relay's public address(es), as receivers see them ('' to unset).")
@click.option("--resolver", default=None, metavar="HOST[:PORT]",
              help="DNS resolver for MX routing, domains check, dkim check and check-dns "
                   "(the store setting dns.resolver, as `senders settings --resolver`; '' to unset).")
@common.json_option
@common.db_option
def settings(public_address: str | None, resolver: str | None, as_json: bool, db_path: Path | None) -> None:
    """Show or set the relay's public address(es) that `domains check` looks for in SPF,
    and the DNS resolver every lookup uses (MX routing included)."""
    from relay.dnscheck import ResolverError, parse_resolver
    from relay.domains import parse_public_addresses
    from relay.store import transaction
    from relay.store.settings import Keys, delete_setting, get_setting, set_setting

    updates: dict[str, str | None] = {}
    if public_address is not None:
        updates[Keys.PUBLIC_ADDRESS] = ",".join(parse_public_addresses(public_address)) or None
    if resolver is not None:
        try:
            updates[Keys.DNS_RESOLVER] = str(parse_resolver(resolver)) if resolver.strip() else None
        except ResolverError as exc:
            raise common.CliError(str(exc)) from None
    with common.open_db(db_path, create=bool(updates)) as db:
        if updates:
            with transaction(db):
                for key, value in updates.items():
                    if value is None:
                        delete_setting(db, key)
                    else:
                        set_setting(db, key, value)
        current = get_setting(db, Keys.PUBLIC_ADDRESS)
        current_resolver = get_setting(db, Keys.DNS_RESOLVER)
    if as_json:
        common.print_json({"public_address": current, "dns_resolver": current_resolver})
        return
    click.echo(f"public address  {current or '- (set with --public-address IP[,IP])'}")
    click.echo(f"dns resolver    {current_resolver or '- ($SMTPPLUS_DNS_RESOLVER, else the system resolver)'}")
