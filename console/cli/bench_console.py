"""``smtpplus harness bench console``: the console with 100,000 messages queued.

Measures, on a fresh temporary store (filled by a child process, so its memory does
not count): the time from creating the app to the queue screen showing data (first
paint), the UI-thread time per live refresh (applying a snapshot, and until it is
painted), the watcher thread's read time per refresh, and the process's memory.
Refreshes are caused the way they happen in production: another connection commits
(hold and release of the message at the head of the queue), the watcher notices
the new ``data_version``, reads the lanes and one page, and the screen applies it.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from console.cli import common
from console.cli.bench_common import check_option, show_report
from harness.bench.report import BenchReport, Measurement, Run

TARGETS = {"first_paint_s": 1.0, "refresh_ms": 50.0, "rss_mb": 150.0, "watcher_read_ms": 30.0}
# With --against: the figures at COUNT over those at the smaller queue (costs stay flat).
SCALING = {"first_paint": 1.25, "watcher_read": 3.0, "queue_status": 1.5}

_FILL = (
    "import sys\n"
    "from relay.store import open_store\n"
    "from relay.store.bulk import queue_bulk\n"
    "db = open_store(sys.argv[1])\n"
    "queue_bulk(db, int(sys.argv[2]))\n"
    "db.close()\n"
)


def fill_store(path: Path, count: int) -> float:
    """Fill a new store in a child process; returns the seconds it took, until on disk.

    The sync is part of the fill: without it the kernel writes the fill's hundreds of
    MB back while the console is being measured, and the console's own commits wait
    behind that (measured: first paint 1.6 s instead of 0.6 s right after a 1,000,000 fill).
    """
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", _FILL, str(path), str(count)], check=True, timeout=1800)
    os.sync()
    return time.perf_counter() - started


_MEASURE = (
    "import json, sys\n"
    "from pathlib import Path\n"
    "from console.cli.bench_console import measure_all\n"
    "print(json.dumps(measure_all(Path(sys.argv[1]), int(sys.argv[2]))))\n"
)


def measure_in_child(path: Path, refreshes: int) -> dict[str, Any]:
    """:func:`measure_all` in a fresh process: every run starts as cold as a real console
    (no modules, styles or caches left over from an earlier run), and its memory is its own."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), str(refreshes)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise click.ClickException(f"the console bench run failed: {last}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def measure_all(path: Path, refreshes: int) -> dict[str, Any]:
    """The console figures (:func:`measure`) and the cost of ``queue status``."""
    measured = asyncio.run(measure(path, refreshes))
    measured["queue_status_ms"] = queue_status_ms(path)
    return measured


def queue_status_ms(path: Path, repeats: int = 21) -> float:
    """Median time of what ``smtpplus queue status`` does with the store: open it and
    read the overview (counts and oldest wait per priority, controls, engine state)."""
    from relay.store import open_store
    from relay.store.queue import queue_overview

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        db = open_store(path, create=False)
        try:
            queue_overview(db)
        finally:
            db.close()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


