"""The `smtpplus` admin CLI for lists, users and the store, through real subprocesses."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from relay import passwords
from relay.store import directory as d
from relay.store import open_store
from relay.store.intake import NewMessage, insert_messages
from relay.store.relay_info import publish_ports
from relay.store.settings import Keys, set_setting
from relay.store.sqlite.schema import SCHEMA_VERSION

HASH = passwords.hash_password("unused")


@contextmanager
def store(path: Path) -> Iterator[sqlite3.Connection]:
    db = open_store(path)
    try:
        yield db
    finally:
        db.close()


def one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """A failed command: non-zero exit, exactly one line on stderr, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def store_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def setup_list(path: Path, name: str = "Shop", *, server_name: str = "relay.example.net") -> None:
    # The server name is set so `lists show` shows it, not this host's name (its fallback).
    with store(path) as db:
        d.create_list(db, name)
        set_setting(db, Keys.SERVER_NAME, server_name)


# ---------------------------------------------------------------------------
# Help pages and imports


LEAF_COMMANDS = [
    ["lists", "add"], ["lists", "ls"], ["lists", "edit"], ["lists", "show"], ["lists", "rm"],
    ["lists", "members", "import"], ["lists", "members", "ls"],
    ["users", "add"], ["users", "ls"], ["users", "show"], ["users", "edit"], ["users", "activate"],
    ["users", "deactivate"], ["users", "reset-password"], ["users", "rm"],
    ["store", "backup"],
]
# Interactive or long-running: they report as they go, not one result.
NO_JSON = {("console",), ("demo",), ("relay",), ("sink",)}


def all_leaf_commands() -> list[tuple[str, ...]]:
    import click

    from console.cli import main

    ctx = click.Context(main)
    found: list[tuple[str, ...]] = []

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                walk(sub, (*path, name))
        else:
            found.append(path)

    walk(main, ())
    return found


def test_every_command_has_help_with_db_and_json_where_it_reports() -> None:
    from console.cli import main

    runner = CliRunner()
    for group in (["lists"], ["lists", "members"], ["users"], ["store"]):
        result = runner.invoke(main, [*group, "--help"])
        assert result.exit_code == 0 and "Commands:" in result.output, group
    for command in LEAF_COMMANDS:
        result = runner.invoke(main, [*command, "--help"])
        assert result.exit_code == 0, command
        assert "--db" in result.output, command
    assert "stats" in runner.invoke(main, ["lists", "--help"]).output


def test_every_command_but_the_interactive_ones_takes_json() -> None:
    from console.cli import main

    leaves = all_leaf_commands()
    assert ("queue", "next-hop") in leaves and ("users", "activate") in leaves and len(leaves) > 40
    runner = CliRunner()
    for command in leaves:
        result = runner.invoke(main, [*command, "--help"])
        assert result.exit_code == 0, command
        assert ("--json" in result.output) == (command not in NO_JSON), command


