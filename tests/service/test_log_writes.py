"""What the relay's logging costs per message: a group commit's event lines leave in one
write, and aiosmtpd's per-command log lines are not prepared when they are dropped."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosmtpd.smtp
import pytest

import relay.smtp  # noqa: F401  (installs the check before aiosmtpd's per-command logging)
from relay.logs import configure_logging, log_events
from relay.reasons import EventKind, Reason
from relay.store.events import NewEvent


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    root = logging.getLogger()
    before = list(root.handlers), root.level
    path = tmp_path / "relay.log"
    handler = configure_logging("text", path)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        for old in before[0]:
            if old not in root.handlers:
                root.addHandler(old)
        root.setLevel(before[1])


class CountingStream:
    """The handler's stream, counting what is written to it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return int(self.stream.write(text))

    def flush(self) -> None:
        self.stream.flush()


def test_a_group_commits_event_lines_are_one_write_and_other_lines_are_kept(log_file: Path) -> None:
    [handler] = [h for h in logging.getLogger().handlers if getattr(h, "baseFilename", None) == str(log_file)]
    counting = CountingStream(handler.stream)  # type: ignore[attr-defined]
    handler.stream = counting  # type: ignore[attr-defined]
    events = [
        NewEvent(EventKind.QUEUED, Reason.ACCEPTED, queue_id=f"Q{n}", username="alice", detail=f"message {n}") for n in range(5)
    ]
    # A line from elsewhere while the event lines are held (another thread, say) is
    # written with them, not lost.
    other = logging.getLogger("smtpplus.relay")
    events_iter = iter(events)

    def with_interruption() -> Iterator[NewEvent]:
        yield next(events_iter)
        other.warning("a line from elsewhere")
        yield from events_iter

    log_events(with_interruption())
    text = log_file.read_text(encoding="utf-8")
    assert re.findall(r"accepted: (message \d)", text) == [f"message {n}" for n in range(5)]
    assert "a line from elsewhere" in text
    assert len(counting.writes) == 1
    # Outside a group commit a line is written at once, as before.
    other.warning("alone")
    assert len(counting.writes) == 2 and "alone" in log_file.read_text(encoding="utf-8")


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