def rss_mb() -> float:
    """Resident memory now (VmRSS), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def until(condition: Any, *, step: float = 0.001, limit: float = 60.0) -> None:
    """Poll ``condition`` (the app runs meanwhile); a stuck console fails the bench."""
    for _ in range(int(limit / step)):
        if condition():
            return
        await asyncio.sleep(step)
    raise click.ClickException("the console did not refresh within a minute")


async def measure(path: Path, refreshes: int) -> dict[str, Any]:
    from console.app import ConsoleApp
    from relay.store import open_store
    from relay.store import queue as queue_ops

    started = time.perf_counter()
    cpu_started = time.process_time()
    app = ConsoleApp(path, run_relay=False, cursor_blink=False)
    app.animation_level = "none"
    painted: list[float] = []
    async with app.run_test(size=(100, 30)) as pilot:
        screen: Any = None

        def showing_data() -> bool:
            nonlocal screen
            screen = app.screen
            return getattr(screen, "snapshots_applied", 0) > 0 and screen.table().row_count > 0

        await until(showing_data)
        app.call_after_refresh(lambda: painted.append(time.perf_counter()))
        await until(lambda: bool(painted))
        first_paint = painted[0] - started
        first_paint_cpu = time.process_time() - cpu_started
        rows_shown = screen.table().row_count

        writer = open_store(path)
        head = queue_ops.list_messages(writer, state="queued", limit=1)[0]
        apply_times: list[float] = []
        paint_times: list[float] = []
        reads_before, read_seconds_before = app.watcher.reads, app.watcher.read_seconds
        try:
            for n in range(refreshes):
                applied = screen.snapshots_applied
                refresh_mark = len(app.refresh_times)
                action = queue_ops.hold if n % 2 == 0 else queue_ops.release
                action(writer, [f"#{head.id}"])
                committed = time.perf_counter()
                await until(lambda a=applied: screen.snapshots_applied > a)
                apply_times.append(app.refresh_times[refresh_mark])
                done: list[float] = []
                app.call_after_refresh(lambda d=done: d.append(time.perf_counter()))
                await until(lambda d=done: bool(d))
                paint_times.append(done[0] - committed)
        finally:
            writer.close()
        reads = app.watcher.reads - reads_before
        read_seconds = app.watcher.read_seconds - read_seconds_before
        # The same read the watcher does, timed alone (no UI thread competing for
        # the GIL): the store's share of a refresh, steady on a busy machine.
        reader = open_store(path, create=False)
        try:
            quiet = []
            for _ in range(31):
                begun = time.perf_counter()
                screen.read(reader, time.time())
                quiet.append(time.perf_counter() - begun)
        finally:
            reader.close()
        current_rss = rss_mb()
        await pilot.press("ctrl+q")
    return {
        "rows_shown": rows_shown,
        "first_paint_s": round(first_paint, 3),
        "first_paint_cpu_s": round(first_paint_cpu, 3),
        "refreshes": len(apply_times),
        "refresh_apply_ms_median": round(statistics.median(apply_times) * 1000, 2),
        "refresh_apply_ms_max": round(max(apply_times) * 1000, 2),
        "commit_to_painted_ms_median": round(statistics.median(paint_times) * 1000, 1),
        "watcher_read_ms_mean": round(read_seconds / max(1, reads) * 1000, 2),
        "screen_read_ms_median": round(statistics.median(quiet) * 1000, 2),
        "rss_mb": round(current_rss, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _new_scratch_path(path: Path) -> Path:
    """--db for the bench names a new file: filling a real store with 100,000
    messages would be a disaster, and a leftover bench store skews the figures."""
    if path.exists() or Path(f"{path}-wal").exists():
        raise common.CliError(f"--db {path} already exists — the bench fills a new store: give a path that does not exist yet")
    if not path.parent.is_dir():
        raise common.CliError(f"--db {path}: directory {path.parent} does not exist — create it (mkdir -p {path.parent}) first")
    return path


def run_bench(path: Path, count: int, refreshes: int) -> BenchReport:
    """Fill a new store at ``path`` with ``count`` queued messages and measure the console on it."""
    fill_seconds = fill_store(path, count)
    return report(count, refreshes, fill_seconds, measure_in_child(path, refreshes))


def run_against(path: Path, count: int, against: int, refreshes: int, rounds: int = 1) -> BenchReport:
    """The bench at ``against`` and at ``count`` (stores ``path`` and a sibling), in one
    report: the figures at ``count``, both runs side by side, and how they scale.
    With ``rounds`` > 1 the two sizes are measured alternately and each figure is the
    best of its size's runs (a busy machine slows single runs, never speeds them up)."""
    small_path = path.with_name(f"{path.stem}-{against}{path.suffix}")
    if small_path.exists():
        raise common.CliError(f"{small_path} already exists — the bench fills a new store: give another --db")
    small_fill = fill_store(small_path, against)
    big_fill = fill_store(path, count)
    small_runs: list[dict[str, Any]] = []
    big_runs: list[dict[str, Any]] = []
    for _ in range(rounds):
        small_runs.append(measure_in_child(small_path, refreshes))
        big_runs.append(measure_in_child(path, refreshes))
    small, big = _best(small_runs), _best(big_runs)
    result = report(count, refreshes, big_fill, big, watcher_at_most=TARGETS["watcher_read_ms"])
    result.title = f"Console with {count:,} queued, against {against:,}"
    result.params["against"] = against
    if rounds > 1:
        result.params["rounds"] = rounds
        result.notes.append(f"each figure is the best of {rounds} runs per size, the sizes measured alternately")
    result.runs.insert(0, Measurement("fill the store (child process)", messages=against, seconds=small_fill))
    for n, measured in ((against, small), (count, big)):
        result.add(Run(f"{n:,} queued", {k: measured[k] for k in _SIDE_BY_SIDE}))

    def ratio(key: str) -> float:
        return round(big[key] / small[key], 2) if small[key] > 0 else float("nan")

    figure = result.figure
    figure("first_paint_ratio", ratio("first_paint_s"), at_most=SCALING["first_paint"],
           about=f"first paint at {count:,} / at {against:,}")
    figure("first_paint_cpu_ratio", ratio("first_paint_cpu_s"), about=f"first paint CPU at {count:,} / at {against:,}")
    figure("watcher_read_ratio", ratio("screen_read_ms_median"), at_most=SCALING["watcher_read"],
           about=f"the queue screen's read (median, alone) at {count:,} / at {against:,}")
    figure("queue_status_ratio", ratio("queue_status_ms"), at_most=SCALING["queue_status"],
           about=f"queue status at {count:,} / at {against:,}")
    return result


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the best (lowest) of several runs; counts (rows, refreshes) as measured."""
    best = dict(runs[0])
    for key in _LOWER_IS_BETTER:
        best[key] = min(run[key] for run in runs)
    return best


_LOWER_IS_BETTER = ("first_paint_s", "first_paint_cpu_s", "refresh_apply_ms_median", "refresh_apply_ms_max", "commit_to_painted_ms_median",
                    "watcher_read_ms_mean", "screen_read_ms_median", "queue_status_ms", "rss_mb", "peak_rss_mb")
_SIDE_BY_SIDE = ("first_paint_s", "first_paint_cpu_s", "watcher_read_ms_mean", "screen_read_ms_median", "queue_status_ms", "refresh_apply_ms_median",
                 "commit_to_painted_ms_median", "rss_mb")


def report(
    count: int, refreshes: int, fill_seconds: float, measured: dict[str, Any], *, watcher_at_most: float | None = None
) -> BenchReport:
    """The shared bench report of one console run (``measured`` from :func:`measure_all`)."""
    result = BenchReport(
        "console", title=f"Console with {count:,} queued", params={"queued": count, "refreshes": refreshes, "store": None},
    )
    result.add(Measurement("fill the store (child process)", messages=count, seconds=fill_seconds))
    figure = result.figure
    figure("first_paint_s", measured["first_paint_s"], "s", at_most=TARGETS["first_paint_s"],
           about="app start → queue showing data")
    if "first_paint_cpu_s" in measured:
        figure("first_paint_cpu_s", measured["first_paint_cpu_s"], "s",
               about="CPU the console used until first paint (all threads; steadier on a busy machine)")
    figure("refreshes", measured["refreshes"], about="live refreshes timed, each caused by a commit elsewhere")
    figure("refresh_apply_ms_median", measured["refresh_apply_ms_median"], "ms", at_most=TARGETS["refresh_ms"],
           about="UI-thread time per refresh")
    figure("refresh_apply_ms_max", measured["refresh_apply_ms_max"], "ms", about="UI-thread time per refresh, worst")
    figure("commit_to_painted_ms_median", measured["commit_to_painted_ms_median"], "ms",
           about="commit in another connection → painted")
    figure("watcher_read_ms_mean", measured["watcher_read_ms_mean"], "ms", at_most=watcher_at_most,
           about="watcher read per refresh (its own thread)")
    if "screen_read_ms_median" in measured:
        figure("screen_read_ms_median", measured["screen_read_ms_median"], "ms",
               about="the watcher's read of the queue screen, timed alone (median of 31)")
    if "queue_status_ms" in measured:
        figure("queue_status_ms", measured["queue_status_ms"], "ms",
               about="`queue status`: open the store and read the overview (median)")
    figure("rss_mb", measured["rss_mb"], "MB", at_most=TARGETS["rss_mb"], about="resident memory after the refreshes")
    figure("peak_rss_mb", measured["peak_rss_mb"], "MB", about="peak resident memory")
    figure("rows_shown", measured["rows_shown"], "rows", about="rows loaded in the table: one page, never every row")
    return result


@click.command("console")
@click.option("--count", default=100_000, show_default=True, type=click.IntRange(1, 10_000_000),
              help="Messages queued before the console starts.")
@click.option("--refreshes", default=30, show_default=True, type=click.IntRange(1, 10_000),
              help="Live refreshes to time (each caused by a commit from another connection).")
@click.option("--against", type=click.IntRange(1, 10_000_000), default=None,
              help="Also run the bench with this many queued first, and report how the figures scale "
              "(first paint ≤ 1.25×, watcher read ≤ 3× and ≤ 30 ms, queue status ≤ 1.5×).")
@click.option("--rounds", type=click.IntRange(1, 10), default=1, show_default=True,
              help="With --against: measure both sizes this many times, alternately; the best run of each counts.")
@click.option("--quick", is_flag=True, help="A smoke run in seconds (3,000 queued, 4 refreshes; --against at most 300).")
@check_option
@common.json_option
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the bench's scratch store goes: a new file, kept afterwards "
    "(default: a temporary directory, removed afterwards). Never $SMTPPLUS_DB.",
)
def console_bench(
    count: int, refreshes: int, against: int | None, rounds: int, quick: bool, check: bool, as_json: bool, db_path: Path | None
) -> None:
    """Console first paint, UI-thread time per refresh and memory with COUNT queued.

    Targets: first paint ≤ 1 s, refresh ≤ 50 ms, RSS ≤ 150 MB; with --against N,
    also how the figures scale from N queued to COUNT (each run in a fresh process). For scale: a plain
    DataTable given 100,000 rows takes about 8 s and 165 MB; the console loads one page.
    The bench fills a scratch store of its own, so it never touches a real one.
    """
    if quick:
        count, refreshes = min(count, 3000), min(refreshes, 4)
        against = None if against is None else min(against, 300)

    def run(path: Path) -> BenchReport:
        return run_bench(path, count, refreshes) if against is None else run_against(path, count, against, refreshes, rounds)

    if db_path is not None:
        path = _new_scratch_path(db_path)
        result = run(path)
        result.params["store"] = str(path)
        result.notes.append(f"the bench store stays at {path}")
    else:
        with tempfile.TemporaryDirectory(prefix="smtpplus-bench-console-") as tmp:
            result = run(Path(tmp) / "bench.db")
    show_report(result, as_json=as_json, check=check)
