"""Shared test fixtures: real store files in tmp_path, the CLI as a subprocess, TLS certs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.dns import DnsServer
from relay.store import open_store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "smtpplus.db"


@pytest.fixture
def db(store_path: Path) -> Iterator[Any]:
    conn = open_store(store_path)
    yield conn
    conn.close()


class Cli:
    """Runs ``smtpplus`` as a real subprocess against one store (given as SMTPPLUS_DB)."""

    def __init__(self, store: Path, env: dict[str, str]) -> None:
        self.store = store
        self.env = env

    def __call__(self, *args: str, input: str | None = None, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-c", "from console.cli import main; main()", *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            cwd=ROOT,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"smtpplus {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        proc = self(*args, "--json", check=True)
        return json.loads(proc.stdout)


@pytest.fixture
def cli(store_path: Path, tmp_path: Path) -> Cli:
    env = dict(os.environ)
    env["SMTPPLUS_DB"] = str(store_path)
    env["HOME"] = str(tmp_path / "home")
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg-config")
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    env.pop("SMTPPLUS_CONFIG", None)
    return Cli(store_path, env)


@pytest.fixture(scope="session")
def tls_ca() -> Any:
    import trustme

    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(tls_ca: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A server certificate for 127.0.0.1/localhost and the CA that signed it."""
    cert = tls_ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    paths = {"cert": d / "cert.pem", "key": d / "key.pem", "ca": d / "ca.pem"}
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(paths["cert"], append=True)
    cert.private_key_pem.write_to_path(paths["key"])
    tls_ca.cert_pem.write_to_path(paths["ca"])
    return paths


# -- PostgreSQL (tests/pg.py): one private cluster per session (per xdist worker) ----


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A private PostgreSQL cluster with the schema in a template database. Never
    skipped: where no server can be found this fails with one line saying how to
    install one."""
    from tests.pg import NoServer, session_cluster, stop_session_cluster

    try:
        cluster = session_cluster()
    except NoServer as exc:
        pytest.fail(str(exc), pytrace=False)
    yield cluster
    from relay.store.postgres.bridge import close_pools

    close_pools()
    stop_session_cluster()


@pytest.fixture
def pg_url(pg_cluster: Any) -> Iterator[str]:
    """A fresh PostgreSQL store (a database cloned from the schema template)."""
    url = pg_cluster.new_database()
    yield url
    from relay.store.postgres.bridge import close_pool

    close_pool(url)
    pg_cluster.drop_database(url)


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    """A real authoritative DNS server on 127.0.0.1 (harness.dns), empty until a test adds records."""
    server = DnsServer()
    await server.start()
    yield server
    await server.stop()
