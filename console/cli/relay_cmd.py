"""``smtpplus relay`` (the headless daemon), ``smtpplus status`` and ``smtpplus tls export``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click

from console.cli.common import (
    CliError,
    StoreLocation,
    db_option,
    json_option,
    open_db,
    print_json,
    resolve_db_path,
    shown,
    stdout_console,
    store_exists,
)
from relay.display import clean

log = logging.getLogger("smtpplus.relay")


@click.command()
@click.option("--host", default=None, help="Address to listen on (default 0.0.0.0: all interfaces).")
@click.option("--ports", default=None, help="STARTTLS port spec, e.g. 25,587,1025-5000 (the default) or 2525,4000-4010.")
@click.option("--tls-ports", default=None, metavar="SPEC",
              help="Implicit-TLS (SSL/TLS, RFC 8314) port spec, e.g. 465 (the default with the default --ports; "
              "none when --ports is given); 'none' for none.")
@click.option("--server-name", default=None, metavar="NAME",
              help="The relay's name in the greeting, EHLO, Received: and its own mail (default: this host's name).")
@click.option("--allow-plain-auth", is_flag=True, default=None, help="Allow AUTH before STARTTLS (off by default: 538 5.7.11).")
@click.option("--strict-ports", is_flag=True, default=None, help="Fail when any port of the spec cannot be bound.")
@click.option("--reuse-port", is_flag=True, default=None,
              help="Share the ports with other relays of the same PostgreSQL store on this machine (SO_REUSEPORT).")
@click.option("--next-hop", default=None, metavar="HOST:PORT", help="Seed the next hop (only when the store has none yet).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help='Once accepting, write {"pid", "host", "served", "implicit_tls", "not_served", "fingerprint", "store", '
                   '"metrics"} here as JSON (atomically; "metrics" is the --metrics-listen address, else null).')
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML settings file (default: $SMTPPLUS_CONFIG).")
@click.option("--check", "check_store", is_flag=True,
              help="Check the store first (SQLite: PRAGMA quick_check, with progress; PostgreSQL: it answers and has the schema); refuse to start when it fails.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Log lines as text (the default) or one JSON object per line.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append logs to this file (reopened on SIGHUP, for logrotate) instead of stderr.")
@click.option("--mx-port", type=click.IntRange(1, 65535), default=None,
              help="Port MX hosts are dialled on in MX delivery (default 25; tests use a high port).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False), default=None,
              help="The relay's log level (default info: a line per event; warning: problems only). SIGHUP applies a new one.")
@click.option("--metrics-listen", default=None, metavar="HOST:PORT",
              help="Serve Prometheus /metrics and /healthz here (a bare PORT listens on 127.0.0.1). Off by default.")
@db_option
def relay(
    host: str | None,
    ports: str | None,
    tls_ports: str | None,
    server_name: str | None,
    allow_plain_auth: bool | None,
    strict_ports: bool | None,
    reuse_port: bool | None,
    next_hop: str | None,
    ready_file: Path | None,
    config_path: Path | None,
    check_store: bool,
    log_format: str | None,
    log_file: Path | None,
    log_level: str | None,
    metrics_listen: str | None,
    mx_port: int | None,
    db_path: Path | None,
) -> None:
    """Run the relay as a headless daemon: every port of the spec, STARTTLS, AUTH, delivery.

    SIGTERM or Ctrl-C stops accepting, lets sessions in progress finish (bounded) and
    exits 0. SIGHUP reopens the log file, re-reads the configuration (limits, timeouts,
    log format and level; a change that needs a restart is named in a warning, an invalid file keeps
    the old configuration) and reloads the TLS pair. A second relay on a
    store whose relay is alive exits with an error naming it. A corrupt store stops the
    relay with a one-line error (exit 1); `smtpplus status` says so. Under systemd
    (Type=notify) it reports READY=1 once its ports are bound, WATCHDOG=1 and
    STOPPING=1: see docs/production.md.
    """
    from relay.config import load_config
    from relay.listen import listen_plan

    overrides = {
        "host": host,
        "ports": ports,
        "tls_ports": tls_ports,
        "server_name": server_name,
        "allow_plain_auth": allow_plain_auth,
        "strict_ports": strict_ports,
        "reuse_port": reuse_port,
        "next_hop": next_hop,
        "log_format": log_format,
        "log_file": log_file,
        "log_level": log_level,
        "metrics_listen": metrics_listen,
        "mx_port": mx_port,
    }
    config = load_config(config_path, overrides)
    if next_hop is not None:
        _check_next_hop(next_hop)
    listen_plan(config.ports, config.resolved_tls_ports())  # a bad spec is a one-line error before anything starts
    metrics_address = _metrics_address(config.metrics_listen)
    _configure_logging(config)
    store_path = resolve_db_path(db_path)
    _check_reuse_port(config.reuse_port, store_path)
    # A PostgreSQL store is always checked (the backend's check: it answers and has the
    # schema); a SQLite file only when there is one (the relay creates a new store).
    if check_store and store_exists(store_path):
        from console.cli.store_cmd import check_failure, run_check

        result = run_check(store_path)
        if not result.ok:
            raise CliError(check_failure(result))
        click.echo(f"store check: {shown(store_path)} is sound ({_check_size(store_path, result)}, {result.seconds:.1f}s)", err=True)
    runner = _event_loop_runner()

    def reload_config() -> Any:
        # SIGHUP: the same file, environment and flags as at start.
        return load_config(config_path, overrides)

    code = runner(_serve(store_path, config, ready_file, metrics_address, reload_config))
    sys.exit(code)



def _check_size(store_path: StoreLocation, result: Any) -> str:
    from relay.store.postgres.location import is_postgres  # text only: loads no driver

    if is_postgres(store_path):  # the server checks its own pages: this is the database's size
        return f"answers with the schema, {result.bytes:,} bytes"
    return f"{result.pages:,} pages"


def _check_reuse_port(reuse_port: bool, store_path: StoreLocation) -> None:
    from relay.store.postgres.location import is_postgres  # text only: loads no driver

    if reuse_port and not is_postgres(store_path):
        raise CliError("--reuse-port needs a PostgreSQL store (--db postgresql://…): one relay serves a SQLite store")
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise CliError("--reuse-port needs SO_REUSEPORT, which this system lacks — run one relay per port instead")

def _metrics_address(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    from relay.metrics import parse_listen

    try:
        return parse_listen(value)
    except ValueError as exc:
        raise CliError(f"{exc} (--metrics-listen / metrics_listen)") from None


def _check_next_hop(value: str) -> None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CliError(f"--next-hop {value!r} is not HOST:PORT — e.g. smarthost.example:25")


def _configure_logging(config: Any) -> None:
    from relay.display import LOGGERS, install_log_escaping
    from relay.logs import configure_logging, level_number

    try:
        configure_logging(config.log_format, config.log_file, level_number(config.log_level))
    except OSError as exc:
        raise CliError(f"cannot open the log file {config.log_file}: {exc.strerror or exc} — check --log-file / log_file") from None
    install_log_escaping(*LOGGERS)  # records logged before or beside our handler too


def _reconfigure_logging(config: Any) -> None:
    """A reload's new log format or file; when the file cannot be opened the old
    handler stays and one line says why."""
    from relay.logs import set_level

    try:
        _configure_logging(config)
    except CliError as exc:
        set_level(config.log_level)  # a new level changed in the same reload still applies
        log.error("%s; the previous log destination stays in use", exc)


def _event_loop_runner() -> Any:
    """uvloop on Linux (``SMTPPLUS_EVENT_LOOP=asyncio`` picks the standard loop)."""
    choice = os.environ.get("SMTPPLUS_EVENT_LOOP", "").strip().lower()
    if choice == "asyncio":
        return asyncio.run
    if choice == "uvloop" or sys.platform.startswith("linux"):
        try:
            import uvloop

            return uvloop.run
        except ImportError:
            pass
    return asyncio.run


async def _serve(
    store_path: StoreLocation, config: Any, ready_file: Path | None, metrics_address: tuple[str, int] | None = None,
    config_loader: Any = None,
) -> int:
    from relay.logs import log_events
    from relay.logs import reopen as reopen_logs
    from relay.logs import set_level as set_log_level
    from relay.sdnotify import Notifier
    from relay.service import RelayService

    service = RelayService(store_path, config, config_loader=config_loader)
    systemd = Notifier()  # Type=notify: does nothing outside systemd
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    loop.add_signal_handler(signal.SIGHUP, reopen_logs)  # while starting: only the log file
    service.observers.append(log_events)
    metrics_server = _metrics_server(service, metrics_address)  # hooks its counters before start
    if metrics_server is not None:
        await metrics_server.open()  # events are counted from here: the relay's start is one
    try:
        await service.start()
    except BaseException:
        if metrics_server is not None:
            await metrics_server.close()
        raise

    async def reload() -> None:
        changed = await service.reload()
        if "log_format" in changed or "log_file" in changed:
            _reconfigure_logging(service.config)
        elif "log_level" in changed:
            set_log_level(service.config.log_level)

    def hang_up() -> None:
        # SIGHUP: a new log file first (logrotate moved the old one), then re-read the
        # configuration and what can change without a restart (the TLS pair, …).
        reopen_logs()
        loop.create_task(reload())

    loop.add_signal_handler(signal.SIGHUP, hang_up)
    watchdog: asyncio.Future[None] | None = None
    try:
        if metrics_server is not None:
            await _start_metrics(metrics_server)
        _announce(service, store_path)
        if ready_file is not None:
            write_ready_file(
                ready_file,
                {
                    "pid": os.getpid(),
                    "host": config.host,
                    "served": service.served,
                    "implicit_tls": service.implicit_tls,
                    "not_served": {str(port): reason for port, reason in sorted(service.not_served.items())},
                    "fingerprint": service.tls.fingerprint if service.tls else None,
                    "store": shown(store_path),
                    "metrics": f"{metrics_server.host}:{metrics_server.port}" if metrics_server is not None else None,
                },
            )
        systemd.ready(_status_line(service))
        # Pings continue while sessions drain: the loop still runs, the relay is alive.
        watchdog = asyncio.ensure_future(systemd.keep_alive())
        stopped = asyncio.ensure_future(service.wait_stopped())
        requested = asyncio.ensure_future(stop_requested.wait())
        await asyncio.wait({stopped, requested}, return_when=asyncio.FIRST_COMPLETED)
        taken_over = stopped.done() and not requested.done()
        requested.cancel()
    finally:
        systemd.stopping("stopping: letting sessions in progress finish")
        log.info("stopping — letting sessions in progress finish")
        if metrics_server is not None:
            await metrics_server.close()
        await service.stop()
        if watchdog is not None:
            watchdog.cancel()
    if service.failure is not None:
        click.echo(f"smtpplus: error: {service.failure}", err=True)
        return 1
    if taken_over:
        log.error("another relay took over this store's lease: exiting")
        return 1
    log.info("stopped")
    return 0


def _metrics_server(service: Any, address: tuple[str, int] | None) -> Any:
    if address is None:
        return None
    from relay.metrics import MetricsServer, RelayMetrics

    return MetricsServer(service, RelayMetrics(service), *address)


async def _start_metrics(server: Any) -> None:
    try:
        host, port = await server.start()
    except OSError as exc:
        raise CliError(
            f"cannot serve metrics on {server.host}:{server.port}: {exc.strerror or exc} — pick another --metrics-listen"
        ) from None
    shown = f"[{host}]" if ":" in host else host
    log.info("metrics on http://%s:%d/metrics, health on /healthz", shown, port)


def _status_line(service: Any) -> str:
    """systemd's STATUS= (shown by ``systemctl status``)."""
    from relay.ports import format_port_spec

    line = f"serving {len(service.served)} port(s) on {service.config.host} ({format_port_spec(service.served)})"
    if service.not_served:
        line += f", {len(service.not_served)} not served"
    return line


