"""``smtpplus harness bench dkim``: CPU time of one DKIM signature, per key type.

What the delivery engine does for each signed message (:meth:`relay.dkim.DkimSigner.sign_now`:
the 7-bit conversion check, dkimpy's relaxed canonicalization, SHA-256 and the key
operation with ``cryptography``) over a typical 10 KB message (multipart/alternative:
a text part and an HTML part, quoted-printable), measured as process CPU time on one
thread over N signatures. Targets: ≤ 1 ms Ed25519, ≤ 2 ms RSA-2048. dkimpy's own
signing (pure-Python RSA) is measured too, as the reference the design avoids. Every
kind of signature is verified once by dkimpy before the clock starts.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from harness.bench.report import BenchError, BenchReport, Run
from relay import dkim as rules

DOMAIN = "bench.example"
SELECTOR = "bench"
TARGET_MS = {rules.ED25519: 1.0, rules.RSA_2048: 2.0}


def typical_message(size: int = 10_000) -> bytes:
    """A multipart/alternative newsletter-like message of about ``size`` bytes."""
    head = (
        "Received: from client.example ([192.0.2.10]) by relay.bench.example with ESMTPSA id 4XyZ; "
        "Mon, 30 Nov 2026 16:00:00 +0000\r\n"
        f"From: News <news@{DOMAIN}>\r\nTo: reader@example.com\r\nSubject: This month's news\r\n"
        f"Date: Mon, 30 Nov 2026 16:00:00 +0000\r\nMessage-ID: <20261130160000.4XyZ@{DOMAIN}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n"
        f"List-Unsubscribe: <mailto:unsubscribe@{DOMAIN}>, <https://{DOMAIN}/u/abc>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
    )
    line = "Our news this month: new features, a few fixes and the dates of the next meetings.=\r\n"
    html = "<p>Our news this month: <b>new features</b>, a few fixes and the dates of the next meetings.</p>\r\n"
    half = max(1, (size - len(head)) // 2)
    text_part = (line * (half // len(line) + 1))[:half].rsplit("\r\n", 1)[0] + "\r\n"
    html_part = (html * (half // len(html) + 1))[:half].rsplit("\r\n", 1)[0] + "\r\n"
    body = (
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        f"{text_part}--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        f"{html_part}--b1--\r\n"
    )
    return (head + body).encode("ascii")


def _verify(signed: bytes, pair: rules.KeyPair) -> bool:
    import dkim

    record = rules.txt_value(pair.algorithm, pair.public).encode()
    try:
        return bool(dkim.DKIM(signed).verify(dnsfunc=lambda name, timeout=5: record))
    except dkim.DKIMException:
        return False


def _cpu_per_call(call: Callable[[], object], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - started) / count


def run_dkim(signatures: int = 2000, size: int = 10_000, reference: int = 20) -> BenchReport:
    report = BenchReport(
        "dkim", params={"signatures": signatures, "size": size, "reference_signatures": reference},
        title="DKIM signing CPU per message (relaxed/relaxed, SHA-256)",
    )
    message = typical_message(size)
    for algorithm in (rules.ED25519, rules.RSA_2048):
        pair = rules.generate(algorithm)
        signer = rules.DkimSigner(_no_keys)
        stored = rules.StoredKey(DOMAIN, SELECTOR, algorithm, pair.private_pem)
        first = signer.sign_now(message, stored)
        if not first.signed or not _verify(first.data, pair):
            raise BenchError(f"{algorithm}: the signature did not verify with dkimpy — signing is broken")
        seconds = _cpu_per_call(functools.partial(signer.sign_now, message, stored), signatures)
        report.add(Run(f"smtpplus {algorithm}", {"signatures": signatures, "cpu_ms": round(seconds * 1000, 3)}))
        report.figure(
            f"{algorithm} CPU per signature", round(seconds * 1000, 3), "ms", at_most=TARGET_MS[algorithm],
            about=f"7-bit check, canonicalization, hashes and the {algorithm} operation for one {len(message):,}-byte message",
        )
    if reference:
        import dkim

        pair = rules.generate(rules.RSA_2048)
        pem = pair.private_pem.encode()
        seconds = _cpu_per_call(
            lambda: dkim.sign(message, SELECTOR.encode(), DOMAIN.encode(), pem, canonicalize=(b"relaxed", b"relaxed")),
            reference,
        )
        report.add(Run("dkimpy rsa-2048 (pure Python RSA, reference)", {"signatures": reference, "cpu_ms": round(seconds * 1000, 3)}))
    report.notes.append("CPU time of this process on one thread (time.process_time), key loading excluded (cached per key)")
    return report


async def _no_keys() -> list[rules.StoredKey]:
    return []
