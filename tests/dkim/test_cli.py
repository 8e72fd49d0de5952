"""``smtpplus dkim …`` as real subprocesses against a real store and a loopback DNS server."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

from relay.dkim import RETIRED_KEEP_DAYS


def _one_line_error(proc: Any) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smtpplus: error: "), proc.stderr
    return lines[0]


def _private_keys(store: Path) -> list[str]:
    raw = sqlite3.connect(store)
    try:
        return [row[0] for row in raw.execute("SELECT private_key FROM dkim_keys")]
    finally:
        raw.close()


def _secret_pieces(pem: str) -> list[str]:
    """The base64 lines of a PEM key, each long enough to be its own."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----") and len(line) >= 40]


def test_every_dkim_command_has_help(cli: Any) -> None:
    for command in ("add", "ls", "check", "rotate", "activate", "rm"):
        proc = cli("dkim", command, "--help", check=True)
        assert "Usage:" in proc.stdout and "--db" in proc.stdout
    assert "s + the year and month" in " ".join(cli("dkim", "add", "--help", check=True).stdout.split())
    assert f"for {RETIRED_KEEP_DAYS} days" in " ".join(cli("dkim", "--help", check=True).stdout.split())


def test_add_check_rotate_remove(cli: Any, dkim_dns: Any) -> None:
    outputs: list[str] = []

    def run(*args: str, ok: bool = True) -> Any:
        proc = cli(*args)
        outputs.extend([proc.stdout, proc.stderr])
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc

    import json

    added = json.loads(run("dkim", "add", "Example.ORG", "--json").stdout)
    assert set(added) == {"domain", "selector", "name", "value"}
    selector = time.strftime("s%Y%m", time.gmtime())
    assert added["domain"] == "example.org" and added["selector"] == selector
    assert added["name"] == f"{selector}._domainkey.example.org"
    assert added["value"].startswith("v=DKIM1; k=rsa; p=MIIBIjAN") and '"' not in added["value"]
    assert stat.S_IMODE(os.stat(cli.store).st_mode) == 0o600  # a new store: owner only

    ed = json.loads(run("dkim", "add", "example.net", "--algorithm", "ed25519", "--selector", "mail", "--json").stdout)
    assert ed["name"] == "mail._domainkey.example.net" and ed["value"].startswith("v=DKIM1; k=ed25519; p=")
    human = run("dkim", "add", "example.com", "--algorithm", "ed25519").stdout
    assert "IN TXT \"v=DKIM1; k=ed25519; p=" in human and "smtpplus dkim check example.com" in human

    again = _one_line_error(run("dkim", "add", "example.org", ok=False))
    assert "already signs with key" in again and "smtpplus dkim rotate example.org" in again
    assert "not a DNS label" in _one_line_error(run("dkim", "add", "example.io", "--selector", "a_b", ok=False))
    assert "not a domain" in _one_line_error(run("dkim", "add", "alice@example.io", ok=False))

    # Not published yet, then published, then published with another key.
    missing = run("dkim", "check", "example.org", "--resolver", dkim_dns.address, ok=False)
    assert missing.returncode == 1 and "missing" in missing.stdout and added["value"] in missing.stdout
    dkim_dns.set(added["name"], "TXT", added["value"])
    assert run("dkim", "check", "example.org", "--resolver", dkim_dns.address).stdout.startswith(f"{selector} (active): published")
    checked = json.loads(run("dkim", "check", "example.org", "--resolver", dkim_dns.address, "--json").stdout)
    assert [(c["selector"], c["outcome"], c["published"]) for c in checked] == [(selector, "published", True)]
    dkim_dns.set(ed["name"], "TXT", "v=DKIM1; k=ed25519; p=" + "A" * 43 + "=")
    wrong = run("dkim", "check", "example.net", "--resolver", dkim_dns.address, "--json", ok=False)
    assert wrong.returncode == 1 and json.loads(wrong.stdout)[0]["outcome"] == "mismatch"

    # A rotation stages the new key: the old one signs on until the new record is published.
    rotated = json.loads(run("dkim", "rotate", "example.org", "--algorithm", "ed25519", "--json").stdout)
    assert rotated["selector"] == selector + "b" and rotated["value"].startswith("v=DKIM1; k=ed25519")
    assert rotated["state"] == "pending" and rotated["retired"] is None and rotated["signing"]["selector"] == selector
    listing = json.loads(run("dkim", "ls", "example.org", "--json").stdout)
    assert [(k["selector"], k["state"]) for k in listing] == [(selector, "active"), (selector + "b", "pending")]
    both = json.loads(run("dkim", "check", "example.org", "--resolver", dkim_dns.address, "--json", ok=False).stdout)
    assert [(c["selector"], c["outcome"]) for c in both] == [(selector, "published"), (selector + "b", "missing")]
    unpublished = _one_line_error(run("dkim", "activate", "example.org", "--resolver", dkim_dns.address, ok=False))
    assert "not activated" in unpublished and rotated["name"] in unpublished and "--force" in unpublished
    again = _one_line_error(run("dkim", "rotate", "example.org", ok=False))
    assert f"already has key {selector}b waiting for its record" in again
    dkim_dns.set(rotated["name"], "TXT", rotated["value"])
    done = json.loads(run("dkim", "activate", "example.org", "--resolver", dkim_dns.address, "--json").stdout)
    assert done["selector"] == selector + "b" and done["state"] == "active" and done["checked"]["outcome"] == "published"
    assert done["retired"]["selector"] == selector and done["retired"]["state"] == "retired"
    assert done["retired"]["keep_until"] - done["retired"]["retired_at"] == RETIRED_KEEP_DAYS * 86400
    listing = json.loads(run("dkim", "ls", "example.org", "--json").stdout)
    assert [(k["selector"], k["state"]) for k in listing] == [(selector + "b", "active"), (selector, "retired")]
    # The retired key must stay published: check looks at both.
    both = json.loads(run("dkim", "check", "example.org", "--resolver", dkim_dns.address, "--json").stdout)
    assert [(c["selector"], c["outcome"]) for c in both] == [(selector + "b", "published"), (selector, "published")]
    assert "retired" in run("dkim", "ls").stdout
    assert "no DKIM key of example.org waits" in _one_line_error(run("dkim", "activate", "example.org", ok=False))

    # Past its days a retired key is removable (its retirement moved back in the store).
    raw = sqlite3.connect(cli.store)
    with raw:
        raw.execute("UPDATE dkim_keys SET retired_at = retired_at - ? WHERE active = 0", ((RETIRED_KEEP_DAYS + 1) * 86400,))
    raw.close()
    assert "removable" in run("dkim", "ls").stdout

    refused = run("dkim", "rm", "example.org", selector, ok=False)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    gone = run("dkim", "rm", "example.org", selector, "--yes").stdout
    assert gone.startswith(f"removed DKIM key {selector} of example.org (removable)")
    active_gone = run("dkim", "rm", "example.net", "mail", "--yes").stdout
    assert "example.net is no longer signed" in active_gone
    assert "no DKIM key mail for example.net" in _one_line_error(run("dkim", "rm", "example.net", "mail", "--yes", ok=False))
    assert [k["domain"] for k in json.loads(run("dkim", "ls", "--json").stdout)] == ["example.com", "example.org"]

    # Every decision is an event; no output, event or the relay's event log shows a private key.
    raw = sqlite3.connect(cli.store)
    events = raw.execute("SELECT reason, detail FROM events WHERE reason LIKE 'dkim-%' ORDER BY id").fetchall()
    raw.close()
    assert [e[0] for e in events] == ["dkim-key-added"] * 3 + ["dkim-key-staged", "dkim-key-rotated"] + ["dkim-key-removed"] * 2
    keys = _private_keys(cli.store)
    assert len(keys) == 2 and all("PRIVATE KEY" in k for k in keys)
    everything = "\n".join(outputs + [d for _, d in events])
    assert "PRIVATE KEY" not in everything
    for pem in keys:
        assert not any(piece in everything for piece in _secret_pieces(pem))