def test_store_commands_do_not_import_textual(cli: Any) -> None:
    code = (
        "import sys\nfrom console.cli import main\n"
        "for args in (['lists', 'ls'], ['users', 'ls', '--json'], ['lists', 'members', '--help']):\n"
        "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
        "print('textual' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli.env, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


# ---------------------------------------------------------------------------
# Lists


def test_lists_add_ls_edit_show_rm(cli: Any) -> None:
    with store(cli.store) as db:
        set_setting(db, Keys.SERVER_NAME, "relay.example.net")
    assert cli.json("lists", "add", "Newsletter", "--description", "Monthly news")["name"] == "Newsletter"
    one_line_error(cli("lists", "add", "newsletter"), "already exists")
    assert "Created list 'Alerts'" in ok(cli("lists", "add", "Alerts"))
    listed = cli.json("lists", "ls")
    assert [(x["name"], x["description"], x["users"], x["members"]) for x in listed] == [
        ("Alerts", "", 0, 0),
        ("Newsletter", "Monthly news", 0, 0),
    ]
    ok(cli("lists", "edit", "alerts", "--description", "pager", "--rename", "Ops"))
    one_line_error(cli("lists", "edit", "Ops"), "nothing to change", "--rename")
    one_line_error(cli("lists", "edit", "Missing", "--description", "x"), "no list named 'Missing'")
    table = ok(cli("lists", "ls"))
    assert "Ops" in table and "pager" in table and "Alerts" not in table

    shown = ok(cli("lists", "show", "newsletter"))
    for expected in (
        "Newsletter — Monthly news",
        "relay.example.net",
        "no relay has run yet — default 25,587,1025-5000 (STARTTLS); 465 (SSL/TLS)",
        "STARTTLS (required for AUTH); SSL/TLS on 465",
        "not yet generated — start the relay once",
        "Thunderbird", "Outlook", "Apple Mail",
        "SMTP_HOST=relay.example.net", "SMTP_PORT=465", "SMTP_SSL=true", "port 465, SSL/TLS; or 587, STARTTLS",
        "none yet — add one with: smtpplus users add --list Newsletter",
    ):
        assert expected in shown, expected
    # The block to paste keeps its lines (a newline is not a control byte to escape there).
    assert "\\x0a" not in shown
    assert any(line.strip() == "SMTP_HOST=relay.example.net" for line in shown.splitlines())

    one_line_error(cli("lists", "rm", "Ops", input=""), "pass --yes")
    assert len(cli.json("lists", "ls")) == 2
    assert "Deleted list 'Ops'" in ok(cli("lists", "rm", "ops", "--yes"))
    one_line_error(cli("lists", "show", "Ops"), "no list named 'Ops'", "smtpplus lists ls")
    one_line_error(cli("lists", "rm", "Ops", "--yes"), "no list named")


def test_lists_show_reports_what_the_relay_published(cli: Any) -> None:
    setup_list(cli.store)
    with store(cli.store) as db:
        d.create_user(db, list_name="Shop", password_hash=HASH, domains=["shop.example"])
        set_setting(db, Keys.TLS_FINGERPRINT, "SHA256:12:34:AB")
        set_setting(db, Keys.ALLOW_PLAIN_AUTH, True)
        publish_ports(db, [25, *range(1025, 1031)], {2525: "address already in use — stop the other program", 2526: "address already in use — stop the other program"})
    shown = ok(cli("lists", "show", "Shop"))
    for expected in (
        "25,1025-1030", "2525-2526: address already in use", "STARTTLS optional; plain AUTH allowed",
        "SHA256:12:34:AB", "SMTP_PORT=1025", "SMTP_USERNAME=shop-1", "shop.example (pending)",
    ):
        assert expected in shown, expected
    assert "no relay has run yet" not in shown
    data = cli.json("lists", "show", "Shop")
    settings = data["client_settings"]
    assert settings["ports_spec"] == "25,1025-1030" and settings["relay_has_run"] is True
    assert settings["not_served"] == {"2525": "address already in use — stop the other program", "2526": "address already in use — stop the other program"}
    assert settings["fingerprint"] == "SHA256:12:34:AB" and settings["starttls_required"] is False
    assert [u["username"] for u in data["relay_users"]] == ["shop-1"]
    assert "$argon2" not in json.dumps(data)


def test_lists_show_names_the_implicit_tls_port_first(cli: Any) -> None:
    setup_list(cli.store)
    with store(cli.store) as db:
        publish_ports(db, [465, 587, 2525], {}, [465])
    shown = ok(cli("lists", "show", "Shop"))
    for expected in ("587,2525 (STARTTLS); 465 (SSL/TLS)", "STARTTLS (required for AUTH); SSL/TLS on 465",
                     "port 465, SSL/TLS; or 587, STARTTLS", "Connection security: SSL/TLS", "SMTP_PORT=465"):
        assert expected in shown, expected
    settings = cli.json("lists", "show", "Shop")["client_settings"]
    assert (settings["implicit_tls"], settings["tls_port"], settings["port"]) == ([465], 465, 587)


# ---------------------------------------------------------------------------
# Members


def test_members_import_and_ls(cli: Any, tmp_path: Path) -> None:
    setup_list(cli.store)
    with_header = tmp_path / "members.csv"
    with_header.write_text('\ufeffAddress,Name\nAnn@Example.com,Ann\nbob@example.com,"Bob, Jr"\n\nann@example.com,again\n', encoding="utf-8")
    plain = tmp_path / "plain.txt"
    plain.write_text("bob@example.com\ncy@example.com\n# a comment\ndi@bücher.de\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("address\nok@example.com\nvisitor%evil.net@example.com\n")

    out = ok(cli("lists", "members", "import", "shop", str(with_header)))
    assert "2 added, 0 already there, 1 repeated row(s)" in out
    assert "2 added, 1 already there" in ok(cli("lists", "members", "import", "Shop", str(plain)))
    again = cli.json("lists", "members", "import", "Shop", str(with_header))
    assert again == {"list": "Shop", "added": 0, "already": 2, "repeated_in_file": 1}
    one_line_error(cli("lists", "members", "import", "Shop", str(bad)), "bad.csv line 3", "'visitor%evil.net@example.com'", "'%'")
    one_line_error(cli("lists", "members", "import", "Shop", str(tmp_path / "missing.csv")), "cannot read", "missing.csv")
    one_line_error(cli("lists", "members", "import", "Nope", str(plain)), "no list named 'Nope'")

    members = cli.json("lists", "members", "ls", "Shop")
    assert members == [
        {"address": "ann@example.com", "name": "Ann"},
        {"address": "bob@example.com", "name": "Bob, Jr"},
        {"address": "cy@example.com", "name": ""},
        {"address": "di@xn--bcher-kva.de", "name": ""},
    ]  # nothing of bad.csv was imported
    table = ok(cli("lists", "members", "ls", "Shop"))
    assert "4 member(s)" in table and "Bob, Jr" in table
    one_line_error(cli("lists", "members", "ls", "Nope"), "no list named")


# ---------------------------------------------------------------------------
# Users: add, show, secrets


def test_users_add_then_show_shows_identities_and_no_secret(cli: Any) -> None:
    setup_list(cli.store)
    created = cli.json(
        "users", "add", "--list", "shop", "--domains", "Shop.example; bücher.de", "--senders", "Info@Shop.example",
        "--note", "web shop", "--priority", "2",
    )
    assert set(created) == {"username", "password"} and created["username"] == "shop-1"
    first_password = created["password"]
    assert len(first_password) >= 22  # ≥ 128 bits of URL-safe base64

    human = cli("users", "add", "--list", "Shop", "--username", "ops.alerts")
    second_password = next(line.split(":", 1)[1].strip() for line in ok(human).splitlines() if "Password:" in line)
    assert "shown only this once" in human.stdout and "ops.alerts" in human.stdout
    assert "no authorized domains or senders" in human.stdout

    shown = ok(cli("users", "show", "shop-1"))
    for expected in ("shop-1", "Shop", "web shop", "2 (high)", "shop.example", "xn--bcher-kva.de (bücher.de)", "info@shop.example", "pending", "awaiting verification"):
        assert expected in shown, expected
    data = cli.json("users", "show", "shop-1")
    assert [(i["kind"], i["identity"], i["state"]) for i in data["identities"]] == [
        ("domain", "shop.example", "pending"),
        ("domain", "xn--bcher-kva.de", "pending"),
        ("address", "info@shop.example", "pending"),
    ]
    assert data["active"] is False and data["priority"] == 2

    outputs = [shown, json.dumps(data), ok(cli("users", "ls")), json.dumps(cli.json("users", "ls", "--list", "Shop")),
               json.dumps(cli.json("lists", "show", "Shop")), ok(cli("lists", "show", "Shop"))]
    for output in outputs:
        assert first_password not in output and second_password not in output
        assert "$argon2" not in output and "password_hash" not in output

    with store(cli.store) as db:
        hashes = [r[0] for r in db.execute("SELECT password_hash FROM users")]
        assert len(hashes) == 2 and all(h.startswith("$argon2id$") for h in hashes)
        assert passwords.verify_password(d.auth_record(db, "shop-1").password_hash, first_password)  # type: ignore[union-attr]
        assert passwords.verify_password(d.auth_record(db, "ops.alerts").password_hash, second_password)  # type: ignore[union-attr]
    raw = store_bytes(cli.store)
    assert first_password.encode() not in raw and second_password.encode() not in raw

    # Reset: a new password, shown once; the old one stops working.
    reset = cli.json("users", "reset-password", "shop-1")
    assert set(reset) == {"username", "password"} and reset["password"] != first_password
    again = ok(cli("users", "reset-password", "shop-1"))
    third_password = next(line.split(":", 1)[1].strip() for line in again.splitlines() if "Password:" in line)
    assert "old one no longer works" in again and third_password not in (first_password, reset["password"])
    with store(cli.store) as db:
        current = d.auth_record(db, "shop-1").password_hash  # type: ignore[union-attr]
    assert current.startswith("$argon2id$")
    assert passwords.verify_password(current, third_password)
    assert not passwords.verify_password(current, first_password)
    assert not passwords.verify_password(current, reset["password"])
    for output in (ok(cli("users", "show", "shop-1")), json.dumps(cli.json("users", "ls"))):
        assert third_password not in output and reset["password"] not in output


def test_user_errors_are_one_line(cli: Any) -> None:
    setup_list(cli.store)
    with store(cli.store) as db:
        d.create_user(db, list_name="Shop", password_hash=HASH, username="taken")
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        (["users", "add", "--list", "Missing"], ("no list named 'Missing'",)),
        (["users", "add", "--list", "Shop", "--username", "taken"], ("'taken' already exists",)),
        (["users", "add", "--list", "Shop", "--username", "bad name"], ("'bad name' is not valid",)),
        (["users", "add", "--list", "Shop", "--priority", "7"], ("priority must be", "not '7'")),
        (["users", "add", "--list", "Shop", "--priority", "high"], ("priority must be",)),
        (["users", "add", "--list", "Shop", "--domains", "a.com,b.com"], ("--domains", "use semicolons", "'a.com,b.com'")),
        (["users", "add", "--list", "Shop", "--senders", "a@x.com, b@x.com"], ("--senders", "use semicolons")),
        (["users", "add", "--list", "Shop", "--senders", "visitor%evil.net@shop.example"], ("'visitor%evil.net@shop.example' is not a valid",)),
        (["users", "add", "--list", "Shop", "--senders", "info@[10.0.0.1]"], ("address literals",)),
        (["users", "add", "--list", "Shop", "--domains", "10.0.0.1"], ("'10.0.0.1' is not a domain",)),
        (["users", "add", "--list", "Shop", "--note", "x" * 300], ("note is 300 characters",)),
        (["users", "edit", "taken"], ("nothing to change",)),
        (["users", "edit", "taken", "--priority", "0"], ("priority must be",)),
        (["users", "edit", "taken", "--domains", "a.com,b.com"], ("use semicolons",)),
        (["users", "ls", "--list", "Missing"], ("no list named",)),
    ]
    for verb in (["show"], ["edit", "--priority", "2"], ["activate"], ["deactivate"], ["reset-password"], ["rm", "--yes"]):
        cases.append((["users", verb[0], "nobody", *verb[1:]], ("no relay user 'nobody'", "smtpplus users ls")))
    for args, fragments in cases:
        one_line_error(cli(*args), *fragments)
    assert [u["username"] for u in cli.json("users", "ls")] == ["taken"]  # no failed command created anything


def test_nudges_activation_deactivation_and_rm(cli: Any) -> None:
    setup_list(cli.store)
    added = cli("users", "add", "--list", "Shop", "--priority", "1", "--domains", "shop.example", "--json")
    assert json.loads(ok(added))["username"] == "shop-1"
    assert "does not mark the mail urgent" in added.stderr and "X-Priority: 1" in added.stderr  # notes off stdout
    assert "awaiting verification: shop.example" in added.stderr

    with store(cli.store) as db:
        d.approve_identities(db, ["shop.example"], "existing account")
        user = d.get_user(db, "shop-1")
        insert_messages(db, [NewMessage(mail_from="a@shop.example", recipients=["r@x.example"], data=b"x",
                                        list_id=user.list_id, list_name="Shop", user_id=user.id, username="shop-1")])
    shown = ok(cli("users", "show", "shop-1"))
    assert "remember to activate" in shown and "manual" in shown and "existing account" in shown
    assert "no — activate!" in ok(cli("users", "ls"))

    edited = ok(cli("users", "edit", "shop-1", "--senders", "new@shop.example", "--note", "moved"))
    assert "awaiting verification: new@shop.example" in edited and "remember to activate" not in edited
    activated = cli("users", "activate", "shop-1")
    assert "Activated relay user shop-1" in ok(activated)
    assert "not verified yet: new@shop.example" in activated.stderr and "shop.example," not in activated.stderr
    data = cli.json("users", "show", "shop-1")
    assert data["active"] is True and data["note"] == "moved" and data["senders"] == ["new@shop.example"]
    assert "can no longer log in" in ok(cli("users", "deactivate", "shop-1"))
    assert cli.json("users", "show", "shop-1")["active"] is False

    # --active on add: allowed with pending identities, which it names.
    at_once = cli("users", "add", "--list", "Shop", "--active", "--senders", "ops@shop.example")
    assert "(active)" in ok(at_once) and "awaiting verification: ops@shop.example" in at_once.stdout
    assert cli.json("users", "show", "shop-2")["active"] is True

    one_line_error(cli("users", "rm", "shop-1", input=""), "pass --yes")
    assert "Deleted relay user shop-1" in ok(cli("users", "rm", "shop-1", "--yes"))
    one_line_error(cli("users", "show", "shop-1"), "no relay user")
    with store(cli.store) as db:
        row = db.execute("SELECT username, list_name, user_id, state FROM messages").fetchone()
    assert tuple(row) == ("shop-1", "Shop", None, "queued")


# ---------------------------------------------------------------------------
# The store file


@pytest.mark.parametrize("command", [["lists", "ls"], ["users", "add", "--list", "Shop"]])
def test_unreadable_and_too_new_stores_are_one_line_errors(cli: Any, tmp_path: Path, command: list[str]) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"definitely not SQLite " * 500)
    one_line_error(cli(*command, "--db", str(garbage)), "not usable", "garbage.db")

    newer = tmp_path / "newer.db"
    open_store(newer).close()
    raw = sqlite3.connect(newer)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    raw.close()
    one_line_error(cli(*command, "--db", str(newer)), "newer smtpplus", "upgrade smtpplus")


