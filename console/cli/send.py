"""``smtpplus send``: one message, swaks-style, showing the whole dialogue."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from console.cli.common import CliError, stdout_console, to_jsonable
from harness.client import (
    EXIT_CODES,
    QUIT_AFTER_CHOICES,
    DialogueResult,
    SendRequest,
    Stage,
    TlsMode,
    build_message,
    client_tls_context,
    format_dialogue,
    parse_header_option,
    run_dialogue,
)

PASSWORD_ENV = "SMTPPLUS_PASSWORD"
EXIT_SOME_FAILED = 9  # --count: the first message went through, some of the rest did not

_EXIT_HELP = "\b\nExit codes:\n  0  every stage passed (or --quit-after stopped early)\n  1  usage error (bad option, unreadable --data file)\n" + "\n".join(
    f"  {code}  {', '.join(str(s) for s, c in EXIT_CODES.items() if c == code)} failed"
    + {2: " (nobody listening, timeout)", 6: " (no recipient accepted)", 8: " (the server would not talk)"}.get(code, "")
    for code in sorted(set(EXIT_CODES.values()))
) + f"\n  {EXIT_SOME_FAILED}  with --count: some of the messages after the first failed"


class _UsageError(click.UsageError):
    exit_code = 1


class _SendCommand(click.Command):
    """Usage errors exit 1, so that 2 means only "could not connect"."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _UsageError(exc.format_message(), exc.ctx) from None


@click.command(
    cls=_SendCommand,
    epilog=_EXIT_HELP,
    help="Send one message through an SMTP server (the relay) and show the dialogue: client (->) and "
    "server (<-) lines with timings, the TLS version, cipher and certificate fingerprint. AUTH payloads "
    "are masked and the password is never echoed. Exits with a distinct code for the stage that failed.",
)
@click.option("--server", "-s", default="127.0.0.1", show_default=True, help="Server host name or address.")
@click.option("--port", "-p", type=click.IntRange(1, 65535), default=25, show_default=True, help="Server port.")
@click.option("--starttls", "tls", flag_value="required", default=True, help="STARTTLS, and fail if it is not offered (default).")
@click.option("--starttls-optional", "tls", flag_value="optional", help="STARTTLS when offered, clear text otherwise.")
@click.option("--no-tls", "tls", flag_value="none", help="Never STARTTLS.")
@click.option("--tls-on-connect", is_flag=True,
              help="TLS from the first byte (implicit TLS, RFC 8314: port 465, \"SSL/TLS\" in mail clients); no STARTTLS.")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False), help="Trust this CA/certificate (PEM); see `smtpplus tls export`.")
@click.option("--insecure", is_flag=True, help="Do not verify the server certificate (a self-signed relay).")
@click.option("--auth-user", help="AUTH as this relay user.")
@click.option("--auth-password", envvar=PASSWORD_ENV, show_envvar=True, help="The user's password (else $SMTPPLUS_PASSWORD, else a hidden prompt). Never echoed.")
@click.option("--auth-mech", type=click.Choice(["plain", "login"], case_sensitive=False), default="plain", show_default=True)
@click.option("--from", "mail_from", help="Envelope sender (MAIL FROM) and, unless --header From: says otherwise, the From: header.")
@click.option("--to", "recipients", multiple=True, help="Recipient (repeatable).")
@click.option("--header", "headers", multiple=True, help='Extra header "Name: value" (repeatable); "Name:" with no value removes a default header.')
@click.option("--priority", type=click.IntRange(1, 5), help="Set X-Priority (1 very high … 5 very low).")
@click.option("--subject", help="Subject (default: smtpplus test message).")
@click.option("--body", help="Body text.")
@click.option("--data", "data_file", help="Send this file as the message (- for stdin); --header/--priority go in front.")
@click.option("--ehlo", "ehlo_name", default="smtpplus-harness.localdomain", show_default=True, help="EHLO name.")
@click.option("--quit-after", type=click.Choice(QUIT_AFTER_CHOICES, case_sensitive=False),
              help="Stop (QUIT) after this stage (any case: AUTH is auth).")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True, help="Seconds to wait for each reply.")
@click.option("--count", type=click.IntRange(1, 1_000_000), default=1, show_default=True,
              help="Send this many messages: the first with the whole dialogue shown, the rest through the "
              "shared load generator (harness.bench.loadgen), reported like every bench.")
