"""``smtpplus senders …`` as real subprocesses against a real store (and a loopback DNS server)."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import pytest

from relay.verification import CODE_DIGITS, txt_record

ADDRESS = "alice@example.com"


def _one_line_error(proc: Any) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smtpplus: error: "), proc.stderr
    return lines[0]


def _mailed_code(db: sqlite3.Connection, queue_id: str) -> str:
    body = db.execute(
        "SELECT b.data FROM message_bodies b JOIN messages m ON m.id = b.message_id WHERE m.queue_id = ?",
        (queue_id,),
    ).fetchone()[0]
    match = re.search(rb"^    (\d{4}) (\d{4})\r$", body, re.MULTILINE)
    assert match, body
    return (match.group(1) + match.group(2)).decode()


def test_every_senders_command_has_help(cli: Any) -> None:
    for command in ("ls", "show", "approve", "send-code", "confirm", "check-dns", "settings"):
        proc = cli("senders", command, "--help", check=True)
        assert "Usage:" in proc.stdout and "--db" in proc.stdout


def test_ls_and_show_give_state_users_and_the_txt_record(cli: Any, people: dict[str, Any]) -> None:
    listing = {row["identity"]: row for row in cli.json("senders", "ls")}
    assert set(listing) == {ADDRESS, "example.org"}
    domain = listing["example.org"]
    assert (domain["kind"], domain["state"], domain["method"], domain["verified_at"]) == ("domain", "pending", None, None)
    assert domain["users"] == ["alice", "bob"]
    assert re.fullmatch(r"smtpplus-verification=[0-9a-f]{32}", domain["txt_record"])
    assert listing[ADDRESS]["txt_record"] is None and listing[ADDRESS]["code"] is None

    table = cli("senders", "ls", check=True).stdout
    assert "IDENTITY" in table and f"TXT {domain['txt_record']}" in table and "no code sent" in table

    shown = cli("senders", "show", "Example.ORG", check=True).stdout
    assert f'example.org. IN TXT "{domain["txt_record"]}"' in shown
    assert "smtpplus senders check-dns example.org" in shown
    assert cli.json("senders", "show", "example.org") == domain

    missing = _one_line_error(cli("senders", "show", "nobody@example.com"))
    assert "no sender identity 'nobody@example.com'" in missing


def test_bulk_approval_of_existing_accounts(cli: Any, people: dict[str, Any]) -> None:
    refused = _one_line_error(cli("senders", "approve", ADDRESS, "unknown.example", "--reason", "existing account"))
    assert "unknown.example" in refused
    assert cli.json("senders", "ls", "--state", "verified") == []  # nothing changed

    no_reason = cli("senders", "approve", ADDRESS)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr

    done = cli("senders", "approve", ADDRESS, "example.org", "--reason", "existing account", check=True)
    assert done.stdout.splitlines() == [f"approved {ADDRESS} (existing account)", "approved example.org (existing account)"]
    again = cli("senders", "approve", ADDRESS, "--reason", "again", check=True)
    assert "already verified (manual" in again.stdout and "unchanged" in again.stdout

    verified = cli.json("senders", "ls", "--state", "verified")
    assert [(r["identity"], r["method"], r["reason"]) for r in verified] == [
        (ADDRESS, "manual", "existing account"),
        ("example.org", "manual", "existing account"),
    ]
    assert all(r["verified_at"] for r in verified)
    assert "existing account" in cli("senders", "ls", check=True).stdout


def test_code_flow_send_confirm_and_clear_errors(cli: Any, people: dict[str, Any], db: sqlite3.Connection) -> None:
    unset = _one_line_error(cli("senders", "send-code", ADDRESS))
    assert "senders settings --system-sender" in unset
    cli("senders", "settings", "--system-sender", "Verify@Relay.example.net", check=True)
    assert cli.json("senders", "settings")["system_sender"] == "verify@relay.example.net"

    unknown = _one_line_error(cli("senders", "confirm", ADDRESS, "12345678"))
    assert "no code was sent" in unknown

    sent = cli("senders", "send-code", ADDRESS, check=True)
    queue_id = re.search(r"queued as (\w+)", sent.stdout).group(1)  # type: ignore[union-attr]
    code = _mailed_code(db, queue_id)
    assert len(code) == CODE_DIGITS and code not in sent.stdout + sent.stderr  # the operator never sees it

    wrong = f"{(int(code) + 1) % 10**CODE_DIGITS:0{CODE_DIGITS}d}"
    assert "4 tries left" in _one_line_error(cli("senders", "confirm", ADDRESS, wrong))
    assert "is a domain" in _one_line_error(cli("senders", "confirm", "example.org", code))

    ok = cli("senders", "confirm", ADDRESS, f"{code[:4]} {code[4:]}", check=True)
    assert ok.stdout.startswith(f"{ADDRESS} is verified (code)")
    assert "already used" in _one_line_error(cli("senders", "confirm", ADDRESS, code))
    row = cli.json("senders", "show", ADDRESS)
    assert (row["state"], row["method"], row["code"]["status"]) == ("verified", "code", "used")
    assert "already verified" in _one_line_error(cli("senders", "send-code", ADDRESS))


def test_system_sender_default_follows_the_server_name_and_says_why_not(
    cli: Any, people: dict[str, Any], db: sqlite3.Connection
) -> None:
    from relay.store.settings import Keys, set_setting

    # A single-label server name (a host called `vm`) makes no valid address: send-code
    # and settings both say so, and how to fix it.
    set_setting(db, Keys.SERVER_NAME, "smtpplus-test-host")
    refused = _one_line_error(cli("senders", "send-code", ADDRESS))
    assert "'smtpplus-test-host' has no dot" in refused and "senders settings --system-sender ADDRESS" in refused
    shown = cli("senders", "settings", check=True).stdout
    assert "'smtpplus-test-host' has no dot" in shown and "--system-sender" in shown
    settings = cli.json("senders", "settings")
    assert settings["system_sender"] is None and settings["effective_system_sender"] is None

    # A dotted server name gives the default smtpplus@<server name>, and send-code uses exactly that.
    set_setting(db, Keys.SERVER_NAME, "Relay.Example.NET")
    settings = cli.json("senders", "settings")
    assert (settings["effective_system_sender"], settings["system_sender_source"]) == ("smtpplus@relay.example.net", "server name")
    assert "smtpplus@relay.example.net (default" in cli("senders", "settings", check=True).stdout
    assert cli.json("senders", "send-code", ADDRESS)["sender"] == "smtpplus@relay.example.net"

    # An operator's setting wins.
    cli("senders", "settings", "--system-sender", "verify@relay.example.net", check=True)
    settings = cli.json("senders", "settings")
    assert (settings["effective_system_sender"], settings["system_sender_source"]) == ("verify@relay.example.net", "setting")


def test_default_sender_falls_back_to_the_dotted_host_name() -> None:
    from relay.store.verification import default_sender_for

    assert default_sender_for("vm", "vm.lan.example") == "smtpplus@vm.lan.example"
    assert default_sender_for("vm", None) is None
    assert default_sender_for("vm", "localhost") is None
    assert default_sender_for("relay.example", "vm.lan.example") == "smtpplus@relay.example"


def test_expired_code_via_cli(cli: Any, people: dict[str, Any], db: sqlite3.Connection) -> None:
    cli("senders", "settings", "--system-sender", "verify@relay.example.net", check=True)
    bad_ttl = _one_line_error(cli("senders", "send-code", ADDRESS, "--ttl", "soon"))
    assert "90s, 30m, 24h or 2d" in bad_ttl
    sent = cli.json("senders", "send-code", ADDRESS, "--ttl", "30m")
    # Age the code by moving its expiry into the past (as if 30 minutes had gone by).
    db.execute("UPDATE verification_codes SET expires_at = expires_at - 3600")
    expired = _one_line_error(cli("senders", "confirm", ADDRESS, _mailed_code(db, sent["queue_id"])))
    assert "expired" in expired and f"send-code {ADDRESS}" in expired


def test_check_dns_outcomes_and_resolver_sources(cli: Any, people: dict[str, Any], table_dns: Any) -> None:
    token_record = cli.json("senders", "show", "example.org")["txt_record"]

    table_dns.set("example.org", "txt", txt_record("stale"))
    wrong = _one_line_error(cli("senders", "check-dns", "example.org", "--resolver", table_dns.address))
    assert "wrong token" in wrong and token_record in wrong

    # The resolver from the environment, then from the store setting (which wins over it).
    cli.env["SMTPPLUS_DNS_RESOLVER"] = table_dns.address
    table_dns.set("example.org", "txt")  # no records left: NXDOMAIN
    assert "NXDOMAIN" in _one_line_error(cli("senders", "check-dns", "example.org"))
    cli.env["SMTPPLUS_DNS_RESOLVER"] = "127.0.0.1:1"  # would fail if used
    cli("senders", "settings", "--resolver", table_dns.address, check=True)

    table_dns.behave("example.org", "silent")
    timeout = _one_line_error(cli("senders", "check-dns", "example.org", "--timeout", "0.5"))
    assert "did not answer within 0.5 s" in timeout

    table_dns.behave("example.org", None)
    table_dns.set("example.org", "txt", "v=spf1 -all")
    assert "no smtpplus-verification=" in _one_line_error(cli("senders", "check-dns", "example.org", "--tcp"))
    assert cli.json("senders", "show", "example.org")["state"] == "pending"

    table_dns.set("example.org", "txt", token_record)
    ok = cli("senders", "check-dns", "example.org", check=True)
    assert "is verified (dns)" in ok.stdout
    shown = cli.json("senders", "show", "example.org")
    assert (shown["state"], shown["method"]) == ("verified", "dns") and table_dns.address in shown["reason"]
    assert [q[0] for q in table_dns.queries] == ["example.org"] * 5

    bad = _one_line_error(cli("senders", "check-dns", "example.org", "--resolver", "ns.example.com"))
    assert "HOST must be an IP address" in bad
    assert "is an address" in _one_line_error(cli("senders", "check-dns", ADDRESS))


@pytest.mark.parametrize("state", ["pending", "verified"])
def test_ls_filters_by_state_in_json(cli: Any, people: dict[str, Any], state: str) -> None:
    cli("senders", "approve", "example.org", "--reason", "existing account", check=True)
    rows = cli.json("senders", "ls", "--state", state)
    assert [r["identity"] for r in rows] == (["example.org"] if state == "verified" else [ADDRESS])
