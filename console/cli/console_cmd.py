"""``smtpplus console`` and ``smtpplus demo``: the only commands that import Textual."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

from console.cli import common
from console.cli.common import CliError


def _open_checked(path: common.StoreLocation) -> None:
    """Create or upgrade the store before the UI starts, so a bad path is one line."""
    from relay.store import open_store

    open_store(path).close()


def _same_store(a: common.StoreLocation, b: common.StoreLocation) -> bool:
    from relay.store.postgres.location import is_postgres  # text only: loads no driver

    if is_postgres(a) or is_postgres(b):
        return os.fspath(a) == os.fspath(b)
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


@click.command("console")
@common.db_option
@click.option("--no-relay", is_flag=True,
              help="Do not run the relay here: attach to the store a relay daemon serves (shows its heartbeat).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Relay settings (TOML) for the in-process relay (default: $SMTPPLUS_CONFIG).")
def console(db_path: Path | None, no_relay: bool, config_path: Path | None) -> None:
    """Open the operator console on the live queue.

    By default the relay runs inside the console's process (an asyncio task; switching
    screens never stops it). When a live relay already holds the store's lease, or with
    --no-relay, the console attaches to that store and shows whether the relay is alive.
    ctrl+q quits; F1 or ? lists every key; ctrl+p opens the command palette.
    """
    path = common.resolve_db_path(db_path)
    _open_checked(path)
    config = None
    if not no_relay:
        from relay.config import load_config

        config = load_config(config_path)
    from console.app import ConsoleApp

    app = ConsoleApp(path, run_relay=not no_relay, relay_config=config)
    app.run()
    if app.return_code:
        sys.exit(app.return_code)


@click.command("demo")
@common.db_option
@click.option("--ports", default="25,1025-5000", show_default=True,
              help="Ports the demo relay listens on (127.0.0.1 only); ports in use are skipped and reported.")
@click.option("--sink-port", default=8025, show_default=True, type=click.IntRange(0, 65535),
              help="Capture sink port (the relay's next hop); a free one is used when it is taken.")
def demo(db_path: Path | None, ports: str, sink_port: int) -> None:
    """Open the demo: console, relay, capture sink and sample traffic on a store of its own.

    Without --db the store goes into a new temporary directory; the default store is
    never touched. The relay listens on 127.0.0.1 only and delivers to a capture sink
    at about 20 messages a second. Press b to send a burst of mixed-priority mail
    through the real SMTP path and watch priority 1 overtake the campaign.
    """
    from console.demo import demo_data_dir, demo_farewell
    from relay.config import RelayConfig
    from relay.ports import parse_port_spec
    from relay.store import default_db_path

    parse_port_spec(ports)  # a bad spec is a one-line error before anything starts
    if db_path is None:
        data_dir = Path(tempfile.mkdtemp(prefix="smtpplus-demo-"))
        path = data_dir / "demo.db"
    else:
        path = db_path
        if _same_store(path, default_db_path()):
            raise CliError(f"{common.shown(path)} is the default store — the demo uses a store of its own: pass another --db")
        data_dir = demo_data_dir(path)
    _open_checked(path)

    from console.demo import DemoApp, seed_demo
    from relay.store import open_store

    db = open_store(path)
    try:
        seed = seed_demo(db)
    finally:
        db.close()
    config = RelayConfig(host="127.0.0.1", ports=ports, data_dir=data_dir)  # DemoApp names it relay.demo.example
    app = DemoApp(path, seed=seed, sink_port=sink_port, relay_config=config)
    app.run()
    click.echo(demo_farewell(path))
    if app.return_code:
        sys.exit(app.return_code)