@click.option("--connections", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="With --count: connections the load generator keeps (STARTTLS + AUTH once each).")
@click.option("--json", "as_json", is_flag=True, help="The dialogue and outcome as JSON.")
def send(
    server: str,
    port: int,
    tls: str,
    tls_on_connect: bool,
    cafile: str | None,
    insecure: bool,
    auth_user: str | None,
    auth_password: str | None,
    auth_mech: str,
    mail_from: str | None,
    recipients: tuple[str, ...],
    headers: tuple[str, ...],
    priority: int | None,
    subject: str | None,
    body: str | None,
    data_file: str | None,
    ehlo_name: str,
    quit_after: str | None,
    timeout: float,
    count: int,
    connections: int,
    as_json: bool,
) -> None:
    if tls is True:  # click passes the default flag value through as True
        tls = "required"
    if tls_on_connect and tls != "required":
        raise CliError(f"--tls-on-connect and --{'no-tls' if tls == 'none' else 'starttls-optional'} contradict each other "
                       "— TLS from the first byte, or STARTTLS (or none) after the greeting")
    if cafile and insecure:
        raise CliError("--cafile and --insecure contradict each other — trust a certificate, or trust none")
    if body is not None and data_file is not None:
        raise CliError("give --body or --data, not both")
    if count > 1 and (not recipients or quit_after):
        raise CliError("--count sends whole messages: give --from and --to, without --quit-after")
    password = auth_password
    if auth_user is not None and password is None:
        if not sys.stdin.isatty() or data_file == "-":
            raise CliError(f"--auth-user needs a password — give --auth-password or set ${PASSWORD_ENV}")
        password = click.prompt(f"Password for {auth_user}", hide_input=True, err=True)
    try:
        extra = [parse_header_option(h) for h in headers]
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if quit_after is not None:
        quit_after = quit_after.lower()
    message = None
    make_message: Callable[[], bytes] | None = None
    if mail_from is not None or recipients:
        if mail_from is None:
            raise CliError("--to needs --from (the envelope sender)")
        if not recipients and quit_after not in QUIT_AFTER_CHOICES[:6]:
            raise CliError("give at least one --to recipient")
        data = _read_data(data_file) if data_file is not None else None

        def make_message() -> bytes:
            # Each message of --count gets its own Date and Message-ID, and the same
            # --to, --subject, headers and body as the first.
            return build_message(
                header_from=mail_from or None, to=recipients, subject=subject, headers=extra,
                priority=priority, body=body if body is not None else "This is a test message sent by smtpplus send.\n",
                data=data,
            )

        message = make_message()
    request = SendRequest(
        host=server, port=port, tls=TlsMode(tls), tls_on_connect=tls_on_connect, cafile=cafile, insecure=insecure,
        auth_user=auth_user, auth_password=password, auth_mech=auth_mech.lower(),
        mail_from=mail_from, recipients=list(recipients), message=message,
        ehlo_name=ehlo_name, timeout=timeout, quit_after=quit_after,
    )
    result = asyncio.run(run_dialogue(request))
    if count == 1 or not result.ok:
        _print(result, as_json)
        sys.exit(result.exit_code)
    assert make_message is not None  # --count needs --from and --to (checked above)
    load = asyncio.run(_load(request, count - 1, connections, make_message))
    report = _load_report(request, load, connections)
    if as_json:
        click.echo(json.dumps(to_jsonable({**result.to_json(), "load": report.to_json()}), indent=2))
    else:
        _print(result, False)
        report.print_table(stdout_console())
    sys.exit(0 if load.failed == 0 else EXIT_SOME_FAILED)


async def _load(request: SendRequest, messages: int, connections: int, make_message: Callable[[], bytes]) -> Any:
    """The rest of ``--count`` through the load generator every bench shares: each
    to the given recipients, built like the first (same --to, --subject, headers)."""
    from harness.bench.loadgen import LoadSpec, run_load

    recipients = list(request.recipients)
    spec = LoadSpec(
        ports=[request.port], host=request.host, connections=min(connections, messages), messages=messages,
        size=len(request.message or b""), recipients=len(recipients),
        starttls=request.tls is not TlsMode.NONE and not request.tls_on_connect, tls_on_connect=request.tls_on_connect,
        tls_context=client_tls_context(cafile=request.cafile, insecure=request.insecure),
        username=request.auth_user, password=request.auth_password, mail_from=request.mail_from or "",
        timeout=request.timeout, message=lambda n: (recipients, make_message()),
    )
    return await run_load(spec)


def _load_report(request: SendRequest, load: Any, connections: int) -> Any:
    from harness.bench.report import BenchReport, Measurement

    report = BenchReport("send", params={"port": request.port, "connections": connections, "size": len(request.message or b"")})
    report.add(Measurement(
        "send --count", messages=load.sent, seconds=load.seconds, failures=load.failed,
        extra={"p50 ms": round(load.percentile(0.5) * 1000, 1), "p99 ms": round(load.percentile(0.99) * 1000, 1),
               "errors": dict(load.errors)},
    ))
    for error, times in load.errors.most_common(5):
        report.notes.append(f"{times} × {error}")
    return report


def _read_data(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise CliError(f"--data {name}: {exc.strerror or exc}") from None


def _print(result: DialogueResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(to_jsonable(result.to_json()), indent=2))
        return
    from relay.display import clean

    for line in format_dialogue(result):
        click.echo(clean(line))  # the server's replies are outside text
    if result.failed_stage is None:
        done = f"stopped after {result.stopped_after}" if result.stopped_after else "done"
        queued = f", queued as {result.queue_id}" if result.queue_id else ""
        click.echo(f"=== {done}{queued} ({result.total_seconds * 1000:.1f} ms)")
        return
    code = result.exit_code
    stage = result.failed_stage
    click.echo(clean(f"=== {stage} failed: {result.error} (exit {code})"))
    if stage is Stage.TLS and "not trusted" in result.error:
        click.echo("    hint: `smtpplus tls export > relay.pem`, then --cafile relay.pem (or --insecure)", err=True)