def _announce(service: Any, store_path: StoreLocation) -> None:
    from relay.config import server_name_warning
    from relay.ports import format_port_spec

    served = service.served
    implicit = service.implicit_tls
    tls_text = f"; implicit TLS on {format_port_spec(implicit)}" if implicit else ""
    log.info(
        "serving %d port(s) on %s (%s%s) for store %s", len(served), service.config.host, format_port_spec(served),
        tls_text, shown(store_path),
    )
    for port, reason in sorted(service.not_served.items()):
        log.warning("port %d not served: %s", port, reason, extra={"port": port})
    if service.took_over:
        log.warning("took over from a relay that died; its in-flight mail is reclaimed")
    warning = server_name_warning(service.config.resolved_server_name())
    if warning:
        log.warning("warning: %s", warning)


def write_ready_file(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically: a temporary file in the same directory, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# status


EXIT_NOT_RUNNING = 3  # LSB "program is not running", as `systemctl status`


@click.command()
@click.option("--wait", "wait_seconds", type=float, default=None, metavar="SECONDS",
              help="Wait up to SECONDS for a ready relay (alive, its ports and settings published); exit 3 when none is.")
@click.option("--stale-after", type=float, default=None, help="Heartbeat age that counts as dead (default: the relay setting, 10 s).")
@json_option
@db_option
def status(wait_seconds: float | None, stale_after: float | None, as_json: bool, db_path: Path | None) -> None:
    """Is a relay alive on this store? Ports served and not served, TLS, paused, next hop.

    Exits 0 when a relay is alive and 3 when none is (as `systemctl status`); with
    --wait, 0 only once it is ready (it takes its lease before it binds its ports), else
    3; 1 when there is no store at the path."""
    from relay.store.lease import DEFAULT_STALE_AFTER, relay_status

    limit = DEFAULT_STALE_AFTER if stale_after is None else stale_after
    deadline = time.monotonic() + (wait_seconds or 0)
    store_path = resolve_db_path(db_path)
    # A relay just started may not have created its store yet: --wait waits for it
    # too, and never creates it (`status` only reads).
    # A PostgreSQL store has no file to wait for: --wait waits for the server to answer
    # with the schema instead; then opening it below says what is wrong (server down:
    # unavailable; no schema: no store), one line, exit 1.
    if wait_seconds is not None:
        _wait_for_server(store_path, deadline)
    while wait_seconds is not None and not store_exists(store_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    if wait_seconds is not None and not store_exists(store_path):
        click.echo(f"smtpplus: no store at {shown(store_path)} after waiting {wait_seconds:g}s — start one with `smtpplus relay`", err=True)
        sys.exit(EXIT_NOT_RUNNING)
    with open_db(db_path, create=False) as db:
        while True:
            current = relay_status(db, limit)
            if current.ready or wait_seconds is None or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    if as_json:
        print_json(current)
    else:
        _print_status(current)
    if current.ready or (current.alive and wait_seconds is None):
        return
    if wait_seconds is not None and current.alive:
        click.echo(f"smtpplus: the relay (pid {current.pid}) is alive but still starting after waiting "
                   f"{wait_seconds:g}s — see its log, or wait longer", err=True)
    elif wait_seconds is not None:
        click.echo(f"smtpplus: no live relay on this store after waiting {wait_seconds:g}s — start one with `smtpplus relay`", err=True)
    sys.exit(EXIT_NOT_RUNNING)


def _wait_for_server(store_path: StoreLocation, deadline: float) -> None:
    from relay.store.postgres.location import is_postgres  # text only: loads no driver

    if not is_postgres(store_path):
        return
    from relay.store import StoreError, open_store

    while time.monotonic() < deadline:
        try:
            open_store(store_path, create=False).close()
            return
        except StoreError:
            time.sleep(0.2)


def _print_status(current: Any) -> None:
    from rich.table import Table

    from relay.config import server_name_warning
    from relay.ports import format_port_spec

    console = stdout_console()
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    beat = f"{current.heartbeat_age:.1f}s ago" if current.heartbeat_age is not None else "none yet"
    if current.alive and current.liveness == "lock" and current.heartbeat_age is not None and current.heartbeat_age > 10:
        # The OS lock says the process lives: a stalled loop or a full disk, not a death.
        table.add_row("relay", f"alive — pid {current.pid} on {current.host} holds the store lock, but its "
                               f"heartbeat is {current.heartbeat_age:.0f}s old (stalled? disk full?) — see its log")
    elif current.alive and not current.ready:
        table.add_row("relay", f"starting — pid {current.pid} on {current.host} (ports and settings not published yet)")
    elif current.alive:
        table.add_row("relay", f"alive — pid {current.pid} on {current.host}, heartbeat {beat}")
    elif current.stopped_reason:
        table.add_row("relay", f"not running — stopped: {clean(current.stopped_reason)}")
    elif current.owner is None:
        table.add_row("relay", "not running — this store has never been served")
    elif current.stopped_at:
        table.add_row("relay", f"not running — stopped (last pid {current.pid} on {current.host})")
    else:
        age = f"{current.heartbeat_age:.0f}s" if current.heartbeat_age is not None else "?"
        table.add_row("relay", f"not running — no heartbeat for {age} (last pid {current.pid} on {current.host})")
    if len(current.relays) > 1:
        table.add_row("relays", f"{len(current.relays)} live on this store (the oldest named above)")
    from relay.client_settings import relay_line

    for n, member in enumerate(current.relays, 1):
        table.add_row(f"relay {n}", clean(relay_line(member)))
    if current.listen_host:
        table.add_row("listening on", str(current.listen_host))
    table.add_row("ports served", f"{len(current.served)}" + (f" ({format_port_spec(current.served)})" if current.served else ""))
    if current.implicit_tls:
        table.add_row("implicit TLS", f"{format_port_spec(current.implicit_tls)} (SSL/TLS from the first byte; STARTTLS on the others)")
    for port, reason in sorted(current.not_served.items())[:50]:
        table.add_row("not served", f"port {port}: {reason}")
    if len(current.not_served) > 50:
        table.add_row("not served", f"… and {len(current.not_served) - 50} more (see --json)")
    table.add_row("server name", current.server_name or "-")
    warning = server_name_warning(current.server_name) if current.server_name else None
    if warning:
        table.add_row("warning", warning)
    encryption = "STARTTLS (optional: plain AUTH allowed)" if current.allow_plain_auth else "STARTTLS (required for AUTH)"
    if current.implicit_tls:
        encryption += f"; SSL/TLS on {format_port_spec(current.implicit_tls)}"
    table.add_row("encryption", encryption)
    table.add_row("TLS fingerprint", current.tls_fingerprint or "- (published when the relay first starts)")
    if current.paused:
        delivery = "paused (smtpplus queue resume)"
    elif current.alive:
        delivery = "running"
    else:
        delivery = "stopped — no relay is running on this store"
    table.add_row("delivery", delivery)
    table.add_row("next hop", current.next_hop or "none — delivery waits (smtpplus queue next-hop HOST:PORT)")
    if current.rate is not None:
        table.add_row("rate", f"{current.rate:g}/s" if current.rate else "unlimited")
    if current.parallel is not None:
        table.add_row("parallel", str(current.parallel))
    console.print(table)


# ---------------------------------------------------------------------------
# tls


@click.group()
def tls() -> None:
    """The relay's TLS certificate."""


@tls.command("export")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the PEM here instead of stdout.")
@click.option("--fingerprint", "show_fingerprint", is_flag=True, help="Print only the SHA-256 fingerprint.")
@json_option
@db_option
def tls_export(out: Path | None, show_fingerprint: bool, as_json: bool, db_path: Path | None) -> None:
    """Print the relay's certificate (PEM) for clients to trust (--cafile).

    With --json: {"pem": …, "fingerprint": …} (and "out" when --out wrote the file)."""
    from relay.store.relays import live_relays
    from relay.store.settings import Keys, get_setting

    with open_db(db_path, create=False) as db:
        pem = get_setting(db, Keys.TLS_CERT_PEM)
        fingerprint = get_setting(db, Keys.TLS_FINGERPRINT)
        # PostgreSQL: every live relay (on SQLite the one relay is the certificate's owner).
        members = live_relays(db) if getattr(db, "dialect", "sqlite") == "postgresql" else []
    others = sorted({m.tls_fingerprint for m in members if m.tls_fingerprint} - {fingerprint})
    if others and not as_json:
        # Many relays (PostgreSQL), not all with the certificate published last: say so.
        click.echo(f"note: {len(members)} live relays; this is the certificate published last — others serve "
                   + ", ".join(others), err=True)
    if not pem:
        raise CliError("no certificate published yet — start the relay once (`smtpplus relay`) on this store")
    if show_fingerprint and not as_json:  # the JSON object carries the fingerprint anyway
        click.echo(fingerprint)
        return
    if out is not None:
        try:
            out.write_text(pem, encoding="ascii")
        except OSError as exc:
            raise CliError(f"cannot write {out}: {exc.strerror or exc} — check --out") from None
        if not as_json:
            click.echo(f"wrote the relay certificate ({fingerprint}) to {out}", err=True)
    if as_json:
        relays = [{"host": m.host, "pid": m.pid, "ports": m.ports, "fingerprint": m.tls_fingerprint} for m in members]
        print_json({"pem": pem, "fingerprint": fingerprint, **({"out": str(out)} if out is not None else {}),
                    **({"relays": relays} if relays else {})})
    elif out is None:
        click.echo(pem, nl=not pem.endswith("\n"))
