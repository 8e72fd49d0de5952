"""Bulk-sender rules end to end: a relay subprocess expands a campaign, a capture sink
receives it with List-Unsubscribe headers, the tokens from those headers unsubscribe
through the CLI and through a real one-click POST to the metrics listener, a 5.1.1 from
the sink suppresses a recipient, and a second campaign skips them all."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.parse
import urllib.request
from email.parser import BytesParser
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import pytest

from harness.sink import CaptureSink, Chaos, SinkRecord
from relay.store.campaigns import get_campaign
from relay.store.suppressions import list_suppressions
from relay.unsubscribe import BadToken, make_token, parse_token
from tests.conftest import Cli
from tests.delivery.conftest import eventually
from tests.relay.support import Seeded, events, rows
from tests.relay.test_cli import RelayProcess
from tests.service.support import relay_toml

MEMBERS = ["keep@d.example", "leave@d.example", "quits@d.example", "gone@d.example"]
URL_TEMPLATE = "https://lists.example.org/u/{token}"


def http(address: str, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
    """One request with urllib (an independent client), as a mailbox provider sends it."""
    request = urllib.request.Request(f"http://{address}{path}", data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def unsubscribe_header(record: SinkRecord) -> tuple[str, str, str | None]:
    """(mailto target, https target, List-Unsubscribe-Post) of a received message."""
    message = BytesParser(policy=SMTP_POLICY).parsebytes(record.data)
    targets = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
    mailto = next(t for t in targets if t.startswith("mailto:"))
    https = next(t for t in targets if t.startswith("https:"))
    post = message["List-Unsubscribe-Post"]
    return mailto, https, None if post is None else str(post)


def reasons(store_path: Path) -> list[str]:
    return [e.reason for e in events(store_path)]


async def test_campaign_headers_unsubscribe_by_cli_and_one_click_post_and_a_5_1_1_suppresses(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    members = tmp_path / "members.csv"
    members.write_text("address\n" + "\n".join(MEMBERS) + "\n")
    cli("lists", "members", "import", "news", str(members), check=True)
    assert cli.json("lists", "unsubscribe", "news", "--url-template", URL_TEMPLATE, "--mailto", "unsub@a.example") == {
        "list": "news", "url_template": URL_TEMPLATE, "mailto": "unsub@a.example", "one_click": True,
    }
    async with CaptureSink("127.0.0.1", 0, chaos=Chaos(perm_match="gone@*")) as sink:
        toml = relay_toml(tmp_path, tls_files, f'next_hop = "127.0.0.1:{sink.port}"\nunsubscribe_endpoint = true\n', paused=False)
        relay = RelayProcess(cli, tmp_path, "--config", str(toml), "--metrics-listen", "127.0.0.1:0")
        try:
            address = relay.wait_ready()["metrics"]
            cli("campaigns", "add", "--list", "news", "--subject", "First", "--body", "Hello.", "--from", "news@a.example", check=True)
            await sink.wait_until(lambda got: len([r for r in got if r.subject == "First"]) == 3, within=60)
            received = [r for r in sink.messages if r.subject == "First"]
            assert sorted(r.rcpt_tos[0] for r in received) == sorted(MEMBERS[:3])
            # The sink's 550 5.1.1 put the refused member on the suppression list.
            await eventually(lambda: rows(seeded.store_path, list_suppressions), within=30)
            suppressed = cli.json("suppressions", "ls")
            assert [(s["address"], s["reason"]) for s in suppressed] == [("gone@d.example", "recipient-suppressed")]
            assert "5.1.1" in suppressed[0]["detail"]

            tokens: dict[str, str] = {}
            for record in received:
                mailto, https, post = unsubscribe_header(record)
                assert post == "List-Unsubscribe=One-Click"
                assert https.startswith("https://lists.example.org/u/")
                token = https.removeprefix("https://lists.example.org/u/")
                assert re.fullmatch(r"[0-9]+\.[A-Za-z0-9_-]{22}", token)  # URL-safe, no address in it
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(mailto).query)
                assert mailto.startswith("mailto:unsub@a.example?") and query["subject"] == [f"unsubscribe {token}"]
                tokens[record.rcpt_tos[0]] = token
            assert len(set(tokens.values())) == 3

            # A GET (a scanner prefetching the link) does not unsubscribe: a page with a button.
            code, page = await asyncio.to_thread(http, address, "GET", f"/unsubscribe/{tokens['leave@d.example']}")
            assert code == 200 and 'method="post"' in page
            assert "member-unsubscribed" not in reasons(seeded.store_path)
            # The one-click POST (RFC 8058) unsubscribes; a forged token is a 400, never a traceback.
            one_click = b"List-Unsubscribe=One-Click"
            token = tokens["leave@d.example"]
            assert await asyncio.to_thread(http, address, "POST", f"/unsubscribe/{token}", one_click) == (200, "unsubscribed\n")
            assert await asyncio.to_thread(http, address, "POST", f"/unsubscribe/{token}", one_click) == (200, "already unsubscribed\n")
            # Another last character: a different MAC, or the same one spelled with
            # other padding bits (refused too: only the issued spelling is a token).
            forged = token[:-1] + ("A" if token[-1] != "A" else "B")
            code, text = await asyncio.to_thread(http, address, "POST", f"/unsubscribe/{forged}", one_click)
            assert code == 400 and text.startswith("unsubscribe-bad-token:") and "Traceback" not in text
            assert (await asyncio.to_thread(http, address, "POST", "/unsubscribe/<script>", one_click))[0] == 400
            assert (await asyncio.to_thread(http, address, "PUT", f"/unsubscribe/{token}", one_click))[0] == 405

            # The CLI: the same operation.
            result = cli.json("unsubscribe", tokens["quits@d.example"])
            assert result == {"list": "news", "address": "quits@d.example", "already": False, "removed": 0}
            bad = cli("unsubscribe", forged)
            assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "unsubscribe-bad-token" in bad.stderr

            # The second campaign reaches only the member left.
            second = cli.json("campaigns", "add", "--list", "news", "--subject", "Second", "--body", "Again.", "--from", "news@a.example")
            await eventually(lambda: rows(seeded.store_path, get_campaign, second["id"]).state == "done", within=60)
            later = [r for r in sink.messages if r.subject == "Second"]
            assert [r.rcpt_tos for r in later] == [["keep@d.example"]]
            shown = next(c for c in cli.json("campaigns", "ls") if c["id"] == second["id"])
            assert shown["skipped"] == 3 and shown["expanded"] == 1
        finally:
            assert relay.stop() == 0
    seen = reasons(seeded.store_path)
    assert seen.count("member-unsubscribed") == 2
    assert seen.count("recipient-suppressed") == 1
    assert seen.count("campaign-skipped-unsubscribed") == 2
    assert seen.count("campaign-skipped-suppressed") == 1


def test_only_the_issued_spelling_of_a_token_is_a_token() -> None:
    """The code's 22nd character holds 2 bits of the MAC and 4 padding bits that base64
    decoders ignore: the 15 other characters sharing its 2 bits must not pass as the
    token (a test forging a token by changing its last character passed 1 time in 4)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    token = make_token(b"k" * 32, 12, 7, "member@d.example")
    assert parse_token(token)[0] == 12
    high = alphabet.index(token[-1]) & 0b110000
    for other in alphabet[high : high + 16]:
        if other != token[-1]:
            with pytest.raises(BadToken):
                parse_token(token[:-1] + other)


async def test_the_unsubscribe_path_is_not_served_unless_enabled(
    cli: Cli, seeded: Seeded, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    toml = relay_toml(tmp_path, tls_files)
    relay = RelayProcess(cli, tmp_path, "--config", str(toml), "--metrics-listen", "127.0.0.1:0")
    try:
        address = relay.wait_ready()["metrics"]
        code, _ = await asyncio.to_thread(http, address, "POST", "/unsubscribe/1.AAAAAAAAAAAAAAAAAAAAAA", b"x")
        assert code == 404
    finally:
        assert relay.stop() == 0
