"""A small sd_notify client: tell systemd the relay is ready, alive and stopping.

systemd (``Type=notify``) passes ``$NOTIFY_SOCKET``: a datagram socket path, or an
abstract-namespace name written with a leading ``@``. Each notification is one
datagram of ``KEY=value`` lines (see sd_notify(3)). Outside systemd the variable is
unset and every call here does nothing, so the relay never depends on it — and no C
library (libsystemd) is needed.

Public API
----------
``Notifier(environ=None)``
    ``enabled``; ``notify(**fields) -> bool`` (``READY="1"`` → ``READY=1``);
    ``ready(status)``, ``stopping(status)``, ``status(text)``, ``watchdog()``.
    ``watchdog_interval`` is half of ``$WATCHDOG_USEC`` in seconds, or None when the
    unit has no ``WatchdogSec=`` (or the watchdog is meant for another process).
``await notifier.keep_alive()``
    Sends ``WATCHDOG=1`` every ``watchdog_interval`` from the event loop, so a stalled
    loop stops the pings and systemd restarts the relay. Returns at once without one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("smtpplus.relay")


def socket_address(value: str) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as an address for ``sendto``: ``@name`` is abstract (a NUL
    byte first). Anything but an absolute path or ``@name`` is not for us."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str) -> bool:
        """Send one datagram; False when there is no socket or it cannot be reached
        (systemd gone, a wrong path): worth a log line, never a reason to stop."""
        if self.address is None:
            return False
        payload = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload, self.address)
        except OSError as exc:
            log.warning("sd_notify: cannot reach $NOTIFY_SOCKET: %s", exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify(READY="1", STATUS=status) if status else self.notify(READY="1")

    def stopping(self, status: str = "") -> bool:
        return self.notify(STOPPING="1", STATUS=status) if status else self.notify(STOPPING="1")

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG="1")

    async def keep_alive(self) -> None:
        if self.address is None or self.watchdog_interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(self.watchdog_interval)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half the watchdog timeout (systemd's own advice), when the watchdog is ours."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000


def _one_line(value: str) -> str:
    # A newline would start a new KEY=value assignment in the datagram.
    return " ".join(str(value).splitlines())