def test_store_backup(cli: Any, tmp_path: Path) -> None:
    setup_list(cli.store, "Backed up")
    target = tmp_path / "copy.db"
    assert "Backed up" in ok(cli("store", "backup", str(target)))
    with store(target) as copy:
        assert [x.name for x in d.all_lists(copy)] == ["Backed up"]
    one_line_error(cli("store", "backup", str(target)), "already exists", "--force")
    with store(cli.store) as db:
        d.create_list(db, "Later")
    report = cli.json("store", "backup", str(target), "--force")
    assert report["backup"] == str(target) and report["bytes"] == target.stat().st_size
    with store(target) as copy:
        assert [x.name for x in d.all_lists(copy)] == ["Backed up", "Later"]
    assert not list(tmp_path.glob(".copy.db.partial*"))
    one_line_error(cli("store", "backup", str(tmp_path / "x.db"), "--db", str(tmp_path / "none.db")), "no store at")
    one_line_error(cli("store", "backup", str(tmp_path / "no-dir" / "x.db")), "does not exist", "no-dir")


def test_a_missing_store_directory_is_an_error_except_for_the_default_store(cli: Any, tmp_path: Path) -> None:
    from tests.conftest import Cli

    missing = tmp_path / "nonexistent" / "dir"
    error = one_line_error(cli("lists", "add", "X", "--db", str(missing / "x.db")), f"directory {missing} does not exist", "mkdir -p")
    assert "--db" in error
    via_env = Cli(cli.store, {**cli.env, "SMTPPLUS_DB": str(missing / "env.db")})
    one_line_error(via_env("users", "add", "--list", "X"), f"directory {missing} does not exist")
    # A command that only reads says there is no store (the path is most likely a typo).
    one_line_error(via_env("users", "ls"), f"no store at {missing / 'env.db'} — check --db / $SMTPPLUS_DB")
    assert not (tmp_path / "nonexistent").exists()  # nothing was created on the way

    # Neither --db nor SMTPPLUS_DB: the store goes to the user's data directory, made on
    # first change (reading it first creates nothing).
    default_env = {k: v for k, v in cli.env.items() if k != "SMTPPLUS_DB"}
    default_cli = Cli(cli.store, default_env)
    default_store = Path(default_env["XDG_DATA_HOME"]) / "smtpplus" / "smtpplus.db"
    one_line_error(default_cli("lists", "ls"), f"no store at {default_store}")
    assert not default_store.exists()
    ok(default_cli("lists", "add", "Default"))
    assert default_store.is_file()
    assert [x["name"] for x in default_cli.json("lists", "ls")] == ["Default"]


def test_bench_console_puts_its_scratch_store_at_db(cli: Any, tmp_path: Path) -> None:
    target = tmp_path / "bench.db"
    proc = cli("harness", "bench", "console", "--count", "200", "--refreshes", "2", "--db", str(target), "--json", timeout=120)
    report = json.loads(ok(proc))
    assert report["parameters"] == {"queued": 200, "refreshes": 2, "store": str(target)}
    assert {f["name"]: f["value"] for f in report["figures"]}["refreshes"] == 2
    with store(target) as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 200
    assert not cli.store.exists()  # SMTPPLUS_DB was never touched
    # Never into a store that exists (a real one would get 100,000 messages), nor a missing directory.
    one_line_error(cli("harness", "bench", "console", "--db", str(target)), "already exists", "new store")
    one_line_error(cli("harness", "bench", "console", "--db", str(tmp_path / "no" / "b.db")), "does not exist", "mkdir -p")
