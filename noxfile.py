"""nox sessions: tests, lint, typecheck, demo, sweep, bench."""

from __future__ import annotations

import nox

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
    """The full port sweep: every served port of 25,1025-5000, STARTTLS + AUTH + one message."""
    session.install("-e", ".")
    session.run("smtpplus", "harness", "run", "--start-relay", "--ports", "25,1025-5000", "fixtures/scenarios/port_sweep.toml", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    session.install("-e", ".")
    for name in ("accept", "e2e", "priority", "console"):
        session.run("smtpplus", "harness", "bench", name, *session.posargs)
