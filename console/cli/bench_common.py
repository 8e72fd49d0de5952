"""What every ``smtpplus harness bench …`` command shares: ``--check``, running the
bench on an event loop, and showing its :class:`harness.bench.report.BenchReport`
the one way (a rich table, or ``--json``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from console.cli.common import CliError, print_json, stdout_console

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_LOOP = "uvloop" if sys.platform.startswith("linux") else "asyncio"


def check_option(f: F) -> F:
    return click.option("--check", is_flag=True, help="Exit 1 when a figure misses its target (after the report).")(f)


def run_on_loop(coro: Coroutine[Any, Any, Any], loop: str = DEFAULT_LOOP) -> Any:
    """Run a bench coroutine on uvloop or the plain asyncio loop; a bench that could
    not measure (:class:`BenchError`) becomes a one-line CLI error."""
    import asyncio

    from harness.bench.report import BenchError

    try:
        if loop == "uvloop":
            import uvloop

            return uvloop.run(coro)
        return asyncio.run(coro)
    except BenchError as exc:
        raise CliError(str(exc)) from None


def show_report(report: Any, *, as_json: bool, check: bool) -> None:
    """Print the report (table or JSON); with ``check``, exit 1 naming each missed target."""
    if as_json:
        print_json(report.to_json())
    else:
        report.print_table(stdout_console())
    if check and not report.ok:
        from harness.bench.report import format_value

        missed = "; ".join(
            f"{f.name} = {format_value(f.value)}{f' {f.unit}' if f.unit else ''} (target {f.target})" for f in report.missed
        )
        raise CliError(f"{report.bench}: target missed: {missed}")
