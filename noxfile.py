"""nox sessions: tests, lint, typecheck, demo, sweep, bench, wheel."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "relay", "console", "harness", "tests", "noxfile.py", "dev.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("smtpplus", "demo", *session.posargs)


@nox.session
def sweep(session: nox.Session) -> None:
    """The full port sweep: every served port of the default spec (25,587,1025-5000 STARTTLS,
    465 implicit TLS), TLS + AUTH + one message."""
    session.install("-e", ".")
    session.run("smtpplus", "harness", "run", "--start-relay", "fixtures/scenarios/port_sweep.toml", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    session.install("-e", ".")
    for name in ("accept", "e2e", "priority", "console"):
        session.run("smtpplus", "harness", "bench", name, *session.posargs)


@nox.session
def wheel(session: nox.Session) -> None:
    """Build the wheel, install it into a fresh venv outside the checkout and run it from
    there: --help, the version, the relay daemon, the demo's app and two shipped
    scenarios with --start-relay. Not a default session (it takes a while); CI runs it."""
    work = Path(tempfile.mkdtemp(prefix="smtpplus-wheel-"))
    try:
        dist = work / "dist"
        session.run("python", "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT))
        [built] = dist.glob("smtpplus-*.whl")
        venv = work / "venv"
        session.run(sys.executable, "-m", "venv", str(venv), external=True)
        bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
        python, smtpplus = str(bin_dir / "python"), str(bin_dir / "smtpplus")
        session.run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(built), external=True)
        # Outside the checkout, with the user's directories in the work dir: nothing is
        # imported from the source tree, nothing is written to the user's data directory.
        env = {
            "HOME": str(work / "home"),
            "XDG_DATA_HOME": str(work / "xdg-data"),
            "XDG_CONFIG_HOME": str(work / "xdg-config"),
            "SMTPPLUS_DB": str(work / "default.db"),
            "PYTHONPATH": "",
        }
        shutil.copy(ROOT / "tests" / "service" / "wheel_smoke.py", work / "wheel_smoke.py")
        with session.chdir(work):
            session.run(smtpplus, "--help", external=True, env=env, silent=True)
            session.run(smtpplus, "--version", external=True, env=env)
            session.run(python, "-c", "import importlib.metadata as m; print('metadata:', m.version('smtpplus'))", external=True, env=env)
            session.run(python, "wheel_smoke.py", str(work), external=True, env=env)
            for scenario in ("bad_input", "priority"):
                session.run(smtpplus, "harness", "run", "--start-relay", scenario, external=True, env=env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
