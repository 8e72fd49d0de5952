"""#14's "done when", walked as a new operator would from the README's "Deliver to the
internet" section: every step is a real `smtpplus` subprocess (the relay, the capture
sinks standing in for MX hosts on 127.0.0.2–4, the CLI commands), DNS is the harness's
authoritative server on loopback, and the receiver's side is judged by dkimpy.

start a relay on a smarthost → `dkim add` → publish the record (and SPF, DMARC) →
`domains check` → `queue next-hop mx` on a running relay → a list with one-click
unsubscribe → a campaign → at each MX: DKIM verifies over From, Date, Message-ID and
List-Unsubscribe[-Post]; `queue destinations` shows where it went; the token unsubscribes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from harness.bench.destinations import free_port_on_every
from harness.dns import DnsServer
from tests.conftest import ROOT
from tests.dkim.conftest import dkimpy_dnsfunc

SENDER_DOMAIN = "news.example"
RECIPIENTS = {"ann@a.test": "127.0.0.2", "bob@b.test": "127.0.0.3", "cy@a.test": "127.0.0.2"}


def wait_for(check: Callable[[], Any], what: str, within: float = 60.0) -> Any:
    """Poll ``check`` until it is truthy; the failure names what was awaited."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s (last value {value!r})")
        time.sleep(0.1)


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer().start_thread()
    yield server
    server.stop_thread()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
    for proc in started:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.slow
