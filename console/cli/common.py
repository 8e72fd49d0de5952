"""Shared pieces of the CLI: lazy groups, the --db option, one-line errors, JSON output."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import click

if TYPE_CHECKING:
    from relay.store import Connection

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """A one-line error with a non-zero exit (click prints ``Error: …``)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"smtpplus: error: {self.format_message()}", err=True)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from relay.policy import PolicyError
    from relay.ports import PortSpecError
    from relay.priority import PriorityError
    from relay.store import StoreError

    return (StoreError, PolicyError, PriorityError, PortSpecError)


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used.

    It is also the one place that turns errors into one line on stderr: known
    errors print their message; anything unexpected prints its type and message
    (``SMTPPLUS_DEBUG=1`` shows the traceback) — never a traceback by default.
    """

    def __init__(self, *args: Any, commands_spec: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
        super().__init__(*args, **kwargs)
        self.commands_spec = dict(commands_spec or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.commands_spec})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        spec = self.commands_spec.get(cmd_name)
        if spec is None:
            return None
        module_name, _, attribute = spec[0].partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands_spec:
                rows.append((name, self.commands_spec[name][1]))
            else:
                rows.append((name, self.commands[name].get_short_help_str(limit=80)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        # Output still buffered is flushed at exit; a reader gone by then
        # (`smtpplus queue ls | head -1`) must end quietly too, not as a traceback.
        try:
            return super().main(*args, **kwargs)
        except SystemExit:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                _quiet_broken_pipe()
            raise

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:  # --help and --version print while parsing
            return super().parse_args(ctx, args)
        except BrokenPipeError:
            _quiet_broken_pipe()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            _quiet_broken_pipe()
        except KeyboardInterrupt:
            click.echo("smtpplus: interrupted", err=True)
            ctx.exit(130)
        except _expected_errors() as exc:
            raise CliError(str(exc)) from None
        except Exception as exc:
            from relay.store import store_error_for

            store_error = store_error_for(exc)  # a store call made outside open_db's edge
            if store_error is not None:
                raise CliError(str(store_error)) from None
            if os.environ.get("SMTPPLUS_DEBUG"):
                raise
            raise CliError(
                f"internal error ({type(exc).__name__}: {exc}) — rerun with SMTPPLUS_DEBUG=1 for details"
            ) from None


EXIT_SIGPIPE = 141  # what a shell reports for a process ended by SIGPIPE (128 + 13)


def _quiet_broken_pipe() -> NoReturn:
    """The reader of stdout went away (``| head -1``): end at once, with no message,
    as a Unix filter killed by SIGPIPE would. Python ignores SIGPIPE, so the write
    raised EPIPE instead; point stdout at /dev/null so the final flush cannot fail."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    raise SystemExit(EXIT_SIGPIPE)


def lazy_group(name: str, commands_spec: dict[str, tuple[str, str]], help: str) -> LazyGroup:
    return LazyGroup(name=name, commands_spec=commands_spec, help=help)


StoreLocation = str | Path  # a postgresql:// URL (text, as given) or a SQLite file


class StoreLocationType(click.ParamType):
    """``--db``: a ``postgresql://`` URL stays text, exactly as given; anything else is
    a file path (click.Path's checks). Not click.Path for both: pathlib turns
    ``postgresql:///mailstore?host=h`` into ``postgresql:/mailstore?host=h``, read
    back as host ``mailstore`` — a store created in another database."""

    name = "path"
    _file = click.Path(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> StoreLocation:
        from relay.store.postgres.location import (  # text only: loads no driver
            is_postgres,
            store_location,
        )

        if isinstance(value, str) and is_postgres(value):
            return store_location(value)
        return cast(Path, self._file.convert(value, param, ctx))


def db_option(f: F) -> F:
    """``--db PATH`` on every command (else $SMTPPLUS_DB, else the data directory)."""
    return click.option(
        "--db",
        "db_path",
        type=StoreLocationType(),
        default=None,
        help="Store: a file, or a postgresql:// URL (default: $SMTPPLUS_DB, else smtpplus.db in the user's data directory).",
    )(f)


def shown(location: str | os.PathLike[str]) -> str:
    """A store location fit to print: a PostgreSQL URL's password as ``***``."""
    from relay.store.postgres.location import masked  # text only: loads no driver

    return masked(location)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(f)


def resolve_db_path(db_path: StoreLocation | None) -> StoreLocation:
    from relay.store import default_db_path

    return db_path if db_path is not None else default_db_path()


def store_exists(location: StoreLocation) -> bool:
    """Whether a SQLite file exists; a PostgreSQL store always counts as there (the
    server tells when it is not: opening it says unavailable or no store)."""
    from relay.store.postgres.location import is_postgres  # text only: loads no driver

    return is_postgres(location) or Path(location).exists()


@contextmanager
def open_db(db_path: StoreLocation | None, *, create: bool = True) -> Iterator[Connection]:
    """The store for one command. Commands that only read pass ``create=False``: a
    mistyped --db is then ``no store at PATH`` (exit 1), never a new empty store."""
    from relay.store import open_store, store_errors

    path = resolve_db_path(db_path)
    db = open_store(path, create=create)
    try:
        with store_errors(path):
            yield db
    finally:
        db.close()


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=False, default=str))


def stdout_console() -> Any:
    """A rich Console for tables; plain when not a terminal (for pipes and tests)."""
    from rich.console import Console

    # emoji=False: fingerprints like "…:AB:…" must never turn into emoji.
    return Console(highlight=False, emoji=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    import datetime as dt

    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def confirm_or_require_yes(action: str, yes: bool) -> None:
    """Ask before a destructive ``action`` ("delete list 'x'"); scripts must pass --yes.

    Without a terminal on stdin nobody can answer, so refuse with a one-line error
    rather than block or guess.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"not going to {action} without confirmation — pass --yes (stdin is not a terminal)")
    if not click.confirm(f"{action[:1].upper()}{action[1:]}?", default=False):
        raise CliError("cancelled — nothing was changed")


def shell_word(text: str) -> str:
    """``text`` quoted for a command line an operator can paste."""
    import shlex

    return shlex.quote(text)
