"""Pure pieces: the token bucket, retry backoff, next-hop backoff, the starvation
share, DSN building, campaign templates and times, sink chaos."""

from __future__ import annotations

import email
import random
from email.policy import default as default_policy

import pytest

from harness.sink import Chaos, ChaosError
from relay.bounce import FailedRecipient, bounce_message, build_dsn, status_code
from relay.campaigns import CampaignInputError, build_template, eml_sender, parse_when
from relay.scheduler import HopBackoff, StarvationShare, TokenBucket, decide_retry, retry_delay
from relay.store.campaigns import header_priority_of, personalize
from relay.store.queue import parse_next_hop


def test_token_bucket_allows_rate_times_time_and_follows_a_new_rate() -> None:
    bucket = TokenBucket(100, now=0.0)
    assert bucket.available(0.0) == 0
    started = 0
    for step in range(1, 101):  # one second in 10 ms steps
        n = bucket.available(step / 100)
        bucket.take(n, step / 100)
        started += n
    assert 99 <= started <= 100
    bucket.set_rate(0, 1.0)
    assert bucket.available(1.0) > 10**6  # unlimited
    bucket.set_rate(10, 1.0)
    assert bucket.wait_for_one(1.0) == pytest.approx(0.1)
    assert bucket.available(1.5) == 1  # burst stays small (at least one message)


def test_retry_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    delays = [retry_delay(n, 10, 100, rng) for n in range(1, 7)]
    for n, d in enumerate(delays[:4], start=1):
        assert 0.8 * 10 * 2 ** (n - 1) <= d <= 1.2 * 10 * 2 ** (n - 1)
    assert all(d <= 100 for d in delays)
    retry = decide_retry(attempts=1, created_at=0, now=10, base=60, maximum=600, lifetime=30, rng=rng)
    assert not retry.final and retry.next_attempt_at == 30  # pulled in to the end of the lifetime
    assert decide_retry(attempts=3, created_at=0, now=30, base=60, maximum=600, lifetime=30).final


def test_next_hop_backoff_allows_one_probe_per_interval() -> None:
    hop = HopBackoff(1.0, 8.0)
    assert hop.allowed(0, in_flight=3) > 100
    retry_at = hop.failed(0, "refused", random.Random(0))
    assert hop.down and 0.8 <= retry_at <= 1.2
    assert hop.allowed(0.5, 0) == 0 and hop.allowed(retry_at, 1) == 0 and hop.allowed(retry_at, 0) == 1
    second = hop.failed(retry_at, "refused", random.Random(0))
    assert second - retry_at > 1.5
    assert hop.succeeded() is True and not hop.down and hop.succeeded() is False


def test_starvation_share_reserves_every_nth_dispatch() -> None:
    strict = StarvationShare(0.0)
    assert not any(strict.due(1) for _ in range(100))
    share = StarvationShare()
    share.set_share(0.1)
    assert sum(share.due(1) for _ in range(100)) == 10


def test_dsn_is_an_rfc3464_report_with_the_original_headers() -> None:
    original = b"From: a@example.com\r\nSubject: Quarterly\r\nMessage-ID: <q@example.com>\r\n\r\nsecret body\r\n"
    data = build_dsn(
        original=original, original_sender="a@example.com",
        failed=[FailedRecipient("x@example.net", "550 5.1.1 <x@example.net>: no such user")],
        queue_id="ABC123", arrival=1_700_000_000, reporting_mta="relay.test", next_hop="mx.example:25",
    )
    report = email.message_from_bytes(data, policy=default_policy)
    assert report["To"].addresses[0].addr_spec == "a@example.com" and report["Auto-Submitted"] == "auto-replied"
    assert report.get_content_type() == "multipart/report" and report.get_param("report-type") == "delivery-status"
    text, status, headers = report.iter_parts()
    assert "x@example.net" in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    raw = data.decode()
    for line in ("Reporting-MTA: dns; relay.test", "Final-Recipient: rfc822; x@example.net", "Action: failed",
                 "Status: 5.1.1", "Remote-MTA: dns; mx.example", "Diagnostic-Code: smtp; 550 5.1.1"):
        assert line in raw
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: Quarterly" in raw and "secret body" not in raw and "mx.example:25" not in raw
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_bounce_is_system_mail_with_an_empty_sender_and_never_for_an_empty_sender() -> None:
    kwargs = dict(original=b"Subject: s\r\n\r\nb\r\n", failed=[FailedRecipient("x@example.net", "550 no")],
                  queue_id="Q", arrival=0.0, reporting_mta="relay.test", next_hop=None)
    bounce = bounce_message(original_sender="a@example.com", **kwargs)  # type: ignore[arg-type]
    assert (bounce.mail_from, bounce.recipients, bounce.origin) == ("", ["a@example.com"], "system")
    with pytest.raises(ValueError):
        bounce_message(original_sender="", **kwargs)  # type: ignore[arg-type]
    assert status_code("451 4.7.1 greylisted") == "4.7.1"
    assert status_code("554 go away") == "5.0.0" and status_code("421 later") == "4.0.0"


def test_campaign_template_from_text_and_from_an_eml_file() -> None:
    template, subject, sender = build_template(subject="Hi", mail_from="news@example.com", body="Hällo")
    assert subject == "Hi" and sender == "news@example.com"
    assert b"To:" not in template and b"Message-ID" not in template and b"\r\n\r\n" in template
    eml = b"From: Boss <boss@example.com>\nTo: someone@example.org\nMessage-ID: <x@y>\nX-Priority: 2\nSubject: Old\n\nBody\n"
    assert eml_sender(eml) == "boss@example.com"
    data, subject, _ = build_template(subject="New", mail_from="", eml=eml)
    assert subject == "New" and b"someone@example.org" not in data and b"<x@y>" not in data
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    assert header_priority_of(data) == 2
    personal = personalize(data, "m@example.org", "Mia", "QID", "relay.test")
    assert personal.startswith(b"To: Mia <m@example.org>\r\nMessage-ID: <QID@relay.test>\r\n")
    with pytest.raises(CampaignInputError):
        build_template(subject="x", mail_from="a@b.c")


def test_campaign_times() -> None:
    assert parse_when(None) is None and parse_when("now") is None
    assert parse_when("+30m", now=1000.0) == 2800.0 and parse_when("+2h", now=0.0) == 7200.0
    assert parse_when("2030-01-02T03:04:05+00:00") == 1893553445.0
    with pytest.raises(CampaignInputError, match="not a time"):
        parse_when("tomorrow-ish")


def test_next_hop_parsing() -> None:
    assert parse_next_hop("127.0.0.1:8025") == ("127.0.0.1", 8025)
    assert parse_next_hop(" [::1]:25 ") == ("::1", 25)


def test_sink_chaos_settings() -> None:
    chaos = Chaos.parse(["4xx=0.25", "5xx-match=*@bad.example", "4xx-first=2", "seed=7"])
    assert (chaos.temp_rate, chaos.perm_match, chaos.temp_first, chaos.seed) == (0.25, "*@bad.example", 2, 7)
    assert Chaos.from_mapping({"perm_rate": 0.5}).perm_rate == 0.5
    for bad in (["4xx"], ["4xx=2"], ["colour=red"], ["4xx-reply=250 ok"]):
        with pytest.raises(ChaosError):
            Chaos.parse(bad)
