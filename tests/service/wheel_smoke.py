"""Smoke test of an installed wheel, run by ``nox -s wheel`` with the wheel's venv Python
from a directory outside the checkout (not collected by pytest: no ``test_`` prefix).

    python wheel_smoke.py WORKDIR

1. smtpplus is imported from the venv, not from a checkout;
2. ``smtpplus relay`` starts as a daemon (ready file), serves SMTP, /metrics and
   /healthz, logs JSON lines and stops on SIGTERM;
3. the demo (``smtpplus demo``'s app, headless) starts its relay and sink, shows every
   screen (each loads its .tcss from the wheel) and delivers a burst to its sink.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def check_installed() -> None:
    import console
    import fixtures
    import harness
    import relay

    for module in (console, fixtures, harness, relay):
        where = Path(module.__file__ or "").resolve()
        if not where.is_relative_to(Path(sys.prefix).resolve()):
            sys.exit(f"wheel smoke: {module.__name__} comes from {where}, not from the venv {sys.prefix}")
    print(f"wheel smoke: smtpplus imported from {Path(relay.__file__ or '').parent.parent}")


def check_relay(work: Path) -> None:
    smtpplus = shutil.which("smtpplus", path=str(Path(sys.executable).parent))
    if smtpplus is None:
        sys.exit("wheel smoke: no smtpplus script in the venv")
    ready = work / "relay.ready.json"
    env = dict(os.environ, SMTPPLUS_DATA_DIR=str(work / "relay-data"))
    proc = subprocess.Popen(
        [smtpplus, "relay", "--host", "127.0.0.1", "--ports", "0", "--db", str(work / "relay.db"), "--ready-file", str(ready),
         "--metrics-listen", "0", "--log-format", "json"],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None:
                sys.exit(f"wheel smoke: smtpplus relay exited at start: {proc.stderr.read() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                sys.exit("wheel smoke: smtpplus relay not ready after 60 s")
            time.sleep(0.1)
        facts = json.loads(ready.read_text())
        [port] = facts["served"]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            greeting = conn.recv(200)
        if not greeting.startswith(b"220"):
            sys.exit(f"wheel smoke: the relay greeted with {greeting!r}")
        for path, wanted in (("/healthz", b"ok"), ("/metrics", b'smtpplus_ports_served{tls="starttls"} 1.0')):
            with urllib.request.urlopen(f"http://{facts['metrics']}{path}", timeout=10) as response:
                if wanted not in response.read():
                    sys.exit(f"wheel smoke: {path} lacks {wanted!r}")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    if code != 0:
        sys.exit(f"wheel smoke: smtpplus relay exited {code}")
    if proc.stderr is not None:
        for line in proc.stderr.read().splitlines():
            json.loads(line)  # --log-format json: every line is one object
    print(f"wheel smoke: smtpplus relay served port {port}, /metrics and /healthz, logged JSON and stopped cleanly")


async def check_demo(work: Path) -> None:
    from console.demo import DemoApp, seed_demo
    from relay.config import RelayConfig
    from relay.store import open_store

    store = work / "demo.db"
    db = open_store(store)
    try:
        seed = seed_demo(db, members=5)
    finally:
        db.close()
    config = RelayConfig(host="127.0.0.1", ports="0", data_dir=work / "demo-data", server_name="localhost")
    app = DemoApp(store, seed=seed, sink_port=0, relay_config=config)
    async with app.run_test(size=(120, 40)) as pilot:
        await _until(pilot, lambda: app.relay_mode == "in-process" and app.sink is not None and app.relay is not None
                     and bool(app.relay.served))
        for key in ("1", "2", "3", "4", "5", "f1", "escape", "1"):
            await pilot.press(key)
            await pilot.pause()
        await pilot.press("b")
        await _until(pilot, lambda: len(app.sink.messages) > 0)
        delivered = len(app.sink.messages)
    print(f"wheel smoke: the demo showed every screen and its sink got {delivered} message(s)")


async def _until(pilot: object, condition: object, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            sys.exit("wheel smoke: the demo did not get there in time")
        await pilot.pause(0.1)  # type: ignore[attr-defined]


def main() -> None:
    work = Path(sys.argv[1])
    check_installed()
    check_relay(work)
    asyncio.run(check_demo(work))


if __name__ == "__main__":
    main()
