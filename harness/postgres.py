"""A private PostgreSQL server on this machine, for benchmarks and tests.

Where the server comes from: the machine's own packages first (``pg_config
--bindir``, or Debian's ``/usr/lib/postgresql/<version>/bin``), else the binaries of
the ``pgserver`` wheel (PostgreSQL 16) from the test extra. postgres refuses to run
as root, so as root the cluster runs as the ``postgres`` user (``nobody`` where there
is none) via ``runuser``, in a directory of its own under /tmp that user may enter.
It listens on 127.0.0.1 on a free port and on a unix socket in that directory.
``fsync=False`` (the tests' clusters) turns fsync off; commits still wait for the WAL
write, ``synchronous_commit`` is on as in production. A benchmark keeps fsync on,
as the SQLite store's ``synchronous = FULL`` does.

(tests/pg.py builds its per-session cluster on this; ``smtpplus harness bench
scale`` starts one when not given ``--db postgresql://…``.)
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SUPERUSER = "smtpplus"
KEEP_DATABASES = 4
INSTALL_HINT = (
    "no PostgreSQL server for the tests: install one (Debian: apt-get install postgresql) "
    "or the test extra (pip install -e '.[test]', which brings pgserver)"
)


class NoServer(RuntimeError):
    pass


def find_bindir() -> tuple[Path, str]:
    """Where initdb/pg_ctl/postgres are, and which source that is
    (``SMTPPLUS_TEST_PG=pgserver`` skips the system's, to test the fallback)."""
    if os.environ.get("SMTPPLUS_TEST_PG", "") != "pgserver":
        for candidate in _system_bindirs():
            if (candidate / "initdb").exists() and (candidate / "postgres").exists():
                return candidate, f"system ({candidate})"
    # Only the wheel's binaries: its Python API, run as root, adds a system user and
    # opens up the permissions of every directory above its data (measured).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        bindir = Path(spec.origin).parent / "pginstall" / "bin"
        if (bindir / "initdb").exists():
            return bindir, f"pgserver wheel ({bindir})"
    raise NoServer(INSTALL_HINT)


def _system_bindirs() -> Iterator[Path]:
    env = os.environ.get("SMTPPLUS_TEST_PG_BINDIR")
    if env:
        yield Path(env)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                yield Path(out.stdout.strip())
    # Debian's server package does not put initdb on PATH; newest version first.
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        yield Path(found)


def _version_key(path: str) -> int:
    with contextlib.suppress(ValueError):
        return int(Path(path).parent.name)
    return 0


def _run_as() -> str | None:
    """The user postgres runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise NoServer("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as — create one (useradd postgres)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One private PostgreSQL cluster (initdb + pg_ctl), stopped and removed by
    :meth:`stop`."""

    def __init__(self, bindir: Path, source: str, *, fsync: bool = False, small: bool = True) -> None:
        self.bindir = bindir
        self.source = source
        self.fsync = fsync
        # Test clusters (one per xdist worker) keep their memory small; a bench's
        # server runs with PostgreSQL's own defaults, as an installed one would.
        self.small = small
        self.user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="smtpplus-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = 0
        self.start_seconds = 0.0
        self._names = itertools.count()
        self._made: list[str] = []
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o755)

    def _command(self, *argv: str) -> list[str]:
        if self.user is None:
            return list(argv)
        return ["runuser", "-u", self.user, "--", *argv]

    def _run(self, *argv: str, timeout: float = 120) -> None:
        proc = subprocess.run(self._command(*argv), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            said = " / ".join(line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip())
            raise NoServer(f"{Path(argv[0]).name} failed ({proc.returncode}): {said[:300]} — {INSTALL_HINT}")

    def start(self) -> Cluster:
        began = time.monotonic()
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions",
        )
        # The free port may be taken between our look and the server's bind (another
        # xdist worker's cluster): then another one.
        for attempt in range(3):
            try:
                self.restart()
                break
            except NoServer:
                if attempt == 2:
                    raise
                self.port = 0
        self.start_seconds = time.monotonic() - began
        return self

    def restart(self) -> None:
        """Start the server (again, after :meth:`halt`), on a new free port the
        first time and on the same one after."""
        if not self.port:
            self.port = free_port()
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.root}{'' if self.fsync else ' -F'} -c max_connections=200 "
            f"{'-c shared_buffers=32MB ' if self.small else ''}-c log_min_messages=warning"
        )
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-o", options,
                  "-l", str(self.root / "server.log"), "start")

    def halt(self, mode: str = "fast") -> None:
        """Stop the server, keep its data (``restart`` brings it back)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def stop(self) -> None:
        """Stop the server and remove the cluster."""
        with contextlib.suppress(NoServer, OSError, subprocess.SubprocessError):
            self.halt("immediate")
        for mount in self.mounts():
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def mounts(self) -> list[str]:
        with contextlib.suppress(OSError):
            lines = Path("/proc/mounts").read_text().splitlines()
            return [line.split()[1] for line in lines if line.split()[1].startswith(str(self.root) + "/")]
        return []

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        auth = SUPERUSER if password is None else f"{SUPERUSER}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser, outside a transaction (CREATE DATABASE)."""
        from relay.store.postgres.connection import connect, store_errors

        with store_errors(self.url()):
            conn = connect(self.url())
            try:
                conn.execute(sql)
            finally:
                conn.close()

    def new_database(self, template: str | None = None) -> str:
        """A fresh database (a copy of ``template``; ``None``: empty), its URL. Only
        the newest few are kept: tests run one after another in a process, so an
        older one's test is over (its connections are ended by the drop)."""
        for old in self._made[:-KEEP_DATABASES]:
            self.drop_database(old)
        self._made = self._made[-KEEP_DATABASES:]
        name = f"t{os.getpid()}_{next(self._names)}"
        # FILE_COPY: a copy of the template's files (with fsync off, faster than
        # WAL-logging every page of it, the default).
        source = f"TEMPLATE {template} STRATEGY FILE_COPY" if template else "TEMPLATE template0"
        self.admin(f"CREATE DATABASE {name} {source}")
        self._made.append(self.url(name))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with contextlib.suppress(Exception):
            self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def private_database(name: str = "bench") -> Iterator[tuple[str, str]]:
    """A private server (fsync on, PostgreSQL's default memory settings) with one empty
    database: (its URL, where the server comes from). Stopped and removed on leaving, also after a SIGTERM (a timeout's),
    which unwinds like Ctrl-C. Raises :class:`NoServer` with one line on failure."""
    bindir, source = find_bindir()
    cluster = Cluster(bindir, source, fsync=True, small=False)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        cluster.start()
        cluster.admin(f"CREATE DATABASE {name}")
        yield cluster.url(name), source
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
