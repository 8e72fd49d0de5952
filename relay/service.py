"""The relay as one asyncio service: listeners, writer, heartbeat and delivery.

Public API
----------
``RelayService(store_path, config=None)``
    ``await start()``: takes the store's OS lock (``<store>-relay.lock``, held until the
    service stops; ``RelayAlreadyRunning`` at once, naming the holder, while a live
    relay on this host holds it) and then its lease (a previous relay on this host is
    gone since its lock was free: taken over at once, whatever its heartbeat), loads or generates the TLS pair, publishes the server name, TLS
    fingerprint and certificate to the store's settings and seeds the runtime
    controls (``config.next_hop``/``rate``/``parallel``/``paused``, only when unset),
    starts the group-commit writer, binds every port of ``config.ports``, records
    which are served (``relay.store.relay_info.publish_ports``), starts the
    heartbeat and then :class:`relay.delivery.DeliveryEngine`. Raises a
    ``StoreError`` subclass (one line) when it cannot start, leaving nothing behind.

    ``await stop(grace=None)``: stops accepting, tells idle sessions ``421`` and lets
    sessions in a transaction finish (at most ``grace`` seconds, default
    ``config.shutdown_grace``), flushes the writer, stops delivery and releases the
    lease. Idempotent.

    ``await wait_stopped()``: returns once the service stopped — after ``stop()``, or
    by itself when another relay took the lease over (this one was presumed dead), or
    when the store turned out corrupt (``failure`` then holds the one-line error, also
    written to the lock file so ``status`` says why).

    After ``start()``: ``served`` (ports), ``implicit_tls`` (those of them with TLS
    from the first byte: ``config.tls_ports``, RFC 8314), ``not_served`` ({port: reason with fix}),
    ``addresses`` ([(host, port)]), ``owner`` (lease id), ``reclaimed_from`` (the
    previous relay's owner id, when it is gone, or None), ``took_over`` (that relay
    had died rather than stopped), ``tls`` (:class:`relay.tls.TlsMaterial`),
    ``checker`` (:class:`relay.auth.PasswordChecker`), ``writer``
    (:class:`relay.writer.StoreWriter`), ``context`` (shared session state),
    ``delivery``, ``running``.

    ``observers``: callables told every event this relay committed (its sessions,
    intake, delivery and lifecycle), after the commit — the log and metrics hook
    (:func:`relay.logs.log_events`). ``outcome_observers`` get each batch of delivery
    outcomes, ``commit_observers`` (seconds, messages) per group commit,
    ``reply_observers`` (command, reply class) per next-hop reply. Append before
    ``start()``. ``heartbeat_at`` (monotonic time of the last heartbeat written) and
    ``heartbeat_error`` (why the last one failed, or None) are for health checks.

    ``delivery_factory`` (keyword, default :class:`relay.delivery.DeliveryEngine`) is
    called with the engine's arguments (``store_path, config, owner=…,
    reclaim_from=…, own_addresses=…``) for embedders that bring their own.

    ``await reload()`` (the ``relay`` command calls it on SIGHUP) runs every hook
    registered with ``add_reload_hook(async_fn)``; the TLS keeper
    (:class:`relay.tls.TlsKeeper`, ``tls_keeper``) registers one that re-reads a
    configured certificate and key.

    ``config_loader`` (keyword): a function returning a fresh :class:`RelayConfig` (the
    ``relay`` command passes ``load_config`` with its ``--config`` file and flags). With
    it, :meth:`reload` first calls :meth:`reload_config`: the settings of ``LIVE`` apply
    at once (open sessions see most of them; ``NEW_SESSIONS`` ones reach new sessions),
    those of ``RESTART`` keep their running value and are named in one warning line, and
    an invalid configuration (``ConfigError``) keeps the old one, said in one error line.
    Each reload is an event (``config-reloaded`` / ``config-reload-failed``).

The service installs no signal handlers: the ``relay`` command does, and the console
runs the service as a task in its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay import delivery as delivery_module
from relay.auth import FailureLimiter, PasswordChecker
from relay.config import RUNTIME_SEEDS, ConfigError, RelayConfig
from relay.display import LOGGERS, install_log_escaping
from relay.listen import Listeners, bind_all, listen_plan
from relay.reasons import EventKind, Reason
from relay.smtp import ConnectionTracker, RelayContext, make_factory
from relay.store import (
    AsyncStore,
    Connection,
    StoreCorrupt,
    backend_for,
    corrupt_message,
    is_corrupt,
    lease,
    on_corruption,
    transaction,
)
from relay.store.events import NewEvent, record_event, record_events
from relay.store.postgres.location import store_location  # text only: loads no driver
from relay.store.relay_info import publish_ports, record_relay_change
from relay.store.settings import Keys, seed_setting, set_setting
from relay.store.verification import host_fqdn_for
from relay.tls import TlsKeeper, TlsMaterial, load_tls
from relay.writer import StoreWriter

log = logging.getLogger("smtpplus.relay")

# What a configuration reload (SIGHUP) can change. Sessions read these from the shared
# context's config when they use them, the limiter, the connection caps and the delivery
# engine are updated in place.
LIVE = frozenset({
    "allow_plain_auth", "max_recipients", "inflight_bytes_limit", "max_connections", "max_connections_per_client",
    "session_without_mail", "soft_error_limit", "hard_error_limit", "header_size_limit", "hopcount_limit",
    "refuse_lookalike_display_names", "postmaster_address", "received_names_user", "auth_failures_per_connection", "auth_failures_per_client",
    "auth_failures_per_user", "auth_failure_window", "auth_free_failures", "auth_failure_delay",
    "auth_failure_delay_max", "shutdown_grace", "retry_base", "retry_max", "queue_lifetime", "message_lease",
    "connect_timeout", "command_timeout", "retention_days", "recipients_per_transaction", "stuck_after",
    "unsubscribe_endpoint",
    "mx_port", "max_connections_per_destination",  # the engine reads them from its config at each use
    "log_format", "log_file", "log_level",  # applied by the embedder (the relay command reconfigures its logging)
})
# Read once when a session starts (aiosmtpd keeps them): open sessions keep the old value.
NEW_SESSIONS = frozenset({"max_message_size", "session_timeout"})
# Bound at start: listeners, the store, the certificate paths, names published.
RESTART = frozenset({
    "host", "ports", "tls_ports", "strict_ports", "server_name", "data_dir", "tls_cert", "tls_key",
    "tls_reload_interval", "auth_concurrency", "heartbeat_interval", "stale_after", "metrics_listen",
    "store_pool_size", "reuse_port",
})
# The delivery engine's copies of its settings: (its attribute, the setting, a factor).
_ENGINE_SETTINGS = (
    ("retry_base", "retry_base", 1.0), ("retry_max", "retry_max", 1.0), ("queue_lifetime", "queue_lifetime", 1.0),
    ("lease_seconds", "message_lease", 1.0), ("connect_timeout", "connect_timeout", 1.0),
    ("command_timeout", "command_timeout", 1.0), ("retention", "retention_days", 86400.0),
)


def publish_start(
    db: Connection,
    facts: dict[str, Any],
    seeds: dict[str, Any],
) -> None:
    """Settings the live relay publishes, plus runtime controls seeded when unset."""
    with transaction(db):
        for key, value in facts.items():
            set_setting(db, key, value)
        for key, value in seeds.items():
            seed_setting(db, key, value)


def publish_listening(
    db: Connection, owner: str, served: list[int], not_served: dict[int, str], events: list[NewEvent],
    implicit_tls: list[int] | None = None,
) -> None:
    """The ports served, the start event and "ready" (`status --wait`), in one transaction:
    a reader sees all of it or none."""
    with transaction(db):
        publish_ports(db, served, not_served, implicit_tls or [])
        record_events(db, events)
        lease.mark_listening(db, owner)


class _AlreadyEncrypted:
    """Stands where aiosmtpd keeps the STARTTLS layer (``SMTP._tls_protocol``), which is
    how aiosmtpd and the session tell an encrypted connection (EHLO offers AUTH, not
    STARTTLS; AUTH is allowed). aiosmtpd cannot see TLS it did not start itself
    (aio-libs/aiosmtpd#281)."""

    def __repr__(self) -> str:
        return "<implicit TLS>"


ALREADY_ENCRYPTED = _AlreadyEncrypted()


def implicit_tls_factory(factory: Callable[[], Any]) -> Callable[[], Any]:
    """Sessions for an implicit-TLS port (RFC 8314): ``relay.listen.ImplicitTlsServer``
    counts the connection (``admit``) and finishes the handshake before the session
    sees the connection; the session then speaks as after STARTTLS."""

    def make() -> Any:
        session = factory()
        session._tls_protocol = ALREADY_ENCRYPTED
        return session

    return make


class RelayService:
    def __init__(
        self,
        store_path: str | os.PathLike[str],
        config: RelayConfig | None = None,
        *,
        delivery_factory: Callable[..., Any] | None = None,
        config_loader: Callable[[], RelayConfig] | None = None,
    ) -> None:
        # A postgresql:// URL stays text: pathlib would drop a slash of postgresql:///db.
        self.store_path = store_location(store_path)
        self.config = config if config is not None else RelayConfig()
        self.config_loader = config_loader
        self._delivery_factory = delivery_factory
        self.owner = uuid.uuid4().hex
        self.reclaimed_from: str | None = None
        self.took_over = False  # the previous relay died (stale heartbeat): we took over
        self.served: list[int] = []
        self.implicit_tls: list[int] = []
        self.not_served: dict[int, str] = {}
        self.tls: TlsMaterial | None = None
        self.checker: PasswordChecker | None = None
        self.writer: StoreWriter | None = None
        self.context: RelayContext | None = None
        self.delivery: Any = None
        self.tls_keeper: TlsKeeper | None = None
        self._reload_hooks: list[Callable[[], Any]] = []
        self._reloading = asyncio.Lock()  # one SIGHUP at a time: each diff is against the last
        self._control: AsyncStore | None = None
        self._reads: AsyncStore | None = None
        self._writes: AsyncStore | None = None
        self._listeners: Listeners | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.observers: list[Callable[[list[NewEvent]], None]] = []
        self.outcome_observers: list[Callable[[list[Any]], None]] = []
        self.commit_observers: list[Callable[[float, int], None]] = []
        self.reply_observers: list[Callable[[str, str], None]] = []  # (command, class) per next-hop reply
        self.heartbeat_at: float | None = None
        self.heartbeat_error: str | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._leased = False
        self._lock = backend_for(self.store_path).relay_lock(self.store_path)  # PostgreSQL: one per relay
        self._unwatch: Callable[[], None] | None = None
        self.failure: str | None = None  # why the service stopped by itself (a corrupt store)
        self.running = False

    @property
    def leased(self) -> bool:
        """This relay holds the store's lease (it has not stopped or been taken over)."""
        return self._leased

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(self.config.host, port) for port in self.served]

    async def start(self) -> None:
        try:
            await self._start()
        except StoreCorrupt as exc:
            self._lock.note(stopped=str(exc))
            await self._teardown()
            raise
        except BaseException:
            await self._teardown()
            raise

    def _size_store_pool(self, size: int) -> None:
        """PostgreSQL: how many connections this process's stores may hold."""
        from relay.store.postgres.location import is_postgres  # text only: loads no driver

        if is_postgres(self.store_path):
            from relay.store.postgres.bridge import set_pool_size

            set_pool_size(size)

    def _watch_corruption(self) -> None:
        """Stop the relay when any of its store connections meets SQLITE_CORRUPT."""
        loop = asyncio.get_running_loop()
        mine = Path(self.store_path).resolve()  # SQLite only reports corruption: a file

        def heard(path: Path, exc: BaseException) -> None:
            if path.resolve() == mine:
                loop.call_soon_threadsafe(self._store_corrupt, exc)

        self._unwatch = on_corruption(heard)
        # "asyncio": a task that met the corruption while the relay stops is logged there
        # ("Task exception was never retrieved") with a traceback.
        for name in ("mail.log", "smtpplus.relay", "smtpplus.delivery", "asyncio"):
            logger = logging.getLogger(name)
            if _CORRUPTION_NOISE not in logger.filters:
                logger.addFilter(_CORRUPTION_NOISE)

    def _store_corrupt(self, exc: BaseException) -> None:
        if self.failure is not None or self._stopping:
            return
        self.failure = corrupt_message(self.store_path, exc)
        log.error("stopping: %s", self.failure)
        self._lock.note(stopped=self.failure)
        asyncio.get_running_loop().create_task(self.stop(grace=0))

    async def _start(self) -> None:
        cfg = self.config
        # Client bytes in log lines (ours and aiosmtpd's) are escaped, however the
        # embedding process configured logging.
        install_log_escaping(*LOGGERS)
        mail_log = logging.getLogger("mail.log")
        if mail_log.level == logging.NOTSET:
            # aiosmtpd logs every command at INFO: not for a relay (unless asked for).
            mail_log.setLevel(logging.WARNING)
        server_name = cfg.resolved_server_name()
        host = socket.gethostname()
        await asyncio.to_thread(
            self._lock.acquire,
            {"pid": os.getpid(), "host": host, "owner": self.owner, "listen_host": cfg.host, "started_at": time.time()},
        )
        self._watch_corruption()
        self._size_store_pool(cfg.store_pool_size)
        self._control = await AsyncStore(self.store_path).open()
        acquired = await self._control.run(
            lease.acquire_lease, self.owner, os.getpid(), host, cfg.host, cfg.stale_after, locked=True
        )
        self.reclaimed_from = acquired.previous_owner
        self.took_over = acquired.died
        self._leased = True
        self.heartbeat_at = time.monotonic()
        self.tls = await asyncio.to_thread(load_tls, cfg.tls_cert, cfg.tls_key, cfg.data_dir, server_name)
        log.info("TLS certificate %s (%s)", self.tls.fingerprint, "self-signed" if self.tls.self_signed else str(self.tls.cert_path))
        facts = {
            Keys.SERVER_NAME: server_name,
            Keys.TLS_FINGERPRINT: self.tls.fingerprint,
            Keys.TLS_CERT_PEM: self.tls.cert_pem,
            Keys.ALLOW_PLAIN_AUTH: cfg.allow_plain_auth,
            # Looked up here, once, off the loop and off every store thread (may ask DNS).
            Keys.HOST_FQDN: await asyncio.to_thread(host_fqdn_for, server_name),
        }
        seeds = {key: getattr(cfg, name) for name, key in RUNTIME_SEEDS.items() if getattr(cfg, name) is not None}
        await self._control.run(publish_start, facts, seeds)
        self.tls_keeper = TlsKeeper(self.tls, self._control, interval=cfg.tls_reload_interval)
        self.tls_keeper.observers = self.observers  # its events reach the log and metrics too
        await self.tls_keeper.start()
        self.add_reload_hook(self.tls_keeper.reload)

        self._reads = await AsyncStore(self.store_path).open()
        self._writes = await AsyncStore(self.store_path).open()
        self.writer = StoreWriter(self._writes)
        self.writer.observers = self.observers
        self.writer.commit_observers = self.commit_observers
        self.writer.start()
        self.checker = PasswordChecker(self._reads, concurrency=cfg.auth_concurrency)
        self.context = RelayContext(
            config=cfg,
            server_name=server_name,
            tls_context=self.tls.context,
            checker=self.checker,
            limiter=FailureLimiter(cfg.auth_failures_per_client, cfg.auth_failures_per_user, cfg.auth_failure_window),
            writer=self.writer,
            tracker=ConnectionTracker(cfg.max_connections, cfg.max_connections_per_client),
        )
        ports, tls_ports = listen_plan(cfg.ports, cfg.resolved_tls_ports())
        sessions = make_factory(self.context)
        self._listeners = await bind_all(
            asyncio.get_running_loop(),
            sessions,
            cfg.host,
            ports,
            strict=cfg.strict_ports,
            reuse_port=cfg.reuse_port,
            connections=cfg.max_connections,
            tls_ports=tls_ports,
            tls_factory=implicit_tls_factory(sessions),
            ssl_context=self.tls.context,  # the same context TLS reloads update in place
        )
        self.served = list(self._listeners.served)
        self.implicit_tls = list(self._listeners.implicit_tls)
        self.not_served = dict(self._listeners.not_served)
        events = [
            NewEvent(
                kind=EventKind.RELAY,
                reason=Reason.RELAY_STARTED,
                detail=f"pid {os.getpid()} on {cfg.host}: {len(self.served)} port(s) served"
                f"{f' ({len(self.implicit_tls)} implicit TLS)' if self.implicit_tls else ''}, "
                f"{len(self.not_served)} not served; TLS {self.tls.fingerprint}",
            )
        ]
        events += [
            NewEvent(kind=EventKind.RELAY, reason=Reason.PORT_NOT_SERVED, port=port, detail=reason)
            for port, reason in sorted(self.not_served.items())[:100]
        ]
        await self._control.run(publish_listening, self.owner, self.served, self.not_served, events, self.implicit_tls)
        self._tell(events)
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat(), name="smtpplus-heartbeat")
        factory = self._delivery_factory or delivery_module.DeliveryEngine
        self.delivery = factory(
            self.store_path,
            cfg,
            owner=self.owner,
            reclaim_from=self.reclaimed_from,
            own_addresses=self.addresses,
        )
        if isinstance(getattr(self.delivery, "observers", None), list):
            self.delivery.observers = self.observers
            self.delivery.outcome_observers = self.outcome_observers
        if isinstance(getattr(self.delivery, "reply_observers", None), list):
            self.delivery.reply_observers = self.reply_observers
        await self.delivery.start()
        self.running = True

    def _tell(self, events: list[NewEvent]) -> None:
        for observer in self.observers:
            with _logged("an event observer"):
                observer(events)

    async def _beat(self) -> None:
        assert self._control is not None
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            try:
                beat = await self._control.run(lease.beat, self.owner)
            except Exception as exc:  # a busy or failing store: try again next beat
                log.warning("heartbeat failed: %s", exc)
                self.heartbeat_error = str(exc) or type(exc).__name__
                continue
            self.heartbeat_at, self.heartbeat_error = time.monotonic(), None
            if beat.took_over:  # a dead relay's claims are this one's now: its log says so
                if self.observers:
                    self._tell(beat.took_over)
                else:
                    for event in beat.took_over:
                        log.warning("%s", event.detail)
            if not beat.ours:
                log.error("another relay took over this store's lease; stopping")
                self._leased = False
                asyncio.get_running_loop().create_task(self.stop())
                return

    def add_reload_hook(self, hook: Callable[[], Any]) -> None:
        """``hook`` (an async function) runs on every :meth:`reload` (SIGHUP)."""
        self._reload_hooks.append(hook)

    async def reload(self) -> list[str]:
        """The configuration first (with a ``config_loader``), then every hook. Returns
        the settings that changed (see :meth:`reload_config`)."""
        changed: list[str] = []
        async with self._reloading:
            if self.config_loader is not None and self.running:
                with _logged("reloading the configuration"):
                    changed = await self.reload_config(self.config_loader)
            for hook in list(self._reload_hooks):
                with _logged("reloading"):
                    await hook()
        return changed

    async def reload_config(self, loader: Callable[[], RelayConfig]) -> list[str]:
        """Read the configuration again and apply what can change live. Returns the
        settings now in force with a new value; an invalid configuration changes nothing."""
        assert self._control is not None
        old = self.config
        try:
            new = await asyncio.to_thread(loader)
        except ConfigError as exc:
            detail = f"configuration not reloaded, the previous one stays in use: {exc}"
            await self._record(Reason.CONFIG_RELOAD_FAILED, detail, logging.ERROR)
            return []
        differs = [f.name for f in dataclasses.fields(RelayConfig) if getattr(old, f.name) != getattr(new, f.name)]
        kept = [name for name in differs if name in RESTART or name in RUNTIME_SEEDS]
        applied = [name for name in differs if name not in kept]
        effective = dataclasses.replace(new, **{name: getattr(old, name) for name in kept})
        self._apply(effective)
        detail = f"configuration reloaded: {len(applied)} setting(s) changed" + (f" ({', '.join(applied)})" if applied else "")
        restart = [name for name in kept if name in RESTART]
        seeds = [name for name in kept if name in RUNTIME_SEEDS]
        if restart:
            detail += f"; needs a restart, kept: {', '.join(restart)}"
        if seeds:
            detail += f"; runtime controls live in the store (smtpplus queue …), kept: {', '.join(seeds)}"
        if restart or seeds:
            log.warning("config reload: %s", detail.split("; ", 1)[1])
        await self._record(Reason.CONFIG_RELOADED, detail, logging.INFO)
        return applied

    def _apply(self, cfg: RelayConfig) -> None:
        """Put ``cfg`` in force: sessions read ``context.config`` when they use a setting;
        the objects that copied one at start get the new value here."""
        self.config = cfg
        ctx = self.context
        if ctx is not None:
            ctx.config = cfg
            ctx.inflight.limit = cfg.inflight_bytes_limit
            ctx.tracker.max_total = cfg.max_connections
            ctx.tracker.max_per_client = cfg.max_connections_per_client
            ctx.limiter.per_client = cfg.auth_failures_per_client
            ctx.limiter.per_user = cfg.auth_failures_per_user
            ctx.limiter.window = cfg.auth_failure_window
        engine = self.delivery
        if engine is not None and hasattr(engine, "config"):
            engine.config = cfg
            for attribute, name, factor in _ENGINE_SETTINGS:
                if hasattr(engine, attribute):
                    setattr(engine, attribute, float(getattr(cfg, name)) * factor)
            if hasattr(engine, "recipients_per_transaction"):
                engine.recipients_per_transaction = cfg.recipients_per_transaction

    async def _record(self, reason: Reason, detail: str, level: int) -> None:
        """The reload's event, with the setting ``status`` shows that a reload may
        change; then the observers (its log line, metrics) hear of it as of every other
        event — with none, the line is logged here."""
        assert self._control is not None
        facts = {Keys.ALLOW_PLAIN_AUTH: self.config.allow_plain_auth}
        await self._control.run(record_relay_change, EventKind.RELAY, reason, detail, facts)
        if self.observers:
            self._tell([NewEvent(kind=EventKind.RELAY, reason=reason, detail=detail)])
        else:
            log.log(level, "%s", detail)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self, grace: float | None = None) -> None:
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            await self._shutdown(self.config.shutdown_grace if grace is None else grace)
        finally:
            self.running = False
            self._stopped.set()

    async def _shutdown(self, grace: float) -> None:
        if self._listeners is not None:
            self._listeners.close()
        if self.context is not None:
            self.context.stopping = True
            for session in list(self.context.tracker.sessions):
                if session.idle:
                    session.say_goodbye()
            await self._drain_sessions(grace)
        await self._teardown()

    async def _drain_sessions(self, grace: float) -> None:
        assert self.context is not None
        tracker = self.context.tracker
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tracker.wait_empty(), grace)
        for session in list(tracker.sessions):
            if session.transport is not None:
                session.transport.abort()  # type: ignore[attr-defined]

    async def _teardown(self) -> None:
        if self._listeners is not None:
            self._listeners.close()
        if self.tls_keeper is not None:
            await self.tls_keeper.stop()
        if self.delivery is not None:
            with _logged("stopping delivery"):
                await self.delivery.stop()
            self.delivery = None
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self.writer is not None:
            with _logged("flushing the store writer"):
                await self.writer.close()
        if self.checker is not None:
            self.checker.close()
        if self._control is not None and self._leased:
            with _logged("releasing the lease"):
                self._tell([await self._control.run(_record_stop_and_release, self.owner)])
            self._leased = False
        for store in (self._writes, self._reads, self._control):
            if store is not None:
                with _logged("closing the store"):
                    await store.close()
        self._writes = self._reads = self._control = None
        if self._listeners is not None:
            for server in self._listeners.servers:
                with _logged("closing a listener"):
                    await server.wait_closed()
            self._listeners = None
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        # Last: until here another relay must not start on this store.
        self._lock.release()


class _CorruptionNoise(logging.Filter):
    """A session that met the corrupt store logs one line, not a traceback: the relay
    has already said what is wrong and is stopping."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_corrupt(exc):
            record.msg, record.args = f"{record.getMessage()}: {exc}", None
            record.exc_info = record.exc_text = None
        return True


_CORRUPTION_NOISE = _CorruptionNoise()


def _record_stop_and_release(db: Connection, owner: str) -> NewEvent:
    event = NewEvent(kind=EventKind.RELAY, reason=Reason.RELAY_STOPPED, detail=f"pid {os.getpid()} stopped")
    with transaction(db):
        record_event(db, event)
        lease.release(db, owner)
    return event


@contextlib.contextmanager
def _logged(what: str) -> Any:
    try:
        yield
    except Exception as exc:
        log.warning("%s failed: %s", what, exc)
