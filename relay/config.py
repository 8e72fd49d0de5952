"""Relay configuration: defaults ← TOML file ← environment ← flags.

Public API
----------
``RelayConfig``
    A dataclass of every relay setting with a documented default (see the field
    comments). The delivery engine reads its fields too; their names are stable.
``load_config(path=None, overrides=None, *, environ=None) -> RelayConfig``
    Builds a config: the defaults, then the TOML file (``path``, else
    ``$SMTPPLUS_CONFIG``), then ``SMTPPLUS_<FIELD>`` environment variables (for
    example ``SMTPPLUS_PORTS=2525``, ``SMTPPLUS_ALLOW_PLAIN_AUTH=1``), then
    ``overrides`` (command-line flags; ``None`` values are ignored). An unknown TOML
    key, or a value of the wrong type, raises :class:`ConfigError` naming the key.
``ConfigError``
    A one-line error (a ``StoreError`` subclass, so the CLI prints it as one line).
``RUNTIME_SEEDS``
    Maps the seed fields (``next_hop``, ``rate``, ``parallel``, ``paused``,
    ``starvation_share``) to the store setting they seed. Runtime controls live in the store
    (:class:`relay.store.settings.Keys`); the relay only *seeds* them when unset.

The TOML file holds the same keys as the dataclass, at the top level or inside a
``[relay]`` or ``[delivery]`` table::

    host = "0.0.0.0"
    ports = "25,587,1025-5000"
    tls_ports = "465"
    allow_plain_auth = false
    tls_cert = "/etc/smtpplus/cert.pem"
    tls_key = "/etc/smtpplus/key.pem"
    [delivery]
    next_hop = "smarthost.example:25"
    retry_base = 60
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.policy import check_address
from relay.ports import DEFAULT_SPEC, DEFAULT_TLS_SPEC
from relay.store import StoreError
from relay.store.settings import Keys

MIB = 1024 * 1024
ENV_PREFIX = "SMTPPLUS_"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
CONFIG_ENV = "SMTPPLUS_CONFIG"
_TABLES = ("relay", "delivery")


class ConfigError(StoreError):
    """A configuration problem, worth one line naming the key and the fix."""


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("smtpplus"))


@dataclass
class RelayConfig:
    """Every relay setting. Times are seconds unless named otherwise."""

    # -- Listening ---------------------------------------------------------------
    host: str = "0.0.0.0"  # the daemon listens on all interfaces; tests use 127.0.0.1
    ports: str = DEFAULT_SPEC  # "25,587,1025-5000", STARTTLS; "0" = one ephemeral port, "0*N" = N of them
    # Implicit TLS (RFC 8314; "SSL/TLS" in mail clients): TLS from the first byte, AUTH
    # offered at once. None = "465" with the default `ports` and none with any other
    # (a test relay on --ports 0 stays on one port); "" = none.
    tls_ports: str | None = None
    strict_ports: bool = False  # any port that cannot be bound is fatal
    # SO_REUSEPORT (Linux): several relays on one PostgreSQL store share the same ports,
    # the kernel spreading connections among them. Refused on a SQLite store (one relay).
    reuse_port: bool = False
    allow_plain_auth: bool = False  # AUTH before STARTTLS (off: 538 5.7.11)
    server_name: str = ""  # EHLO/greeting name and Received: "by"; "" = this host's name
    # -- TLS -------------------------------------------------------------------
    data_dir: Path = field(default_factory=default_data_dir)  # self-signed pair lives here
    tls_cert: Path | None = None  # PEM certificate (chain); with tls_key, replaces the self-signed pair
    tls_key: Path | None = None
    tls_reload_interval: float = 5.0  # poll a configured pair's files this often; 0 = only on SIGHUP
    # -- Session limits ----------------------------------------------------------
    max_message_size: int = 25 * MIB  # SIZE advertised; larger → 552 5.3.4
    max_recipients: int = 100  # past it → 452 4.5.3 per recipient
    # Message data being received or waiting for the store, all sessions together
    # (spooled to disk past 64 KiB each); a DATA that would pass it → 452 4.3.1.
    inflight_bytes_limit: int = 1024 * MIB
    max_connections: int = 4096  # global cap → 421 4.7.0
    max_connections_per_client: int = 256  # per client address → 421 4.7.0
    # A client that sends no complete command for session_timeout seconds gets
    # "421 4.4.2" and is disconnected (partial lines and a stalled DATA phase too: the
    # whole DATA phase must end within it); one that does not even read that reply is
    # aborted after min(5 s, session_timeout). Commands reset this timer, so a session
    # that queues no message for session_without_mail seconds (NOOP keep-alives,
    # refused MAILs) is closed the same way. 0 disables the latter.
    session_timeout: float = 300.0
    session_without_mail: float = 1800.0
    # Postfix's soft/hard error limits: every refused command (4xx/5xx reply, a
    # 452 4.5.3 recipient overshoot excepted) counts; past soft_error_limit each reply
    # waits, the waits adding up to at most 3 s; the hard_error_limit-th error (at most
    # 20) is answered "421 4.7.0" and closes. A queued message starts the count over.
    soft_error_limit: int = 10
    hard_error_limit: int = 20
    header_size_limit: int = 100 * 1024  # header section in bytes; larger → 552 5.3.4
    # Received: headers a message may carry, this relay's own included (Postfix's
    # hopcount_limit): a mail loop between MTAs ends here → 554 5.4.6.
    hopcount_limit: int = 50
    # Display names (and comments, encoded words) that spell an address other than
    # the mailbox's own ("evil\@evil.com" <boss@b.example>, full-width ＠) → 550 5.7.1.
    refuse_lookalike_display_names: bool = True
    # Name the authenticated user in the Received: header (Postfix's
    # smtpd_sasl_authenticated_header); off, the login stays private.
    received_names_user: bool = False
    # Where RCPT TO:<Postmaster> (no domain, any case; RFC 5321 4.5.1) is delivered;
    # "" = refused with 550 5.1.1 naming this setting.
    postmaster_address: str = ""
    # -- AUTH --------------------------------------------------------------------
    auth_failures_per_connection: int = 3  # the 3rd failure → 421 4.7.0 and close
    auth_failures_per_client: int = 50  # failures from one address (IPv6: /64) within the window → 421
    auth_failures_per_user: int = 20  # failures for one username from one address within the window → 421
    auth_failure_window: float = 600.0
    auth_concurrency: int = 2  # argon2 verifications running at once (threads)
    # A client address (IPv4 /32, IPv6 /64) with failures in the window waits before
    # each failure reply: nothing for the first auth_free_failures, then
    # auth_failure_delay doubling per failure, capped at 5 s.
    auth_free_failures: int = 3
    auth_failure_delay: float = 0.5
    auth_failure_delay_max: float = 5.0  # never more than 5 s
    # -- Lease -------------------------------------------------------------------
    heartbeat_interval: float = 1.0
    stale_after: float = 10.0  # an older heartbeat means that relay died: take over
    shutdown_grace: float = 10.0  # sessions in progress get this long on stop
    # -- Store -------------------------------------------------------------------
    # PostgreSQL (--db postgresql://…): connections one relay process may hold at once.
    # 4 relays × (10 + 2 listening + 1 advisory lock) = 52 of the server's default max_connections=100.
    store_pool_size: int = 10
    # -- Delivery (read by relay.delivery / relay.scheduler) ----------------------
    retry_base: float = 60.0  # first retry after ~this long, doubling
    retry_max: float = 3600.0  # backoff ceiling
    queue_lifetime: float = 5 * 86400.0  # then failed + bounce
    message_lease: float = 300.0  # a claimed message is leased this long
    connect_timeout: float = 30.0
    command_timeout: float = 60.0
    retention_days: float = 30.0  # finished messages, bodies and events are pruned after
    recipients_per_transaction: int = 50  # larger recipient lists go in several transactions (Postfix: 50)
    # MX delivery (`queue next-hop mx`): the port MX hosts are dialled on (tests run
    # them on 127.0.0.x at a high port; never a store value), and each destination's
    # share of `parallel` (also never more than parallel - 1 while others wait).
    mx_port: int = 25
    max_connections_per_destination: int = 10
    # -- Logs --------------------------------------------------------------------
    log_format: str = "text"  # "text" or "json" (one object per line); see relay/logs.py
    log_file: Path | None = None  # None: stderr (journald); a file is reopened on SIGHUP
    log_level: str = "info"  # the relay's own lines: debug, info (an event line per message), warning or error
    # -- Metrics -------------------------------------------------------------------
    metrics_listen: str | None = None  # "HOST:PORT" or "PORT" (127.0.0.1): /metrics and /healthz
    # /healthz says "delivery stuck" (503) when delivery is not paused, a message has been
    # ready to send for this long and no delivery attempt finished in that time; 0 = off.
    stuck_after: float = 600.0
    # The metrics listener also answers the RFC 8058 one-click unsubscribe POST
    # (/unsubscribe/TOKEN, tokens from List-Unsubscribe headers); put it behind HTTPS.
    unsubscribe_endpoint: bool = False
    # -- Seeds for runtime controls (written to the store only when unset) -------
    next_hop: str | None = None  # "host:port"
    rate: float | None = None  # messages per second, 0 = unlimited
    parallel: int | None = None  # next-hop connections
    paused: bool | None = None
    starvation_share: float | None = None  # 0 = strict priority (off) … 0.5; see `queue starvation`

    def resolved_tls_ports(self) -> str:
        """The implicit-TLS port spec in force ("" = none)."""
        if self.tls_ports is not None:
            return self.tls_ports
        return DEFAULT_TLS_SPEC if self.ports == DEFAULT_SPEC else ""

    def resolved_server_name(self) -> str:
        return self.server_name or socket.gethostname() or "localhost"


def server_name_warning(server_name: str) -> str | None:
    """Why a server name without a dot is a problem, with the fix; None when it has one.
    Bounces say ``Reporting-MTA: dns; <name>`` and come from an address at it, and the
    relay greets next hops with it: ``vm`` is no name another host can use."""
    name = server_name.strip().rstrip(".")
    if "." in name or name.startswith("[") or ":" in name:
        return None
    return (
        f"server name {name!r} has no dot: next hops see it in EHLO and bounces name it as their "
        "reporting MTA — set server_name (e.g. --server-name relay.example.com) and "
        "`smtpplus senders settings --system-sender ADDRESS`"
    )


RUNTIME_SEEDS: dict[str, str] = {
    "next_hop": Keys.NEXT_HOP,
    "rate": Keys.RATE,
    "parallel": Keys.PARALLEL,
    "paused": Keys.PAUSED,
    "starvation_share": Keys.STARVATION_SHARE,
}

_FIELDS = {f.name: f for f in dataclasses.fields(RelayConfig)}
_HINTS = typing.get_type_hints(RelayConfig)


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> RelayConfig:
    """Defaults ← TOML (``path`` or ``$SMTPPLUS_CONFIG``) ← environment ← ``overrides``."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    file_path = path if path is not None else env.get(CONFIG_ENV) or None
    if file_path is not None:
        values.update(_read_toml(Path(file_path)))
    for name in _FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw, source=f"${ENV_PREFIX}{name.upper()}")
    for name, value in (overrides or {}).items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown relay setting {name!r}")
        if value is not None:
            values[name] = _coerce(name, value, source=f"--{name.replace('_', '-')}")
    if "ports" in values and "tls_ports" not in values:
        # Ports given without tls_ports: only those ports (no 465 beside them).
        values["tls_ports"] = ""
    hard = values.get("hard_error_limit", RelayConfig.hard_error_limit)
    soft = values.get("soft_error_limit", RelayConfig.soft_error_limit)
    if not 1 <= hard <= 20 or not 0 <= soft < hard:
        raise ConfigError(f"error limits soft {soft} / hard {hard}: need 0 <= soft < hard <= 20")
    share = values.get("starvation_share")
    if share is not None and not 0 <= share <= 0.5:  # the store's range (relay.store.queue)
        raise ConfigError(f"starvation_share {share:g} is out of range: 0 (off) to 0.5")
    mx_port = values.get("mx_port")
    if mx_port is not None and not 1 <= mx_port <= 65535:
        raise ConfigError(f"mx_port {mx_port} is out of range: 1 to 65535 (25 for the internet)")
    hops = values.get("hopcount_limit")
    if hops is not None and hops < 2:
        raise ConfigError(f"hopcount_limit {hops} must be at least 2 (a message carries this relay's Received: too)")
    per_destination = values.get("max_connections_per_destination")
    if per_destination is not None and per_destination < 1:
        raise ConfigError(f"max_connections_per_destination {per_destination} must be at least 1")
    log_format = values.get("log_format")
    if log_format is not None and log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format {log_format!r} is not a log format: use text or json")
    log_level = values.get("log_level")
    if log_level is not None:
        if log_level.strip().lower() not in LOG_LEVELS:
            raise ConfigError(f"log_level {log_level!r} is not a log level: use {', '.join(LOG_LEVELS)}")
        values["log_level"] = log_level.strip().lower()
    postmaster = str(values.get("postmaster_address", "")).strip()
    if postmaster and check_address(postmaster).problem is not None:
        problem = check_address(postmaster).problem
        raise ConfigError(f"postmaster_address {postmaster!r} is not a usable address ({problem}): set it to e.g. ops@example.com")
    return RelayConfig(**values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist — check --config or ${CONFIG_ENV}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in _TABLES and isinstance(value, dict):
            for inner_key, inner_value in value.items():
                flat[_known(path, f"{key}.{inner_key}", inner_key)] = inner_value
        else:
            flat[_known(path, key, key)] = value
    return {name: _coerce(name, value, source=f"{path}: {name}") for name, value in flat.items()}


def _known(path: Path, shown: str, key: str) -> str:
    if key not in _FIELDS:
        # An installed relay has no relay/config.py to read: name the likely setting.
        close = difflib.get_close_matches(key, _FIELDS, n=1)
        fix = f"did you mean {close[0]!r}?" if close else "every setting is in docs/configuration.md"
        raise ConfigError(f"config file {path}: unknown key {shown!r} — {fix}")
    return key


def _coerce(name: str, value: Any, *, source: str) -> Any:
    """Turn a TOML, environment or flag value into the field's type."""
    if name == "tls_ports" and isinstance(value, str) and value.strip().lower() in {"", "none"}:
        return ""  # no implicit-TLS port at all (None would mean "the default")
    hint = _HINTS[name]
    optional = False
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        optional = type(None) in args
        hint = next(a for a in args if a is not type(None))
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in {"", "none"}):
        if optional:
            return None
        raise ConfigError(f"{source}: a value is required")
    try:
        if hint is bool:
            return _to_bool(value)
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is Path:
            return Path(str(value)).expanduser()
        if hint is str:
            if not isinstance(value, str | int):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        raise ConfigError(f"{source}: unsupported setting type")
    raise ConfigError(f"{source}: {value!r} is not a valid {getattr(hint, '__name__', hint)}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(value)
