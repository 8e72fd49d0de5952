"""The ``smtpplus`` command. Subcommands load lazily, so ``smtpplus --help`` and the
store commands never import Textual (only ``console`` and ``demo`` do)."""

from __future__ import annotations

import click

from console.cli.common import LazyGroup

# name -> ("module:attribute", one-line help). Each module owns its commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("console.cli.console_cmd:demo", "Open the demo: console, relay, capture sink and sample traffic."),
    "console": ("console.cli.console_cmd:console", "Open the operator console (runs the relay in-process)."),
    "relay": ("console.cli.relay_cmd:relay", "Run the relay as a headless daemon."),
    "status": ("console.cli.relay_cmd:status", "Is a relay alive on this store? Ports, TLS, queue controls."),
    "lists": ("console.cli.lists:lists", "Lists: client settings, members, statistics."),
    "users": ("console.cli.users:users", "Relay users: add, edit, activate, reset passwords."),
    "senders": ("console.cli.senders:senders", "Sender identities and their verification."),
    "campaigns": ("console.cli.campaigns:campaigns", "Campaigns sent to every member of a list."),
    "dkim": ("console.cli.dkim:dkim", "DKIM signing keys: add, publish, check, rotate and activate, remove."),
    "queue": ("console.cli.queue:queue", "The sending queue: inspect, hold, retry; pause, rate, next hop."),
    "unsubscribe": ("console.cli.bulk:unsubscribe", "Unsubscribe a list member with the token of a List-Unsubscribe header."),
    "suppressions": ("console.cli.bulk:suppressions", "The suppression list: addresses campaigns never send to."),
    "routes": ("console.cli.routes:routes", "Routes: recipient domains sent to a fixed HOST:PORT (MX delivery)."),
    "tls": ("console.cli.relay_cmd:tls", "The relay's TLS certificate."),
    "store": ("console.cli.store_cmd:store", "The store: backup, integrity check, recount, copy between SQLite and PostgreSQL."),
    "send": ("console.cli.send:send", "Send one message, swaks-style, and show the dialogue."),
    "sink": ("console.cli.sink:sink", "Run a capture sink that accepts and records every message."),
    "harness": ("console.cli.harness_cmd:harness", "Scenario runs and benchmarks against a relay."),
    "domains": ("console.cli.domains:domains", "Sender domains: verification, SPF, DMARC — ready to send?"),
}


main = LazyGroup(
    name="smtpplus",
    commands_spec=COMMANDS,
    help="smtpplus — a self-hosted authenticated SMTP relay (SMTP+), its console and test harness.\n\n"
    "Every command takes --db PATH (else $SMTPPLUS_DB, else the user's data directory).",
)

# `smtpplus --version`: the installed package's version (one line, exit 0).
click.version_option(package_name="smtpplus", prog_name="smtpplus", message="%(prog)s %(version)s")(main)
