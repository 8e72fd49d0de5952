"""Prometheus metrics and a health check, served over HTTP by the relay process.

``--metrics-listen HOST:PORT`` (config ``metrics_listen``) serves

- ``GET /metrics``: the Prometheus text format (``prometheus_client``'s exposition);
- ``GET /healthz``: ``200 ok`` when this relay holds its lease, its last heartbeat was
  written recently, the store answers a read and delivery is not stuck (stuck: not
  paused, a message ready to send for ``stuck_after`` seconds and no delivery attempt
  finished in that time); ``503`` and the reason otherwise;
- with ``unsubscribe_endpoint`` on, ``POST /unsubscribe/TOKEN``: the RFC 8058 one-click
  unsubscribe (:func:`relay.admin.unsubscribe.unsubscribe`, as ``smtpplus unsubscribe``):
  ``200`` done, ``400`` a bad token. A ``GET`` never unsubscribes (mail scanners fetch
  links): it answers a small page whose button sends the POST. Operators put it behind
  their HTTPS reverse proxy (docs/production.md).

The server is a small asyncio HTTP/1.1 server in the relay's own event loop rather than
prometheus-client's threaded one: the health check and the queue gauges read the relay's
state and the store the way the relay does (``AsyncStore``), a stalled event loop shows
as a failed scrape (the same signal as the systemd watchdog), and no second thread
touches the relay's objects.

The session and delivery counters are fed from the one place events and outcomes are
told after their commit (:attr:`relay.service.RelayService.observers`,
``outcome_observers``), the next-hop reply classes from the hop connections
(``reply_observers``), the commit histograms from the store writer. ``smtpplus_events_total``
is read from the store at each scrape — the events with an id above the newest one when
the relay started — so it counts every event written since, by this relay, the CLI or a
console (:func:`relay.store.events.count_events_after`). The queue gauges read the
maintained counts (:mod:`relay.store.counts`), never a count of the queue.

Label values come from closed sets (event kinds, reason codes, delivery outcomes,
destination classes, reply classes and commands, priorities 1–5, port kinds); anything
else is counted as ``other``.

Public API
----------
``parse_listen(value) -> (host, port)``: ``HOST:PORT``, ``[v6]:PORT`` or ``PORT``
(127.0.0.1); raises ``ValueError`` with the fix.
``RelayMetrics(service)``: hooks the service's observers (call before ``start()``);
``registry`` holds the metrics; ``METRICS`` names every metric and its labels.
``MetricsServer(service, metrics, host, port)``: ``await open()`` (its store connection
and where event counting starts: call before the service starts, so the relay's own
start is counted), ``await start() -> (host, port)`` (opens first if needed),
``await close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from relay.delivery.hop import REPLY_CLASSES, REPLY_COMMANDS
from relay.reasons import EventKind, Reason
from relay.store import AsyncStore
from relay.store.counts import ready_since
from relay.store.events import NewEvent, count_events_after, last_event_id
from relay.store.lease import relay_status
from relay.store.settings import Keys, get_setting
from relay.store.views import PRIORITIES, Lane, priority_lanes

log = logging.getLogger("smtpplus.relay")
# The *_created series (a time stamp per label set) double the exposition for nothing
# a relay dashboard needs; process-wide, and the relay process is ours.
disable_created_metrics()

KINDS = frozenset(str(k) for k in EventKind)
REASONS = frozenset(str(r) for r in Reason)
OUTCOMES = frozenset({"sent", "deferred", "failed"})
# Where an attempt went (relay.store.queue.Outcome.destination_class).
DESTINATION_CLASSES = frozenset({"smarthost", "mx", "route", "mixed", "none"})
QUEUE_STATES = ("queued", "deferred", "sending", "held")
EVENTS_PER_SCRAPE = 200_000  # event ids counted per scrape at most: a late start catches up over a few
STORE_TIMEOUT = 5.0  # a health check or scrape waits this long for the store
REQUEST_LIMIT = 8192  # bytes of request line and headers
BODY_LIMIT = 4096  # a one-click POST's body ("List-Unsubscribe=One-Click"), read and ignored
UNSUBSCRIBE_PREFIX = "/unsubscribe/"
# What a person who opens the https link in a browser sees: the button sends the one-click
# POST to the same address (no action attribute: the page's own URL, whatever the proxy's path).
UNSUBSCRIBE_PAGE = (
    b"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Unsubscribe</title></head><body>\n"
    b"<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\n"
    b"<p>Stop receiving this list's mail?</p><button type=\"submit\">Unsubscribe</button></form>\n</body></html>\n"
)
REQUEST_TIMEOUT = 10.0
# Seconds from accept to delivered: a local next hop answers in milliseconds, a queue
# that waited for a retry in minutes or hours.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def parse_listen(value: str) -> tuple[str, int]:
    """``127.0.0.1:9325``, ``[::1]:9325``, ``0.0.0.0:9325`` or ``9325`` (loopback)."""
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"metrics_listen {value!r}: write an IPv6 address in brackets, e.g. [::1]:9325")
    if not host:
        host = "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics_listen {value!r} is not HOST:PORT or PORT — e.g. 127.0.0.1:9325")
    return host, int(port)


def _bounded(value: object, allowed: frozenset[str]) -> str:
    text = str(value)
    return text if text in allowed else "other"


# Every metric the relay serves: name (a counter's with ``_total``, a histogram's without
# its ``_bucket``/``_sum``/``_count`` series), type and labels. docs/production.md lists
# the same (a test checks).
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "smtpplus_events_total": ("counter", ("kind", "reason")),
    "smtpplus_auth_total": ("counter", ("result", "reason")),
    "smtpplus_messages_accepted_total": ("counter", ()),
    "smtpplus_refused_total": ("counter", ("reason",)),
    "smtpplus_deliveries_total": ("counter", ("outcome", "reason", "destination_class")),
    "smtpplus_next_hop_replies_total": ("counter", ("command", "class")),
    "smtpplus_delivery_latency_seconds": ("histogram", ()),
    "smtpplus_store_commit_seconds": ("histogram", ()),
    "smtpplus_store_commit_messages": ("histogram", ()),
    "smtpplus_sessions_open": ("gauge", ()),
    "smtpplus_ports_served": ("gauge", ("tls",)),
    "smtpplus_ports_not_served": ("gauge", ()),
    "smtpplus_lease_held": ("gauge", ()),
    "smtpplus_queue_messages": ("gauge", ("priority", "state")),
    "smtpplus_queue_oldest_wait_seconds": ("gauge", ("priority",)),
}
# Every label's closed set of values ("other" stands for anything outside it).
LABEL_VALUES: dict[str, frozenset[str]] = {
    "kind": KINDS | {"other"},
    "reason": REASONS | {"other"},
    "result": frozenset({"success", "failure"}),
    "outcome": OUTCOMES | {"other"},
    "destination_class": DESTINATION_CLASSES | {"other"},
    "command": frozenset(REPLY_COMMANDS) | {"other"},
    "class": frozenset(REPLY_CLASSES) | {"other"},
    "tls": frozenset({"starttls", "implicit"}),
    "priority": frozenset(str(p) for p in PRIORITIES),
    "state": frozenset(QUEUE_STATES),
    "le": frozenset(),  # a histogram's bucket bounds: fixed in this module
}


class RelayMetrics:
    def __init__(self, service: Any) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.auth = Counter(
            "smtpplus_auth", "AUTH attempts by result (success, failure) and reason code.", ["result", "reason"],
            registry=self.registry,
        )
        self.accepted = Counter("smtpplus_messages_accepted", "Messages accepted (250 after DATA).", registry=self.registry)
        self.refused = Counter(
            "smtpplus_refused", "Refusals during SMTP sessions, by reason code.", ["reason"], registry=self.registry
        )
        self.deliveries = Counter(
            "smtpplus_deliveries",
            "Delivery attempts by outcome (sent, deferred, failed), reason code and destination class "
            "(smarthost, mx, route, mixed, none).",
            ["outcome", "reason", "destination_class"], registry=self.registry,
        )
        self.replies = Counter(
            "smtpplus_next_hop_replies",
            "Replies next hops gave, by command and class (2xx-5xx; connection: none came).",
            ["command", "class"], registry=self.registry,
        )
        self.latency = Histogram(
            "smtpplus_delivery_latency_seconds", "From accept to delivered at the next hop.",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "smtpplus_store_commit_seconds", "Duration of one group commit of the store writer.",
            buckets=COMMIT_BUCKETS, registry=self.registry,
        )
        self.commit_messages = Histogram(
            "smtpplus_store_commit_messages", "Messages in one group commit (the group size).",
            buckets=GROUP_BUCKETS, registry=self.registry,
        )
        self.lanes: list[Lane] = []
        # smtpplus_events_total: counts per (kind, reason) of the events read from the
        # store, and the last event id read (None until MetricsServer.open sets the start).
        self.event_counts: dict[tuple[str, str], int] = {}
        self.events_after: int | None = None
        self._reading = asyncio.Lock()  # two scrapes at once must not count one range twice
        # When the last delivery attempt finished (any outcome); the start counts as one.
        self.last_attempt_at = time.time()
        self.registry.register(_LiveCollector(self))
        service.observers.append(self.observe_events)
        service.outcome_observers.append(self.observe_outcomes)
        service.commit_observers.append(self.observe_commit)
        if isinstance(getattr(service, "reply_observers", None), list):
            service.reply_observers.append(self.observe_reply)

    def observe_events(self, events: Sequence[NewEvent]) -> None:
        for event in events:
            kind, reason = _bounded(event.kind, KINDS), _bounded(event.reason, REASONS)
            if kind == EventKind.AUTH:
                self.auth.labels("success" if reason == Reason.AUTH_OK else "failure", reason).inc()
            elif kind == EventKind.REFUSED:
                self.refused.labels(reason).inc()
            elif kind == EventKind.QUEUED and reason == Reason.ACCEPTED:
                self.accepted.inc()

    def observe_outcomes(self, outcomes: Sequence[Any]) -> None:
        now = time.time()
        if outcomes:
            self.last_attempt_at = now
        for outcome in outcomes:
            self.deliveries.labels(
                _bounded(outcome.state, OUTCOMES), _bounded(outcome.reason, REASONS),
                _bounded(getattr(outcome, "destination_class", "none"), DESTINATION_CLASSES),
            ).inc()
            if outcome.state == "sent":
                self.latency.observe(max(0.0, now - outcome.message.created_at))

    def observe_reply(self, command: str, reply_class: str) -> None:
        self.replies.labels(_bounded(command, LABEL_VALUES["command"]), _bounded(reply_class, LABEL_VALUES["class"])).inc()

    def observe_commit(self, seconds: float, messages: int) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_messages.observe(messages)

    async def begin(self, store: AsyncStore) -> None:
        """Start counting events after the newest one in the store now."""
        if self.events_after is None:
            self.events_after = await asyncio.wait_for(store.run(last_event_id), STORE_TIMEOUT)

    async def refresh(self, store: AsyncStore) -> None:
        """Read what the scrape shows from the store: the queue lanes (the maintained
        counts and two index seeks per priority) and the events written since the last
        scrape (an id range of the events table)."""
        self.lanes = await asyncio.wait_for(store.run(priority_lanes), STORE_TIMEOUT)
        async with self._reading:
            if self.events_after is None:
                return
            # A read given up on (timeout) leaves events_after as it was: the next scrape
            # reads the same range again, nothing is lost or counted twice.
            counts, self.events_after = await asyncio.wait_for(
                store.run(count_events_after, self.events_after, EVENTS_PER_SCRAPE), STORE_TIMEOUT
            )
        for (kind, reason), n in counts.items():
            key = (_bounded(kind, KINDS), _bounded(reason, REASONS))
            self.event_counts[key] = self.event_counts.get(key, 0) + n

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    """Read at scrape time: the events read from the store, sessions, ports, lease, the queue."""

    def __init__(self, metrics: RelayMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # collected only at scrape time: never read at registration

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        service = self.metrics.service
        context = service.context
        events = CounterMetricFamily(
            "smtpplus_events",
            "Events written to the store since this relay started (by it, the CLI or a console), by kind and reason code.",
            labels=["kind", "reason"],
        )
        for (kind, reason), n in sorted(self.metrics.event_counts.items()):
            events.add_metric([kind, reason], n)
        yield events
        sessions = len(context.tracker.sessions) if context is not None else 0
        yield GaugeMetricFamily("smtpplus_sessions_open", "SMTP sessions open now (implicit-TLS connections from their accept, before the handshake).", value=sessions)
        implicit = len(service.implicit_tls)
        ports = GaugeMetricFamily(
            "smtpplus_ports_served", "Ports this relay listens on, by TLS kind (starttls, implicit).", labels=["tls"]
        )
        ports.add_metric(["starttls"], len(service.served) - implicit)
        ports.add_metric(["implicit"], implicit)
        yield ports
        yield GaugeMetricFamily("smtpplus_ports_not_served", "Ports of the spec that could not be bound.", value=len(service.not_served))
        yield GaugeMetricFamily("smtpplus_lease_held", "1 while this relay holds the store's lease.", value=1 if service.running and service.leased else 0)
        depth = GaugeMetricFamily("smtpplus_queue_messages", "Messages in the queue by priority and state.", labels=["priority", "state"])
        oldest = GaugeMetricFamily(
            "smtpplus_queue_oldest_wait_seconds", "Age of the oldest waiting (queued or deferred) message, by priority.",
            labels=["priority"],
        )
        now = time.time()
        by_priority = {lane.priority: lane for lane in self.metrics.lanes}
        for priority in PRIORITIES:
            lane = by_priority.get(priority, Lane(priority))
            for state in QUEUE_STATES:
                depth.add_metric([str(priority), state], getattr(lane, state))
            oldest.add_metric([str(priority)], lane.oldest_wait(now) or 0.0)
        yield depth
        yield oldest


async def health(service: Any, store: AsyncStore, last_attempt_at: float | None = None) -> str | None:
    """None when healthy, else the reason (one line)."""
    if not service.running:
        return "the relay is not running (starting or stopping)"
    if not service.leased:
        return "this relay lost the store's lease to another relay"
    stale = max(3 * service.config.heartbeat_interval, 2.0)
    age = time.monotonic() - (service.heartbeat_at or 0.0)
    if age > stale:
        why = service.heartbeat_error or "the store did not answer"
        return f"no heartbeat written for {age:.0f} s: {why}"
    try:
        status = await asyncio.wait_for(store.run(relay_status, service.config.stale_after), STORE_TIMEOUT)
    except TimeoutError:
        return f"the store did not answer a read within {STORE_TIMEOUT:g} s"
    except Exception as exc:
        return f"the store cannot be read: {exc}"
    if status.owner != service.owner:
        return "the store's lease names another relay"
    try:
        return await delivery_stuck(service, store, last_attempt_at)
    except TimeoutError:
        return f"the store did not answer a read within {STORE_TIMEOUT:g} s"
    except Exception as exc:
        return f"the store cannot be read: {exc}"


async def delivery_stuck(service: Any, store: AsyncStore, last_attempt_at: float | None) -> str | None:
    """Why delivery is stuck — not paused, a message ready for ``stuck_after`` seconds and
    no attempt finished in that time — or None. ``stuck_after`` 0 turns the check off."""
    after = float(getattr(service.config, "stuck_after", 0) or 0)
    now = time.time()
    if last_attempt_at is None or after <= 0 or now - last_attempt_at < after:
        return None  # an attempt finished recently: delivery moves (the store is not read)
    paused, since = await asyncio.wait_for(store.run(_ready_facts, now), STORE_TIMEOUT)
    if paused or since is None or now - since < after:
        return None
    return (
        f"delivery stuck: a message has been ready to send for {now - since:.0f} s and no delivery attempt "
        f"finished for {now - last_attempt_at:.0f} s — check the next hop (`smtpplus status`) and the log"
    )


def _ready_facts(db: Any, now: float) -> tuple[bool, float | None]:
    return bool(get_setting(db, Keys.PAUSED, False)), ready_since(db, now)


class MetricsServer:
    def __init__(self, service: Any, metrics: RelayMetrics, host: str, port: int) -> None:
        self.service = service
        self.metrics = metrics
        self.host = host
        self.port = port
        self.scrapes = 0
        self._server: asyncio.Server | None = None
        self._store: AsyncStore | None = None

    async def open(self) -> None:
        """Its own store connection (a scrape never waits behind the relay's writes), and
        where ``smtpplus_events_total`` starts counting."""
        if self._store is not None:
            return
        store = await AsyncStore(self.service.store_path).open()
        try:
            await self.metrics.begin(store)
        except BaseException:
            await store.close()
            raise
        self._store = store

    async def start(self) -> tuple[str, int]:
        await self.open()
        assert self._store is not None
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=REQUEST_LIMIT)
        except OSError:
            await self._store.close()
            self._store = None
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        return self.host, self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT)
            status, content_type, body = await self._respond(method, path)
        except (TimeoutError, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            status, content_type, body = "400 Bad Request", "text/plain; charset=utf-8", b"bad request\n"
        except ConnectionError:
            writer.close()
            return
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode("ascii") + (b"" if method == "HEAD" else body))
            await writer.drain()
        writer.close()

    async def _respond(self, method: str, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        route = path.split("?", 1)[0]
        if route.startswith(UNSUBSCRIBE_PREFIX) and getattr(self.service.config, "unsubscribe_endpoint", False):
            return await self._unsubscribe(method, route.removeprefix(UNSUBSCRIBE_PREFIX))
        if route not in ("/metrics", "/healthz"):
            return "404 Not Found", text, b"not found: try /metrics or /healthz\n"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, b"use GET\n"
        assert self._store is not None
        if route == "/healthz":
            reason = await health(self.service, self._store, self.metrics.last_attempt_at)
            if reason is None:
                return "200 OK", text, b"ok\n"
            return "503 Service Unavailable", text, f"unhealthy: {reason}\n".encode()
        self.scrapes += 1
        try:
            await self.metrics.refresh(self._store)
        except Exception as exc:  # the counters are still worth serving
            log.warning("metrics: cannot read the queue for a scrape: %s", exc)
        return "200 OK", CONTENT_TYPE_LATEST, self.metrics.exposition()


    async def _unsubscribe(self, method: str, token: str) -> tuple[str, str, bytes]:
        """The one-click POST; a GET (a person's browser, or a scanner) gets the page."""
        from relay.admin.unsubscribe import unsubscribe
        from relay.store import InvalidInput

        text = "text/plain; charset=utf-8"
        if method in ("GET", "HEAD"):
            return "200 OK", "text/html; charset=utf-8", UNSUBSCRIBE_PAGE
        if method != "POST":
            return "405 Method Not Allowed", text, b"use POST (RFC 8058 one-click unsubscribe)\n"
        assert self._store is not None
        try:
            result = await asyncio.wait_for(self._store.run(unsubscribe, token, via="one-click POST"), STORE_TIMEOUT)
        except InvalidInput:
            return "400 Bad Request", text, f"{Reason.UNSUBSCRIBE_BAD_TOKEN}: not a valid unsubscribe link\n".encode()
        except Exception as exc:  # the store is busy or gone: the sender may retry
            log.warning("unsubscribe: %s", exc)
            return "503 Service Unavailable", text, b"try again later\n"
        return "200 OK", text, (b"already unsubscribed\n" if result.already else b"unsubscribed\n")


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    line = (await reader.readuntil(b"\r\n")).decode("latin-1").split()
    if len(line) != 3 or not line[2].startswith("HTTP/"):
        raise ValueError("not an HTTP request line")
    seen = 0
    length = 0
    while True:  # the headers: read and ignored, but for the body's length
        header = await reader.readuntil(b"\r\n")
        seen += len(header)
        if header == b"\r\n":
            break
        if seen > REQUEST_LIMIT:
            raise ValueError("headers too long")
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip()) if value.strip().isdigit() else BODY_LIMIT + 1
        elif name.strip().lower() == "transfer-encoding":
            raise ValueError("chunked bodies are not accepted")
    if length > BODY_LIMIT:
        raise ValueError("body too long")
    if length:
        # Read (and drop) a one-click POST's small body: closing with unread data would
        # reset the connection before the client reads the answer.
        await reader.readexactly(length)
    return line[0], line[1]