def test_rotate_now_switches_at_once_and_activate_force_skips_the_dns_look(cli: Any) -> None:
    import json

    first = json.loads(cli("dkim", "add", "example.org", "--algorithm", "ed25519", "--json", check=True).stdout)
    now = json.loads(cli("dkim", "rotate", "example.org", "--now", "--selector", "two", "--json", check=True).stdout)
    assert now["state"] == "active" and now["retired"]["selector"] == first["selector"]
    assert now["signing"]["selector"] == "two"
    human = cli("dkim", "rotate", "example.org", "--selector", "three", check=True).stdout
    assert human.startswith("DKIM key three is staged for example.org; two signs until it is activated")
    assert "then: smtpplus dkim activate example.org" in human and '"v=DKIM1; k=ed25519; p=' in human
    forced = cli("dkim", "activate", "example.org", "--selector", "three", "--force", check=True).stdout
    assert forced.startswith("DKIM key three now signs for example.org: unchecked (--force)")
    assert "two is retired" in forced
    states = [(k["selector"], k["state"]) for k in json.loads(cli("dkim", "ls", "--json", check=True).stdout)]
    assert states == [("three", "active"), ("two", "retired"), (first["selector"], "retired")]


def test_the_store_and_its_backups_are_owner_only(cli: Any, tmp_path: Path) -> None:
    cli("dkim", "add", "example.org", "--algorithm", "ed25519", check=True)
    assert stat.S_IMODE(os.stat(cli.store).st_mode) == 0o600
    backup = tmp_path / "copy.db"
    cli("store", "backup", str(backup), check=True)
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    assert len(_private_keys(backup)) == 1  # a backup signs alike: it is a secret too


def test_a_store_others_can_read_gets_a_warning(cli: Any) -> None:
    sqlite3.connect(cli.store).close()  # a store made by something else, mode from the umask
    os.chmod(cli.store, 0o644)
    proc = cli("dkim", "add", "example.org", "--algorithm", "ed25519", check=True)
    assert f"chmod 600 {cli.store}" in proc.stderr and "readable by others (mode 0644)" in proc.stderr


def test_the_docs_state_the_keep_days_and_the_store_mode() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text(encoding="utf-8")
    section = text[text.index("## The store is a secret") :]
    assert f"stays listed for {RETIRED_KEEP_DAYS} days" in section and "mode `0600`" in section


def test_the_stores_wal_and_shm_files_are_owner_only_too(tmp_path: Path) -> None:
    from relay.store import open_store

    db = open_store(tmp_path / "fresh.db")
    try:
        db.execute("INSERT INTO settings(key, value) VALUES ('k', '1')")
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == ["fresh.db", "fresh.db-shm", "fresh.db-wal"]
        assert {stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in files} == {0o600}
    finally:
        db.close()
