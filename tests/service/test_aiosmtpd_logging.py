"""What the relay's logging costs per message: aiosmtpd's per-command log lines are not
prepared when its logger drops them (the relay keeps it at WARNING)."""

from __future__ import annotations

import logging

import aiosmtpd.smtp
import pytest

import relay.smtp  # noqa: F401  (installs the check before aiosmtpd's per-command logging)


def test_aiosmtpds_command_lines_are_prepared_only_when_shown(caplog: pytest.LogCaptureFixture) -> None:
    mail_log = logging.getLogger("mail.log")
    seen: list[bytes] = []
    real_sanitize = aiosmtpd.smtp.sanitize

    def spy(text: bytes) -> bytes:
        seen.append(text)
        return real_sanitize(text)

    aiosmtpd.smtp.sanitize = spy
    level = mail_log.level
    try:
        mail_log.setLevel(logging.WARNING)  # the relay's setting (relay.logs)
        aiosmtpd.smtp.sanitized_log(mail_log.info, "%r >> %r", "peer", b"AUTH PLAIN c2VjcmV0\r\n")
        assert seen == []
        mail_log.setLevel(logging.DEBUG)  # someone wants them: shown, the secret hidden as aiosmtpd does
        with caplog.at_level(logging.DEBUG, logger="mail.log"):
            aiosmtpd.smtp.sanitized_log(mail_log.info, "%r >> %r", "peer", b"AUTH PLAIN c2VjcmV0\r\n")
        assert seen and "c2VjcmV0" not in caplog.text and "********" in caplog.text
    finally:
        aiosmtpd.smtp.sanitize = real_sanitize
        mail_log.setLevel(level)
