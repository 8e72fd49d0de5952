"""Unix and Postfix habits of the `smtpplus` CLI, as real subprocesses: --version,
--json on every change, a control without a value shows it, reading never creates a
store, one word for the operator's verification method."""

from __future__ import annotations

import importlib.metadata
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from relay.store import directory as d
from relay.store import open_store
from relay.store.settings import Keys, set_setting
from tests.foundation.test_cli import HASH, ok, one_line_error


@contextmanager
def store(path: Path) -> Iterator[sqlite3.Connection]:
    db = open_store(path)
    try:
        yield db
    finally:
        db.close()


def test_version_prints_the_installed_version(cli: Any) -> None:
    out = ok(cli("--version"))
    assert out == f"smtpplus {importlib.metadata.version('smtpplus')}\n"


# Every command that only reads: none of them may create a store.
READ_COMMANDS = [
    ("queue", "ls"), ("queue", "status"), ("queue", "show", "ABC"), ("queue", "rate"), ("queue", "parallel"),
    ("queue", "starvation"), ("queue", "next-hop"), ("campaigns", "ls"), ("users", "ls"), ("users", "show", "u"),
    ("lists", "ls"), ("lists", "show", "x"), ("lists", "stats", "x"), ("lists", "members", "ls", "x"),
    ("senders", "ls"), ("senders", "show", "a@example.com"), ("senders", "settings"), ("status",),
    ("tls", "export"), ("store", "backup", "copy.db"), ("domains", "settings"), ("domains", "check", "example.com"),
    ("dkim", "ls"), ("dkim", "check", "example.org"),
    ("queue", "destinations"), ("routes", "ls"),
]


def test_a_command_that_only_reads_never_creates_a_store(cli: Any, tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    for command in READ_COMMANDS:
        for extra in ((), ("--json",)) if command != ("store", "backup", "copy.db") else ((),):
            proc = cli(*command, *extra, "--db", str(typo))
            assert proc.returncode == 1, (command, proc.stdout, proc.stderr)
            one_line_error(proc, f"no store at {typo} — check --db / $SMTPPLUS_DB")
            assert proc.stdout == "", command
            assert not typo.exists() and not Path(f"{typo}-wal").exists(), command
    assert list(tmp_path.glob("typo*")) == []


def test_a_control_without_a_value_shows_it(cli: Any) -> None:
    ok(cli("lists", "add", "L"))  # creates the store
    assert ok(cli("queue", "rate")) == "rate: unlimited\n"
    assert ok(cli("queue", "parallel")) == "parallel connections: 4\n"
    ok(cli("queue", "rate", "2.5"))
    ok(cli("queue", "parallel", "7"))
    assert ok(cli("queue", "rate")) == "rate: 2.5 messages per second\n"
    assert ok(cli("queue", "parallel")) == "parallel connections: 7\n"
    assert cli.json("queue", "rate") == {"rate": 2.5}
    assert cli.json("queue", "parallel") == {"parallel": 7}
    assert cli.json("queue", "starvation")["starvation_share"] == 0.0
    assert cli.json("queue", "next-hop") == {"next_hop": None, "tls": "opportunistic", "auth_user": None, "cafile": None}


def test_every_mutating_command_prints_json(cli: Any, tmp_path: Path) -> None:
    with store(cli.store) as db:
        set_setting(db, Keys.SERVER_NAME, "relay.example.net")
    out: dict[str, Any] = {}

    def run(*args: str, input: str | None = None) -> Any:
        proc = cli(*args, "--json", input=input)
        assert proc.returncode == 0, (args, proc.stderr)
        value = json.loads(proc.stdout)  # the whole of stdout is one JSON document
        out[" ".join(args[:2])] = value
        return value

    assert run("lists", "add", "Shop")["name"] == "Shop"
    assert run("lists", "edit", "Shop", "--description", "the shop")["description"] == "the shop"
    user = run("users", "add", "--list", "Shop", "--senders", "info@shop.example", "--username", "shop-1")
    assert user["username"] == "shop-1"
    assert run("users", "edit", "shop-1", "--priority", "2")["priority"] == 2
    assert run("users", "deactivate", "shop-1")["active"] is False
    assert run("users", "activate", "shop-1")["active"] is True
    assert run("users", "reset-password", "shop-1")["password"]
    members = tmp_path / "members.csv"
    members.write_text("email,name\na@example.org,A\n")
    run("lists", "members", "import", "Shop", str(members))
    assert run("senders", "approve", "info@shop.example", "--reason", "known shop")[0]["method"] == "manual"
    assert run("queue", "pause") == {"paused": True, "was_paused": False}
    assert run("queue", "resume") == {"paused": False, "was_paused": True}
    assert run("queue", "rate", "3") == {"rate": 3.0}
    assert run("queue", "parallel", "5") == {"parallel": 5}
    assert run("queue", "starvation", "0.1")["starvation_share"] == 0.1
    hop = run("queue", "next-hop", "127.0.0.1:2525", "--tls", "off")
    assert hop == {"next_hop": "127.0.0.1:2525", "tls": "off", "auth_user": None, "cafile": None}
    assert run("queue", "next-hop", "--clear")["next_hop"] is None
    assert run("users", "rm", "shop-1", "--yes") == {"deleted": "shop-1", "list": "Shop"}
    assert run("lists", "rm", "Shop", "--yes") == {"deleted": "Shop", "users": 0, "members": 1}
    assert len(out) >= 15


def test_the_operators_verification_method_has_one_name(cli: Any) -> None:
    with store(cli.store) as db:
        d.create_list(db, "L")
        d.create_user(db, list_name="L", password_hash=HASH, username="u", senders=["a@example.com"])
    approved = cli.json("senders", "approve", "a@example.com", "--reason", "known")
    assert approved[0]["method"] == "manual"
    assert cli.json("senders", "show", "a@example.com")["method"] == "manual"
    assert "manual" in ok(cli("senders", "ls"))
    from console.screens.senders import METHODS

    assert METHODS["manual"] == "manual"
