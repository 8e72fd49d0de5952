"""The relay's logging: the one place it is configured, as text or JSON lines.

Every line passes :func:`relay.display.clean` on its way out — the message and every
field given with ``extra=`` — so a client's ESC, CR or bidi control never reaches a
terminal or a log pipeline raw, whichever logger wrote it (ours, aiosmtpd's, asyncio's).

Public API
----------
``configure_logging(log_format="text", log_file=None, level=logging.INFO) -> logging.Handler``
    Installs the one handler on the root logger: stderr by default (journald adds its
    own time stamps, and ``journalctl -o cat`` shows the JSON as it was written), or
    ``log_file`` (appended to, reopened by :func:`reopen`). ``smtpplus`` loggers log at
    ``level``; everything else (aiosmtpd's chatty ``mail.log``) at WARNING.
``set_level(name)``
    The level of the ``smtpplus`` loggers (``debug``, ``info``, ``warning``, ``error``):
    the ``log_level`` setting, applied at start and again on SIGHUP.
``reopen()``
    Reopen the log file (SIGHUP, after logrotate moved it). Nothing to do on stderr.
``log_events(events)``
    One line per event the relay wrote to the store, on the ``smtpplus.events`` logger,
    with the event's fields as ``extra=`` (kind, reason, queue_id, user, client, port).
    :class:`relay.service.RelayService` calls it (via ``observers``) after each commit.
``JsonFormatter``, ``TextFormatter``
    A JSON object per line: ``time`` (UTC, ISO 8601, milliseconds), ``level``,
    ``logger``, ``message``, then the fields (``exception`` with a traceback). Text:
    ``time LEVEL message key=value …``.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from relay.config import LOG_FORMATS
from relay.display import clean
from relay.reasons import EventKind, Reason
from relay.store.events import NewEvent

EVENT_FIELDS = ("kind", "reason", "queue_id", "user", "client", "port")
events_log = logging.getLogger("smtpplus.events")

# What every LogRecord has: anything else on a record came in through ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_FIELD_LIMIT = 2000
_EVENT_FIELD_SET = frozenset(EVENT_FIELDS)


def configure_logging(log_format: str = "text", log_file: Path | None = None, level: int = logging.INFO) -> logging.Handler:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: use text or json")
    handler: logging.Handler = ReopeningFileHandler(log_file) if log_file is not None else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, ReopeningFileHandler) or getattr(old, "_smtpplus", False):
            root.removeHandler(old)
            old.close()
    handler._smtpplus = True  # type: ignore[attr-defined]  # ours: replaced by the next call
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("smtpplus").setLevel(level)
    # aiosmtpd logs every command at INFO on "mail.log": far too chatty for a relay.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    return handler


def level_number(name: str) -> int:
    """``"info"`` → ``logging.INFO`` (a ``log_level`` setting, already checked)."""
    number = logging.getLevelName(name.upper())
    if not isinstance(number, int):
        raise ValueError(f"log level {name!r}: use debug, info, warning or error")
    return number


def set_level(name: str) -> None:
    logging.getLogger("smtpplus").setLevel(level_number(name))


def reopen() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ReopeningFileHandler):
            handler.reopen()


class ReopeningFileHandler(logging.FileHandler):
    """Appends to a file; :meth:`reopen` starts a new one at the same path (logrotate
    renamed the old one: lines written until the reopen land in the renamed file)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="a", encoding="utf-8")

    def reopen(self) -> None:
        """A new file at the path; when it cannot be opened (a full disk, a removed
        directory), the old one stays in use and the reason is logged there."""
        try:
            fresh = self._open()
        except OSError as exc:
            logging.getLogger("smtpplus.relay").warning("cannot reopen the log file %s: %s", self.baseFilename, exc)
            return
        self.acquire()
        try:
            old, self.stream = self.stream, fresh
        finally:
            self.release()
        if old is not None:
            old.close()


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record, each string cleaned (numbers stay numbers):
    the event fields first, in :data:`EVENT_FIELDS` order, then any others by name."""
    attributes = record.__dict__
    ready = attributes.get("_smtpplus_fields")
    if ready is not None:  # an event's line (log_events): its fields, cleaned and in order
        return dict(ready)
    # The set difference runs in C: a record has ~25 standard attributes and a line is
    # written per accepted message, so walking them in Python showed in the accept bench.
    keys = attributes.keys() - _STANDARD
    if not keys:
        return {}
    out: dict[str, Any] = {}
    for key in EVENT_FIELDS:
        if key in keys:
            _add(out, key, attributes[key])
    others = keys - _EVENT_FIELD_SET
    for key in sorted(others) if others else ():
        if not key.startswith("_"):  # "_…": our own marks
            _add(out, key, attributes[key])
    return out


def _add(out: dict[str, Any], key: str, value: object) -> None:
    if value is not None:
        out[key] = value if isinstance(value, bool | int | float) else clean(value, _FIELD_LIMIT)


_last_second: tuple[int, str] = (-1, "")


def _time(record: logging.LogRecord) -> str:
    # One strftime per second, not per line.
    global _last_second
    second = int(record.created)
    if second != _last_second[0]:
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_last_second[1]}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": clean(record.getMessage()),
        }
        line.update(fields(record))
        if record.exc_info:
            line["exception"] = clean(self.formatException(record.exc_info), keep_newlines=True)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{_time(record)} {record.levelname} {clean(record.getMessage())}"
        extra = fields(record)
        if extra:
            text += " " + " ".join(f"{key}={value}" for key, value in extra.items())
        if record.exc_info:
            text += "\n" + clean(self.formatException(record.exc_info), keep_newlines=True)
        return text


def log_events(events: Iterable[NewEvent]) -> None:
    # What ``events_log.log`` does, less its stack walk for the caller (the same frame
    # every time, looked up once): a line is written per accepted message. The message
    # is escaped here, once (the escaping filter sees the mark and leaves it).
    for event in events:
        level = _level(event)
        if not events_log.isEnabledFor(level):
            continue
        if event.detail:
            message = clean(f"{event.kind} {event.reason}: {event.detail}")
        else:
            message = clean(f"{event.kind} {event.reason}")
        kind, reason = str(event.kind), str(event.reason)
        shown: dict[str, Any] = {"kind": kind, "reason": reason}
        for key, value in (("queue_id", event.queue_id), ("user", event.username), ("client", event.client), ("port", event.port)):
            if value is not None:
                shown[key] = value if isinstance(value, bool | int | float) else clean(value, _FIELD_LIMIT)
        extra = {
            "kind": kind,
            "reason": reason,
            "queue_id": event.queue_id,
            "user": event.username,
            "client": event.client,
            "port": event.port,
            "_smtpplus_escaped": True,
            "_smtpplus_fields": shown,
        }
        path, line, function = _caller()
        events_log.handle(events_log.makeRecord(events_log.name, level, path, line, message, (), None, function, extra))


@functools.cache
def _caller() -> tuple[str, int, str]:
    path, line, function, _ = events_log.findCaller(stacklevel=2)
    return path, line, function


_ERROR_REASONS = frozenset({Reason.INTERNAL_ERROR, Reason.CONFIG_RELOAD_FAILED, Reason.TLS_RELOAD_FAILED})
_WARNING_KINDS = frozenset({EventKind.FAILED})
_WARNING_REASONS = frozenset({Reason.STORE_FULL, Reason.STORE_UNAVAILABLE, Reason.NEXT_HOP_DOWN, Reason.TLS_REGENERATED})


def _level(event: NewEvent) -> int:
    if event.reason in _ERROR_REASONS:
        return logging.ERROR
    if event.kind in _WARNING_KINDS or event.reason in _WARNING_REASONS:
        return logging.WARNING
    return logging.INFO
