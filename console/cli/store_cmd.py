"""``smtpplus store``: operations on the store file itself."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from console.cli import common
from console.cli.common import CliError, LazyGroup
from relay.display import clean

store = LazyGroup(name="store", help="The store: backup, integrity check, recount, copy.")


def run_check(source: common.StoreLocation, *, quiet: bool = False) -> Any:
    """The backend's integrity check of ``source`` (SQLite: ``PRAGMA quick_check``) with
    a progress line on stderr about every second (a big store takes a while: every page
    is read)."""
    from relay.store import backend_for

    # Progress lines on a terminal only: a script sees one line, the result or the error.
    shown = not quiet and sys.stderr.isatty()

    def progress(seconds: float, pages: int) -> None:
        if not shown:
            return
        if seconds == 0:
            click.echo(f"store check: checking {common.shown(source)} ({pages:,} pages: every one is read)…", err=True)
        else:
            click.echo(f"store check: still checking ({seconds:.0f}s)…", err=True)

    return backend_for(source).check(source, progress)


def pg_dump_advice(target: str | os.PathLike[str], source: common.StoreLocation) -> str:
    """The one line ``store backup`` answers for a PostgreSQL store: a pg_dump command
    to paste. Its URL has no password at all (``***`` would be taken as the password):
    pg_dump reads it from PGPASSWORD or ~/.pgpass."""
    from relay.store.postgres.location import without_password  # text only: loads no driver

    return (f"store backup copies SQLite stores — for PostgreSQL use pg_dump (password from PGPASSWORD or "
            f"~/.pgpass): pg_dump -Fc -f {common.shell_word(os.fspath(target))} {common.shell_word(without_password(source))}")


def check_failure(result: Any) -> str:
    first = result.problems[0] if result.problems else "unknown problem"
    more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
    return (
        f"store {result.store} failed its integrity check: {clean(first, 200)}{more} — stop the relay, "
        "restore the latest backup (or `sqlite3 STORE .recover`)"
    )


@store.command("check")
@common.json_option
@common.db_option
def check(as_json: bool, db_path: Path | None) -> None:
    """Check the store file's integrity (PRAGMA quick_check: every page is read, with
    progress on stderr). Exit 0 when it is sound; a one-line error naming the fix when not.
    The relay never does this at a normal start (`smtpplus relay --check` does)."""
    source = common.resolve_db_path(db_path)
    result = run_check(source, quiet=as_json)
    if as_json:
        common.print_json(result)
    elif result.ok:
        click.echo(f"Store {common.shown(source)} is sound: {result.pages:,} pages ({result.bytes:,} bytes) checked in {result.seconds:.1f}s.")
    if not result.ok:
        raise CliError(check_failure(result))


@store.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@common.json_option
@common.db_option
def backup(path: Path, force: bool, as_json: bool, db_path: Path | None) -> None:
    """Copy the store to PATH, consistently, while the relay and consoles keep using it
    (SQLite online backup)."""
    from relay.store import backup as store_backup
    from relay.store import open_store

    source = common.resolve_db_path(db_path)
    from relay.store.postgres.location import is_postgres  # text only: loads no driver

    if is_postgres(source):  # pg_dump does it, consistently and while the relay runs
        raise CliError(pg_dump_advice(path, source))
    if path.exists() and not force:
        raise CliError(f"{path} already exists — choose another path or pass --force to overwrite it")
    if path.resolve() == Path(source).resolve():
        raise CliError("the backup path is the store itself — choose another path")
    if not path.parent.is_dir():
        raise CliError(f"directory {path.parent} does not exist — create it first")
    # Copy into a temporary file beside the target and rename it into place, so an
    # interrupted backup never leaves a half-written file under the chosen name.
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    db = open_store(source, create=False)
    try:
        store_backup(db, partial)
        os.replace(partial, path)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        db.close()
        partial.unlink(missing_ok=True)
    size = path.stat().st_size
    if as_json:
        common.print_json({"store": common.shown(source), "backup": str(path), "bytes": size})
        return
    click.echo(f"Backed up {common.shown(source)} to {path} ({size:,} bytes).")


@store.command("recount")
@common.json_option
@common.db_option
def recount(as_json: bool, db_path: Path | None) -> None:
    """Recount the queue's maintained counts (per state and priority, per list) from
    the messages themselves and fix any that differ; reports what it fixed.

    The counts are kept by the store in every transaction, so this should find
    nothing; it reads every message once (seconds at millions of messages) and
    holds the write lock meanwhile.
    """
    from relay.store import counts, open_store

    source = common.resolve_db_path(db_path)
    db = open_store(source, create=False)
    try:
        fixed = counts.recount(db)
        total = sum(counts.state_counts(db).values())
    finally:
        db.close()
    if as_json:
        common.print_json({"store": common.shown(source), "messages": total, "fixed": [common.to_jsonable(f) for f in fixed]})
        return
    if not fixed:
        click.echo(f"The queue counts of {common.shown(source)} match a full recount ({total:,} messages): nothing to fix.")
        return
    click.echo(f"Fixed {len(fixed)} queue count(s) of {common.shown(source)} ({total:,} messages):")
    for f in fixed:
        click.echo(f"  {f.table} {f.key}: was {f.kept:,}, counted {f.counted:,}")


@store.command("copy")
@click.argument("source")
@click.argument("destination")
@common.json_option
def copy(source: str, destination: str, as_json: bool) -> None:
    """Copy the store SOURCE into the new, empty store DESTINATION: a SQLite file or a
    postgresql:// URL either way. Every row, parents before children, in one
    transaction, with a progress bar on stderr and a count check at the end. Stop the
    relay on SOURCE first; a DESTINATION holding anything is refused."""
    from relay.store import lease, open_store, store_errors
    from relay.store.copy import copy_store, plan, source_counts

    src = open_store(source, create=False)
    try:
        with store_errors(source):
            if lease.relay_status(src).alive:
                raise CliError(f"a relay is serving {common.shown(source)} — stop it first, so the copy sees every message")
            dst = open_store(destination)
            try:
                total = sum(source_counts(src, plan(src, dst)).values())
                result = _copy_with_progress(copy_store, src, dst, total, quiet=as_json,
                                             names=(common.shown(source), common.shown(destination)))
            finally:
                dst.close()
    finally:
        src.close()
    if as_json:
        common.print_json(result)
        return
    click.echo(
        f"Copied {common.shown(source)} to {common.shown(destination)}: {result.rows:,} rows in "
        f"{len(result.tables)} tables; the counts match ({sum(result.queue.values()):,} messages)."
    )


def _copy_with_progress(copy_store: Any, src: Any, dst: Any, total: int, *, quiet: bool, names: tuple[str, str]) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]copying[/] {task.fields[table]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True, disable=quiet or not sys.stderr.isatty(),
    )
    task = progress.add_task("rows", total=total, table="")
    with progress:
        return copy_store(src, dst, names=names,
                          progress=lambda table, n: progress.update(task, advance=n, table=table))
