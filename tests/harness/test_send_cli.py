"""`smtpplus send` as a real subprocess against an in-process relay."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from relay import policy
from relay.passwords import hash_password
from relay.store import directory

PASSWORD = "Send-Test-Password-0123456789"


def _make_user(db: sqlite3.Connection) -> None:
    directory.create_list(db, "sendtest")
    directory.create_user(
        db, list_name="sendtest", password_hash=hash_password(PASSWORD), username="send-user",
        domains=policy.parse_domains("send.example"),
    )
    directory.approve_identities(db, ["send.example"], "test")
    directory.set_active(db, "send-user", True)


async def _send(cli: Any, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if env:
        cli = type(cli)(cli.store, {**cli.env, **env})
    return await asyncio.to_thread(cli, "send", *args)


def _base(relay: Any, tls_files: dict[str, Path], *extra: str) -> list[str]:
    return [
        "--port", str(relay.served[0]), "--cafile", str(tls_files["ca"]),
        "--auth-user", "send-user", "--auth-password", PASSWORD, *extra,
    ]


async def test_happy_path_with_cafile_shows_the_dialogue_and_masks_auth(
    relay: Any, db: sqlite3.Connection, cli: Any, tls_files: dict[str, Path]
) -> None:
    _make_user(db)
    proc = await _send(cli, *_base(relay, tls_files, "--from", "me@send.example", "--to", "you@dest.example",
                                   "--priority", "2", "--subject", "hello"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "-> STARTTLS" in out and "<- 220" in out
    assert "TLS started: TLSv1." in out and "peer certificate SHA256:" in out
    assert "-> AUTH PLAIN ****" in out and "<- 235" in out
    assert "<- 250 2.0.0 Ok: queued as" in out and "=== done, queued as" in out
    assert "ms] ->" in out  # timings on every line
    plain = base64.b64encode(f"\0send-user\0{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, plain):
        assert secret not in out and secret not in proc.stderr


async def test_password_from_the_environment_with_auth_login_is_never_echoed(
    relay: Any, db: sqlite3.Connection, cli: Any, tls_files: dict[str, Path]
) -> None:
    _make_user(db)
    proc = await _send(
        cli, "--port", str(relay.served[1]), "--cafile", str(tls_files["ca"]), "--auth-user", "send-user",
        "--auth-mech", "login", "--from", "me@send.example", "--to", "you@dest.example", "--json",
        env={"SMTPPLUS_PASSWORD": PASSWORD},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] and result["queue_id"] and result["tls"]["verified"] is True
    assert {"dir": "->", "text": "****"} in [{k: line[k] for k in ("dir", "text")} for line in result["dialogue"]]
    assert PASSWORD not in proc.stdout and base64.b64encode(PASSWORD.encode()).decode() not in proc.stdout


async def test_each_failed_stage_has_its_own_exit_code(
    relay: Any, db: sqlite3.Connection, cli: Any, tls_files: dict[str, Path], refused_port: int
) -> None:
    _make_user(db)
    port = str(relay.served[2])
    cases = {
        2: ["--port", str(refused_port), "--no-tls", "--quit-after", "banner"],
        3: ["--port", port, "--from", "me@send.example", "--to", "you@dest.example"],  # relay's cert not trusted
        4: ["--port", port, "--cafile", str(tls_files["ca"]), "--auth-user", "send-user", "--auth-password",
            "wrong-password", "--from", "me@send.example", "--to", "you@dest.example"],
        5: _base(relay, tls_files, "--from", "me@other.example", "--to", "you@dest.example"),
        6: _base(relay, tls_files, "--from", "me@send.example", "--to", "you%evil.example@dest.example"),
        7: _base(relay, tls_files, "--from", "me@send.example", "--to", "you@dest.example", "--header", "From:"),
    }
    results = await asyncio.gather(*(_send(cli, *args) for args in cases.values()))
    for expected, proc in zip(cases, results, strict=True):
        assert proc.returncode == expected, f"exit {proc.returncode}, wanted {expected}:\n{proc.stdout}{proc.stderr}"
        assert f"(exit {expected})" in proc.stdout
        assert "Traceback" not in proc.stderr
    assert "certificate not trusted" in results[1].stdout
    assert "<- 535 5.7.8" in results[2].stdout and "wrong-password" not in results[2].stdout
    assert "<- 550 5.7.1" in results[3].stdout
    assert "<- 553 5.1.3" in results[4].stdout
    assert "<- 550 5.6.0" in results[5].stdout


async def test_help_lists_exit_codes_and_usage_errors_exit_1(cli: Any) -> None:
    help_text = (await _send(cli, "--help")).stdout
    for line in ("2  connect failed", "3  tls failed", "4  auth failed", "5  mail failed", "6  rcpt failed", "7  data failed"):
        assert line in help_text
    bad = await _send(cli, "--bogus-option")
    assert bad.returncode == 1
    contradiction = await _send(cli, "--insecure", "--cafile", __file__)
    assert contradiction.returncode == 1 and "contradict" in contradiction.stderr


async def test_data_from_a_file_or_stdin_with_headers_replaced(
    relay: Any, db: sqlite3.Connection, cli: Any, tls_files: dict[str, Path]
) -> None:
    _make_user(db)
    # The shipped sample says From: alice@addr.example; --header puts our own sender in its place.
    args = _base(relay, tls_files, "--from", "me@send.example", "--to", "you@dest.example",
                 "--header", "From: Me <me@send.example>")
    from_file = await _send(cli, *args, "--data", str(Path(__file__).parents[2] / "fixtures/messages/sample.eml"))
    assert from_file.returncode == 0, from_file.stdout
    stdin = "Subject: from stdin\r\nFrom: someone@else.example\r\n\r\nhi\r\n"
    from_stdin = await asyncio.to_thread(lambda: cli("send", *args, "--data", "-", input=stdin))
    assert from_stdin.returncode == 0, from_stdin.stdout + from_stdin.stderr
    for stage in ("auth", "AUTH", "Auth"):  # stage names in any case
        stopped = await _send(cli, *_base(relay, tls_files, "--quit-after", stage))
        assert stopped.returncode == 0 and "=== stopped after auth" in stopped.stdout, stopped.stdout + stopped.stderr
        assert "MAIL FROM" not in stopped.stdout


async def test_count_sends_the_rest_through_the_shared_load_generator(
    relay: Any, db: sqlite3.Connection, cli: Any, tls_files: dict[str, Path]
) -> None:
    from relay.store import queue as queue_store

    _make_user(db)
    proc = await _send(cli, *_base(relay, tls_files, "--from", "me@send.example", "--to", "you@dest.example",
                                   "--count", "20", "--connections", "4", "--priority", "4", "--json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] and out["queue_id"]
    load = out["load"]
    assert load["bench"] == "send" and load["runs"][0]["messages"] == 19
    assert load["runs"][0]["failures"] == 0
    assert PASSWORD not in proc.stdout
    queued = queue_store.list_messages(db, state="all", limit=100)
    assert len(queued) == 20 and sum(1 for m in queued if m.header_priority == 4) == 20


async def test_count_keeps_the_given_recipients_and_subject_for_every_message(
    relay: Any, db: sqlite3.Connection, cli: Any, tls_files: dict[str, Path]
) -> None:
    from relay.store import queue as queue_store

    _make_user(db)
    proc = await _send(cli, *_base(relay, tls_files, "--from", "me@send.example", "--to", "one@dest.example",
                                   "--to", "two@dest.example", "--subject", "monthly report", "--count", "6",
                                   "--connections", "2", "--header", "X-Campaign: q3"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    queued = queue_store.list_messages(db, state="all", limit=100)
    assert len(queued) == 6
    assert {m.subject for m in queued} == {"monthly report"}
    details = [queue_store.message_detail(db, m.queue_id) for m in queued]
    assert all(sorted(r.address for r in d.recipients) == ["one@dest.example", "two@dest.example"] for d in details)
    assert all("X-Campaign: q3" in d.headers and "To: one@dest.example, two@dest.example" in d.headers for d in details)
    message_ids = {line for d in details for line in d.headers.splitlines() if line.lower().startswith("message-id:")}
    assert len(message_ids) == 6  # each message its own
