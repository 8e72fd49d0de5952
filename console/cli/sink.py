"""``smtpplus sink``: a capture sink that accepts and records every message
(the relay's next hop in the demo and the harness)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from console.cli.common import CliError


def write_ready_file(path: Path, data: dict[str, object]) -> None:
    """Atomically: a temporary file beside it, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


@click.command("sink", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8025, show_default=True,
              help="Port to listen on (0 = any free port; see --ready-file).")
@click.option("--record", "record_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append each message as one JSON line to this file: envelope, arrival order and time, "
              "priority headers, Subject, Message-ID and X-Harness-Id (what `harness run` reads).")
@click.option("--keep-data", is_flag=True, help='Also record each message\'s bytes ("data") in --record.')
@click.option("--chaos", "chaos_items", multiple=True, metavar="KEY=VALUE",
              help="Failure replies for retry tests (repeatable): 4xx=0.1, 5xx=0.05, "
              "4xx-match=PATTERN, 5xx-match=PATTERN, 4xx-first=N, 4xx-reply=TEXT, 5xx-reply=TEXT, seed=N.")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help='Once listening, write {"pid", "host", "port"} here (atomically).')
@click.option("--quiet", is_flag=True, help="Do not print a line per message.")
def sink(host: str, port: int, record_path: Path | None, keep_data: bool, chaos_items: tuple[str, ...],
         ready_file: Path | None, quiet: bool) -> None:
    """Run a capture sink: accepts everything, records arrival order, time,
    envelope and priority headers. Stop it with Ctrl-C or SIGTERM."""
    import asyncio
    import logging
    import signal

    from harness.sink import CaptureSink, Chaos, ChaosError, SinkRecord

    try:
        chaos = Chaos.parse(chaos_items)
    except ChaosError as exc:
        raise CliError(str(exc)) from None
    logging.getLogger("mail.log").setLevel(logging.WARNING)

    def show(record: SinkRecord) -> None:
        if not quiet:
            priority = f" X-Priority {record.x_priority}" if record.x_priority else ""
            from relay.display import clean

            click.echo(clean(
                f"#{record.seq} from <{record.mail_from}> to {', '.join(record.rcpt_tos)}{priority} "
                f"{record.size} bytes: {record.subject or ''}"
            ))

    async def main() -> None:
        capture = CaptureSink(host, port, record_path, chaos, on_message=show, keep_data=keep_data)
        try:
            bound = await capture.start()
        except OSError as exc:
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc} — pick another --port") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready_file is not None:
            write_ready_file(ready_file, {"pid": os.getpid(), "host": host, "port": bound})
        click.echo(f"capture sink listening on {host}:{bound}" + (f", recording to {record_path}" if record_path else ""))
        await stop.wait()
        await capture.stop()
        click.echo(f"capture sink stopped after {len(capture.messages)} message(s)")

    asyncio.run(main())