def test_an_operator_switches_to_mx_publishes_dkim_and_sends_a_campaign_a_strict_receiver_accepts(
    cli: Any, dns_server: DnsServer, processes: list[subprocess.Popen[bytes]], tmp_path: Path,
) -> None:
    env = dict(cli.env)
    env.update({"SMTPPLUS_DATA_DIR": str(tmp_path / "data"), "SMTPPLUS_SERVER_NAME": f"relay.{SENDER_DOMAIN}"})
    mx_hosts = sorted(set(RECIPIENTS.values())) + ["127.0.0.4"]
    mx_port = free_port_on_every([*mx_hosts, "127.0.0.9"])  # .9: where nothing listens

    def smtpplus(*args: str) -> str:
        return str(cli(*args, check=True).stdout)

    def smtpplus_json(*args: str) -> Any:
        return json.loads(smtpplus(*args, "--json"))

    def spawn(*args: str, ready: Path) -> None:
        processes.append(subprocess.Popen(
            [sys.executable, "-c", "from console.cli import main; main()", *args, "--ready-file", str(ready)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        wait_for(lambda: ready.exists() and json.loads(ready.read_text()), f"smtpplus {args[0]} ready")

    # The receiving side: a smarthost and three MX hosts, each a capture sink.
    sinks: dict[str, Path] = {}
    for host in ["127.0.0.1", *mx_hosts]:
        sinks[host] = tmp_path / f"sink-{host}.jsonl"
        port = "0" if host == "127.0.0.1" else str(mx_port)
        spawn("sink", "--host", host, "--port", port, "--record", str(sinks[host]), "--keep-data", "--quiet",
              ready=tmp_path / f"sink-{host}.ready")
    smarthost_port = json.loads((tmp_path / "sink-127.0.0.1.ready").read_text())["port"]

    # A relay delivering to a smarthost, as the five-minute walkthrough leaves it.
    spawn("relay", "--host", "127.0.0.1", "--ports", "0", "--next-hop", f"127.0.0.1:{smarthost_port}",
          "--mx-port", str(mx_port), ready=tmp_path / "relay.ready")
    smtpplus("status", "--wait", "30")
    assert smtpplus_json("queue", "next-hop")["next_hop"] == f"127.0.0.1:{smarthost_port}"

    # The sender domain: an identity the operator vouches for, a DKIM key, DNS records.
    smtpplus("lists", "add", "News")
    smtpplus("users", "add", "--list", "News", "--domains", SENDER_DOMAIN)
    smtpplus("senders", "approve", SENDER_DOMAIN, "--reason", "our own domain")
    record = smtpplus_json("dkim", "add", SENDER_DOMAIN, "--algorithm", "ed25519")
    assert record["name"].endswith(f"._domainkey.{SENDER_DOMAIN}") and record["value"].startswith("v=DKIM1; k=ed25519; p=")
    dns_server.set(record["name"], "TXT", record["value"])
    dns_server.set(SENDER_DOMAIN, "TXT", "v=spf1 ip4:192.0.2.25 -all")
    dns_server.set(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=reject")
    smtpplus("domains", "settings", "--public-address", "192.0.2.25", "--resolver", dns_server.address)
    report = smtpplus_json("domains", "check", SENDER_DOMAIN)
    assert report["ok"], report
    assert {f["check"]: f["status"] for f in report["findings"]} == {
        "verification": "verified", "dkim": "published", "spf": "pass", "dmarc": "present",
    }

    # The recipients' domains: a.test's best MX never takes a connection, so its mail
    # goes to the next one; b.test has one MX.
    dns_server.set("a.test", "MX", "10 mx1.a.test", "20 mx2.a.test")
    dns_server.set("mx1.a.test", "A", "127.0.0.9")  # nothing listens there: the next MX is tried
    dns_server.set("mx2.a.test", "A", "127.0.0.2")
    dns_server.mail_domain("b.test", "127.0.0.3")

    # Switch the running relay to MX delivery.
    switched = smtpplus_json("queue", "next-hop", "mx")
    assert switched["next_hop"] == "mx"
    wait_for(lambda: "MX" in smtpplus_json("queue", "status")["delivery"]["detail"], "the relay delivers to MX hosts")

    # A list with one-click unsubscribe, and a campaign to it.
    members = tmp_path / "members.csv"
    members.write_text("address\n" + "\n".join(RECIPIENTS) + "\n")
    smtpplus("lists", "members", "import", "News", str(members))
    smtpplus("lists", "unsubscribe", "News", "--url-template", f"https://{SENDER_DOMAIN}/u/{{token}}",
             "--mailto", f"unsubscribe@{SENDER_DOMAIN}")
    smtpplus("campaigns", "add", "--list", "News", "--subject", "November news", "--body", "Hello, reader.",
             "--from", f"news@{SENDER_DOMAIN}")

    arrived = wait_for(
        lambda: (got := [(host, r) for host in mx_hosts for r in records(sinks[host])]) and len(got) == 3 and got,
        "three campaign messages at the MX hosts",
    )
    assert records(sinks["127.0.0.1"]) == [], "nothing went to the smarthost after the switch"
    assert records(sinks["127.0.0.4"]) == []
    dnsfunc = dkimpy_dnsfunc(dns_server)
    tokens = []
    for host, rec in arrived:
        (rcpt,) = rec["rcpt_tos"]
        assert RECIPIENTS[rcpt] == host, (rcpt, host)
        data = rec["data"].encode()
        head = data.split(b"\r\n\r\n", 1)[0].decode()
        assert dkim.verify(data, dnsfunc=dnsfunc), head
        tags = re.search(r"(?ms)^DKIM-Signature:(.*?)\r\n(?=\S)", head + "\r\nX")
        assert tags, head
        h_tag = re.search(r"\bh=([^;]+)", re.sub(r"\s+", "", tags[1]))
        signed = set(h_tag[1].lower().split(":")) if h_tag else set()
        assert {"from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post"} <= signed
        assert re.search(rf"(?m)^DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d={SENDER_DOMAIN};", head)
        assert re.search(r"(?m)^Message-ID: <[^>]+@relay\.news\.example>\r?$", head)
        assert re.search(r"(?m)^Date: \w{3}, \d{1,2} \w{3} \d{4} ", head)
        assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in head
        url = re.search(rf"<https://{re.escape(SENDER_DOMAIN)}/u/([^>]+)>", head)
        assert url and f"<mailto:unsubscribe@{SENDER_DOMAIN}?subject=unsubscribe%20" in head
        tokens.append(url[1])
        # A strict receiver rejects a changed signed header: List-Unsubscribe is covered.
        forged = data.replace(url[1].encode(), b"9" + url[1].encode()[1:], 1)
        assert not dkim.verify(forged, dnsfunc=dnsfunc)

    destinations = {d["destination"]: d for d in smtpplus_json("queue", "destinations")}
    assert set(destinations) == {"a.test", "b.test"}
    assert all(d["last_reply"].startswith("250") for d in destinations.values()), destinations

    # The one-click token works from the CLI too (the metrics listener calls the same code).
    assert "unsubscribed" in smtpplus("unsubscribe", tokens[0])
