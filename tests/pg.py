"""A real PostgreSQL server for the tests: a private cluster per test session.

Where the server comes from (measured on this machine, as root; see
docs/postgresql.md): the machine's own packages first (``pg_config --bindir``, or
Debian's ``/usr/lib/postgresql/<version>/bin``), else the binaries of the
``pgserver`` wheel (PostgreSQL 16) from the test extra. postgres refuses to run as
root, so as root the cluster runs as the ``postgres`` user (``nobody`` where there is
none) via ``runuser``, in a directory of its own under /tmp that user may enter
(pytest's tmp root is mode 0700). It listens on 127.0.0.1 on a free port and on a
unix socket in that directory; fsync is off (a test cluster: commits still wait
for the WAL write, ``synchronous_commit`` is on as in production).

Each test gets a database cloned from a template that already has the schema
(``CREATE DATABASE … TEMPLATE``): milliseconds instead of a migration per test.
The cluster is stopped and its directory removed at the end of the session.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUPERUSER = "smtpplus"
TEMPLATE = "smtpplus_template"
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

    def __init__(self, bindir: Path, source: str) -> None:
        self.bindir = bindir
        self.source = source
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
            f"-p {self.port} -h 127.0.0.1 -k {self.root} -F -c max_connections=200 "
            "-c shared_buffers=32MB -c log_min_messages=warning"
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
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def new_database(self, template: str | None = TEMPLATE) -> str:
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

    def make_template(self) -> None:
        """The template every test's database is cloned from: the schema, migrated
        once by the store's own code."""
        from relay.store.postgres.connection import open_store

        self.admin(f"CREATE DATABASE {TEMPLATE} TEMPLATE template0")
        open_store(self.url(TEMPLATE)).close()


    def fill_up(self, db: Any) -> None:
        """Make the store ``db`` really full: its settings table moves to a
        tablespace on a small tmpfs, which a filler table then fills to ENOSPC, and
        its values are stored uncompressed. The next big setting is PostgreSQL's
        ``53100 disk_full``. Needs root (mount)."""
        from relay.store.errors import StoreFull

        if os.geteuid() != 0:
            raise NoServer("a full PostgreSQL store is made with a tmpfs mount, which needs root")
        name = db.execute("SELECT current_database()").fetchone()[0]
        mount = self.root / f"full-{name}"
        mount.mkdir()
        owner = pwd.getpwnam(self.user) if self.user else pwd.getpwuid(os.getuid())
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size=1m,mode=0700,uid={owner.pw_uid},gid={owner.pw_gid}", "tmpfs", str(mount)],
            check=True, capture_output=True,
        )
        space = f"full_{name}"
        db.execute(f"CREATE TABLESPACE {space} LOCATION '{mount}'")
        db.execute(f"ALTER TABLE settings SET TABLESPACE {space}")
        db.execute("ALTER TABLE settings ALTER COLUMN value SET STORAGE EXTERNAL")
        db.execute(f"CREATE TABLE filler (data BYTEA) TABLESPACE {space}")
        db.execute("ALTER TABLE filler ALTER COLUMN data SET STORAGE EXTERNAL")
        with contextlib.suppress(StoreFull):
            for _ in range(1000):
                db.execute("INSERT INTO filler(data) VALUES (?)", (os.urandom(32 * 1024),))


_session: Cluster | None = None


def session_cluster() -> Cluster:
    """This process's cluster (one per xdist worker), started on first use and
    stopped at exit or by :func:`stop_session_cluster`. Raises :class:`NoServer`."""
    global _session
    if _session is None:
        _session = start_cluster()
    return _session


def stop_session_cluster() -> None:
    global _session
    cluster, _session = _session, None
    if cluster is not None:
        cluster.stop()


def start_cluster() -> Cluster:
    bindir, source = find_bindir()
    cluster = Cluster(bindir, source)
    atexit.register(cluster.stop)  # also when the session ends without its teardown
    try:
        cluster.start()
        cluster.make_template()
    except BaseException:
        cluster.stop()
        raise
    return cluster
