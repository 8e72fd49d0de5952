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
The cluster is stopped and its directory removed at the end of the session. The
server itself is harness/postgres.py (the benchmarks start one too).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import subprocess
from typing import Any

from harness import postgres as _server
from harness.postgres import INSTALL_HINT, SUPERUSER, NoServer, find_bindir, free_port

__all__ = ["INSTALL_HINT", "SUPERUSER", "TEMPLATE", "Cluster", "NoServer", "find_bindir", "free_port", "session_cluster"]

TEMPLATE = "smtpplus_template"


class Cluster(_server.Cluster):
    """The harness's private cluster (harness/postgres.py), fsync off, with the
    schema template every test's database is cloned from."""

    def new_database(self, template: str | None = TEMPLATE) -> str:
        return super().new_database(template)

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
