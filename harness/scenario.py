"""Scenario files (TOML): what to set up, what to send, what must happen.

A scenario has five parts::

    [scenario]            name, description, default ports for sends, options
    [setup]               lists, relay users (+ their identities' states), settings
    [sink]                start a capture sink (the relay's next hop), or use one
    [[sends]]             steps in order: SMTP sends, raw byte-exact sends,
                          campaigns, waits
    [expect]              delivery order at the sink, counts per outcome, events

Everything set up goes through the store's public functions (``relay.store``);
passwords are generated, hashed with argon2id and kept only in the runner's memory
for the sends. The relay is spoken to only over SMTP, and only on ports it reports
as served. See ``fixtures/scenarios/*.toml`` for complete examples,
``docs/scenarios.md`` for the reference, and :func:`run_scenarios` for the runner.

Whose delivery: a run *owns* the relay's delivery only when it started that relay
(``--start-relay``, :func:`run_files`). Then it may set the next hop (its capture
sink), pause delivery and change settings, and it restores each afterwards — every
change and every restore an operator event. Against a live relay it sends over SMTP
only and checks delivery at the sink the scenario names, which must be the relay's
next hop; a scenario that needs more is refused in one line (:func:`live_refusal`).
Lists and users are named with a run prefix (``hr-3fa9c1-authz``); what a run made —
lists, users, the sender identities it created, campaigns — is removed afterwards
unless ``RunOptions.keep``. The harness approves only identities it created.

Expected replies are written as a code (``550``), a class (``5xx``), an enhanced
status (``5.7.1``) or both (``550 5.7.1``); ``expect_text`` adds a substring.

Ports: the relay's served ports form the pool; ``--ports`` (``RunOptions.ports``)
narrows it (a spec → the served ports in it; ``sample:N`` → a deterministic sample).
Each send picks from the pool with its own ``ports`` (else the scenario's): a spec
(its ports in the pool), ``served`` (the whole pool) or ``sample:N`` — so a send
goes out as often as written whatever the pool, and expected counts hold.
With ``pause_delivery_until_queued``, delivery (``Keys.PAUSED``) stays paused until
the last send before the first campaign or wait step, so ordering checks are exact.
Every message carries ``X-Harness-Id: <run> <send> <port> <n>`` so the sink can tell
which send it came from. The sink is one the runner starts (``[sink] start = true``)
or one someone else runs (``address = "host:port"``, ``record = "sink.jsonl"``: its
``smtpplus sink --record`` file, relative to the scenario file); the sink records the
header as a field, so only records appended during the run are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import importlib.resources
import itertools
import json
import multiprocessing
import re
import shlex
import shutil
import ssl
import tempfile
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.client import (
    DialogueResult,
    Reply,
    SendRequest,
    TlsMode,
    build_message,
    client_tls_context,
    run_dialogue,
)
from harness.raw import RawResult, RawSend, raw_send
from harness.report import RunReport, ScenarioReport
from harness.sink import HARNESS_HEADER, Chaos, ChaosError
from relay import policy
from relay.admin import campaigns as campaign_admin
from relay.admin import users as user_admin
from relay.admin import verification as verification_admin
from relay.admin.users import Credentials, new_credentials
from relay.display import clean
from relay.passwords import generate_password
from relay.policy import PolicyError
from relay.ports import PortSpecError, format_port_spec, parse_port_spec, sample_ports
from relay.priority import validate_priority
from relay.reasons import EventKind, Reason
from relay.store import (
    AsyncStore,
    Connection,
    StoreError,
    default_db_path,
    directory,
    open_store,
    transaction,
)
from relay.store import campaigns as campaigns_store
from relay.store import events as events_store
from relay.store import lease as lease_store
from relay.store import queue as queue_store
from relay.store import scratch as scratch_store
from relay.store import settings as settings_store
from relay.store.errors import InvalidInput, NotFound
from relay.store.events import NewEvent
from relay.store.postgres.location import masked  # text only: loads no driver

FIXTURES_PACKAGE = "fixtures"  # scenarios/ and messages/ are package data inside it
STEP_KINDS = ("smtp", "raw", "campaign", "wait")
TLS_MODES = ("required", "optional", "none")
PASSWORD_VARIANTS = ("captured", "wrong")
# Outcome counts besides reply patterns: dialogues accepted / refused, this run's
# messages delivered to the sink, and every message at the sink (tagged or not).
COUNT_KEYS = ("accepted", "refused", "delivered", "at_sink")
STAGES = ("connect", "banner", "ehlo", "tls", "auth", "mail", "rcpt", "data")


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file, the key and the fix."""


# ---------------------------------------------------------------------------
# Expected replies


@dataclass(frozen=True, slots=True)
class ReplyPattern:
    """``250`` · ``2xx`` · ``5.7.1`` · ``550 5.7.1`` · ``5xx 5.7.1``."""

    code: str = ""  # "550" or "5xx" or ""
    enhanced: str = ""

    @classmethod
    def parse(cls, text: str) -> ReplyPattern:
        code = enhanced = ""
        for token in str(text).split():
            if re.fullmatch(r"[2-5](\d\d|xx|\dx)", token, re.IGNORECASE):
                code = token.lower()
            elif re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", token):
                enhanced = token
            else:
                raise ValueError(f"{text!r} is not a reply pattern — write e.g. 250, 2xx, 5.7.1 or '550 5.7.1'")
        if not code and not enhanced:
            raise ValueError("empty reply pattern — write e.g. 250, 2xx, 5.7.1 or '550 5.7.1'")
        return cls(code, enhanced)

    def matches(self, code: int, enhanced: str) -> bool:
        text = f"{code:03d}"
        if self.code and any(p != "x" and p != c for p, c in zip(self.code, text, strict=True)):
            return False
        return not self.enhanced or self.enhanced == enhanced

    def __str__(self) -> str:
        return " ".join(p for p in (self.code, self.enhanced) if p)


# ---------------------------------------------------------------------------
# The model


@dataclass(slots=True)
class ListSetup:
    name: str
    description: str = ""
    members: list[str] = field(default_factory=list)


@dataclass(slots=True)
class UserSetup:
    username: str
    list_name: str
    domains: str = ""
    senders: str = ""
    priority: int = 3
    active: bool = True
    note: str = ""
    pending: list[str] = field(default_factory=list)  # identities left pending; the rest approved


@dataclass(slots=True)
class SinkSetup:
    start: bool = False
    address: str | None = None  # "host:port" of a sink someone else runs
    record: Path | None = None  # that sink's JSON-lines record file, for order and delivery checks
    chaos: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Step:
    """One entry of ``[[sends]]``. ``kind`` decides which fields matter."""

    name: str
    kind: str = "smtp"
    # who and how
    user: str | None = None
    password: str = "captured"  # "captured" | "wrong" | a literal password
    auth: bool = True
    auth_mech: str = "plain"
    tls: str = "required"
    ports: str | None = None
    repeat: int = 1
    # envelope and message
    mail_from: str = ""
    header_from: str | None = None  # None → same as mail_from; "" → no From: header
    to: list[str] = field(default_factory=list)
    to_count: int = 0  # generate this many recipients (rcpt-N@<to_domain>)
    to_domain: str = "dest.example"
    subject: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: str = "A message from the smtpplus harness.\n"
    # raw sends: byte-exact
    payload: bytes | None = None
    terminator: bytes = b"\r\n.\r\n"
    raw_mail_from: bytes | None = None
    raw_to: list[bytes] = field(default_factory=list)
    # expectations for this step
    expect: ReplyPattern | None = None
    expect_text: str = ""
    expect_stage: str | None = None
    expect_accepted_recipients: int | None = None
    expect_refused_recipients: ReplyPattern | None = None
    expect_extra_replies: int | None = None
    delivered: bool | None = None  # None → True when the expected reply is 2xx
    # campaigns
    campaign_list: str = ""
    priority: int = 3
    # waits
    sink_at_least: int = 0
    sink_of: str | None = None  # count only messages of this step
    seconds: float = 0.0

    @property
    def expects_acceptance(self) -> bool:
        return self.expect is None or self.expect.matches(250, "2.0.0")

    @property
    def expects_delivery(self) -> bool:
        if self.kind == "campaign":
            return True
        return self.expects_acceptance if self.delivered is None else self.delivered


@dataclass(slots=True)
class EventExpectation:
    kind: str | None
    reason: str | None
    count: int | None = None
    min: int | None = None

    def describe(self) -> str:
        what = "/".join(p for p in (self.kind, self.reason) if p) or "any"
        if self.count is not None:
            return f"{self.count} × {what}"
        return f"≥ {self.min if self.min is not None else 1} × {what}"


@dataclass(slots=True)
class Expectations:
    order: list[str] = field(default_factory=list)  # all of each step arrives before any of the next
    during: list[tuple[str, str]] = field(default_factory=list)  # (a, b): a arrives while b is arriving
    counts: dict[str, int] = field(default_factory=dict)  # outcome → count
    events: list[EventExpectation] = field(default_factory=list)
    not_served_listed: bool = False  # ports of the spec the relay does not serve are reported with reasons


@dataclass(slots=True)
class Scenario:
    name: str
    source: str
    description: str = ""
    ports: str = "sample:3"
    relay_listen: str = "0*3"  # for --start-relay when no --ports is given
    pause_delivery_until_queued: bool = False
    deliver_timeout: float = 30.0
    settings: dict[str, Any] = field(default_factory=dict)
    lists: list[ListSetup] = field(default_factory=list)
    users: list[UserSetup] = field(default_factory=list)
    sink: SinkSetup = field(default_factory=SinkSetup)
    steps: list[Step] = field(default_factory=list)
    expect: Expectations = field(default_factory=Expectations)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


# ---------------------------------------------------------------------------
# Loading


def resolve_scenario_path(name: str) -> Path:
    """A file path, or a bare name (``authorization`` / ``authorization.toml``) of a
    scenario shipped in ``fixtures/scenarios`` (found through importlib.resources,
    so an installed harness finds them too)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = importlib.resources.files(FIXTURES_PACKAGE).joinpath("scenarios")
    for candidate in (name, f"{name}.toml"):
        resource = shipped.joinpath(Path(candidate).name)
        if resource.is_file():
            return Path(str(resource))
    names = ", ".join(shipped_scenarios())
    raise ScenarioError(f"no scenario file {name!r} — give a path, or one of the shipped scenarios: {names}")


def shipped_scenarios() -> list[str]:
    shipped = importlib.resources.files(FIXTURES_PACKAGE).joinpath("scenarios")
    return sorted(p.name.removesuffix(".toml") for p in shipped.iterdir() if p.name.endswith(".toml"))


def message_fixture(name: str, base: Path | None = None) -> bytes:
    """Bytes of a sample message: next to the scenario file first, then the shipped ones."""
    if base is not None and (base / name).is_file():
        return (base / name).read_bytes()
    if base is not None and (base.parent / "messages" / name).is_file():
        return (base.parent / "messages" / name).read_bytes()
    resource = importlib.resources.files(FIXTURES_PACKAGE).joinpath("messages", name)
    if not resource.is_file():
        raise ScenarioError(f"no message file {name!r} (looked beside the scenario and in fixtures/messages)")
    return resource.read_bytes()


def load_scenario(name: str) -> Scenario:
    path = resolve_scenario_path(name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    return parse_scenario(data, source=str(path), base=path.parent)


class _Table:
    """Reads one TOML table, naming the file and key in every error, and refusing
    keys nobody reads (a typo must not silently pass a scenario)."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(f"{where}: expected a table")
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ScenarioError(f"{self.where}.{key}: expected {names}, got {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ScenarioError(f"{self.where}: unknown key(s) {', '.join(unknown)} — check the spelling")


def _bytes(text: str) -> bytes:
    # TOML strings are Unicode; raw payloads are bytes. \u0080-\u00ff map to single bytes.
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _pattern(value: Any, where: str) -> ReplyPattern:
    try:
        return ReplyPattern.parse(str(value))
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def ports_value(value: str, where: str) -> str:
    """A send's ports: ``served``, ``sample:N`` or a port spec; ScenarioError otherwise."""
    if value in ("served",) or re.fullmatch(r"sample:\d+", value):
        return value
    try:
        parse_port_spec(value)
    except PortSpecError as exc:
        raise ScenarioError(f"{where}: {exc} (or use 'served' / 'sample:N')") from None
    return value


def parse_scenario(data: dict[str, Any], *, source: str, base: Path | None = None) -> Scenario:
    top = _Table(data, source)
    head = _Table(top.get("scenario", dict, {}), f"{source}: [scenario]")
    name = head.get("name", str) or Path(source).stem
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ScenarioError(f"{source}: scenario name {name!r} may use letters, digits, - and _ only")
    scenario = Scenario(
        name=name,
        source=source,
        description=head.get("description", str, ""),
        ports=ports_value(head.get("ports", str, "sample:3"), f"{source}: scenario.ports"),
        relay_listen=head.get("relay_listen", str, "0*3"),
        pause_delivery_until_queued=head.get("pause_delivery_until_queued", bool, False),
        deliver_timeout=head.get("deliver_timeout", float, 30.0),
    )
    head.done()

    setup = _Table(top.get("setup", dict, {}), f"{source}: [setup]")
    scenario.settings = dict(setup.get("settings", dict, {}))
    for i, item in enumerate(setup.get("lists", list, [])):
        t = _Table(item, f"{source}: setup.lists[{i}]")
        members = list(t.get("members", list, []))
        count = t.get("member_count", int, 0)
        members += [f"member-{n:04d}@members.example" for n in range(1, count + 1)]
        scenario.lists.append(ListSetup(t.get("name", str) or "", t.get("description", str, ""), members))
        if not scenario.lists[-1].name:
            raise ScenarioError(f"{t.where}: a list needs a name")
        t.done()
    for i, item in enumerate(setup.get("users", list, [])):
        t = _Table(item, f"{source}: setup.users[{i}]")
        user = UserSetup(
            username=t.get("username", str) or "",
            list_name=t.get("list", str) or "",
            domains=t.get("domains", str, ""),
            senders=t.get("senders", str, ""),
            priority=_priority(t.get("priority", int, 3), t.where),
            active=t.get("active", bool, True),
            note=t.get("note", str, ""),
            pending=list(t.get("pending", list, [])),
        )
        if not user.username or not user.list_name:
            raise ScenarioError(f"{t.where}: a user needs a username and a list")
        scenario.users.append(user)
        t.done()
    setup.done()

    scenario.sink = _parse_sink(top.get("sink", dict, {}), f"{source}: [sink]", base)

    for i, item in enumerate(top.get("sends", list, [])):
        scenario.steps.append(_parse_step(item, f"{source}: sends[{i}]", base))
    names = [s.name for s in scenario.steps]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ScenarioError(f"{source}: send names must be unique; repeated: {', '.join(duplicates)}")

    expect = _Table(top.get("expect", dict, {}), f"{source}: [expect]")
    scenario.expect = Expectations(
        order=list(expect.get("order", list, [])),
        during=[_pair(pair, f"{source}: expect.during") for pair in expect.get("during", list, [])],
        counts={str(k): int(v) for k, v in expect.get("counts", dict, {}).items()},
        not_served_listed=expect.get("not_served_listed", bool, False),
    )
    for i, item in enumerate(expect.get("events", list, [])):
        t = _Table(item, f"{source}: expect.events[{i}]")
        kind = _known(t.get("kind", str), [str(k) for k in EventKind], f"{t.where}.kind", "event kind")
        reason = _known(t.get("reason", str), [str(r) for r in Reason], f"{t.where}.reason", "reason")
        scenario.expect.events.append(EventExpectation(kind, reason, t.get("count", int), t.get("min", int)))
        t.done()
    for name in [*scenario.expect.order, *(n for pair in scenario.expect.during for n in pair)]:
        if name not in names:
            raise ScenarioError(f"{source}: [expect] names send {name!r}, which is not in [[sends]]")
    for key in scenario.expect.counts:
        if key not in COUNT_KEYS:
            _pattern(key, f"{source}: expect.counts key")
    expect.done()
    top.done()
    return scenario


def _parse_sink(data: Any, where: str, base: Path | None) -> SinkSetup:
    t = _Table(data, where)
    record = t.get("record", str)
    sink = SinkSetup(start=t.get("start", bool, False), address=t.get("address", str), chaos=dict(t.get("chaos", dict, {})))
    t.done()
    if sink.start and sink.address:
        raise ScenarioError(f"{where}: start = true runs a sink of our own; address = names one already running — give one of them")
    if record is not None:
        if not sink.address:
            raise ScenarioError(f"{where}: record = names the file of a sink someone else runs; give its address = \"host:port\" too")
        path = Path(record).expanduser()
        sink.record = path if path.is_absolute() or base is None else base / path
    if sink.chaos:
        if not sink.start and sink.address:
            raise ScenarioError(f"{where}: chaos applies to a sink the runner starts; set it on the running sink (smtpplus sink --chaos)")
        try:
            Chaos.from_mapping(sink.chaos)
        except ChaosError as exc:
            raise ScenarioError(f"{where}.chaos: {exc}") from None
    return sink


def _known(value: str | None, valid: list[str], where: str, what: str) -> str | None:
    """``value`` when it is one of ``valid`` (or not given); else a ScenarioError naming
    the closest valid one, so a typo fails when the file loads, not as "0 recorded"."""
    if value is None or value in valid:
        return value
    closest = difflib.get_close_matches(value, valid, n=1, cutoff=0.0)
    hint = f" — did you mean {closest[0]!r}?" if closest else ""
    raise ScenarioError(f"{where}: unknown {what} {value!r}{hint} (see docs/reasons.md)")


def _pair(value: Any, where: str) -> tuple[str, str]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ScenarioError(f'{where}: each entry is ["send", "other send"] (the first arrives while the second is arriving)')
    return value[0], value[1]


def _priority(value: int, where: str) -> int:
    try:
        return validate_priority(value)
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _parse_step(item: Any, where: str, base: Path | None) -> Step:
    t = _Table(item, where)
    kind = t.get("kind", str, "smtp")
    if kind not in STEP_KINDS:
        raise ScenarioError(f"{where}.kind: {kind!r} is not one of {', '.join(STEP_KINDS)}")
    name = t.get("name", str)
    if not name or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ScenarioError(f"{where}: each send needs a name of letters, digits, '.', '-', '_'")
    step = Step(name=name, kind=kind)
    step.user = t.get("user", str)
    step.password = t.get("password", str, "captured")
    step.auth = t.get("auth", bool, True)
    step.auth_mech = t.get("auth_mech", str, "plain").lower()
    if step.auth_mech not in ("plain", "login"):
        raise ScenarioError(f"{where}.auth_mech: use plain or login")
    step.tls = t.get("tls", str, "required")
    if step.tls not in TLS_MODES:
        raise ScenarioError(f"{where}.tls: {step.tls!r} is not one of {', '.join(TLS_MODES)}")
    ports = t.get("ports", str)
    step.ports = None if ports is None else ports_value(ports, f"{where}.ports")
    step.repeat = t.get("repeat", int, 1)
    step.mail_from = t.get("mail_from", str, "")
    step.header_from = t.get("header_from", str)
    step.to = list(t.get("to", list, []))
    step.to_count = t.get("to_count", int, 0)
    step.to_domain = t.get("to_domain", str, "dest.example")
    step.subject = t.get("subject", str, "") or f"harness {name}"
    step.headers = [(str(k), str(v)) for k, v in t.get("headers", dict, {}).items()]
    step.body = t.get("body", str, step.body)
    payload = t.get("payload", str)
    payload_file = t.get("payload_file", str)
    if payload is not None and payload_file is not None:
        raise ScenarioError(f"{where}: give payload or payload_file, not both")
    if payload_file is not None:
        step.payload = message_fixture(payload_file, base)
    elif payload is not None:
        step.payload = _bytes(payload)
    step.terminator = _bytes(t.get("terminator", str, "\r\n.\r\n"))
    raw_from = t.get("raw_mail_from", str)
    step.raw_mail_from = None if raw_from is None else _bytes(raw_from)
    step.raw_to = [_bytes(str(x)) for x in t.get("raw_to", list, [])]
    expect = t.get("expect", (str, int))
    step.expect = None if expect is None else _pattern(expect, f"{where}.expect")
    step.expect_text = t.get("expect_text", str, "")
    step.expect_stage = t.get("expect_stage", str)
    if step.expect_stage is not None and step.expect_stage not in STAGES:
        raise ScenarioError(f"{where}.expect_stage: {step.expect_stage!r} is not one of {', '.join(STAGES)}")
    step.expect_accepted_recipients = t.get("expect_accepted_recipients", int)
    refused = t.get("expect_refused_recipients", (str, int))
    step.expect_refused_recipients = None if refused is None else _pattern(refused, f"{where}.expect_refused_recipients")
    step.expect_extra_replies = t.get("expect_extra_replies", int)
    step.delivered = t.get("delivered", bool)
    step.campaign_list = t.get("list", str, "")
    step.priority = _priority(t.get("priority", int, 3), where)
    step.sink_at_least = t.get("sink_at_least", int, 0)
    step.sink_of = t.get("sink_of", str)
    step.seconds = t.get("seconds", float, 0.0)
    t.done()
    if kind in ("smtp", "raw") and step.expect is None:
        raise ScenarioError(f"{where}: say what reply to expect, e.g. expect = \"250\" or \"550 5.7.1\"")
    if kind in ("smtp", "raw") and not (step.to or step.to_count or step.raw_to):
        raise ScenarioError(f"{where}: give recipients (to = [...] or to_count = N)")
    if kind == "raw" and step.payload is None:
        raise ScenarioError(f"{where}: a raw send needs payload = \"…\" or payload_file = \"….eml\"")
    if kind == "campaign" and not step.campaign_list:
        raise ScenarioError(f"{where}: a campaign needs list = \"…\"")
    if kind == "wait" and not (step.sink_at_least or step.seconds):
        raise ScenarioError(f"{where}: a wait needs sink_at_least = N or seconds = S")
    return step


# ---------------------------------------------------------------------------
# A live relay: what a scenario may not do there


def delivery_needs(sc: Scenario) -> list[str]:
    """Why ``sc`` must own the relay's delivery (empty: it can run against a live
    relay, sending over SMTP only and checking at the sink it names)."""
    needs: list[str] = []
    if sc.sink.start:
        needs.append("starts its own sink as the next hop ([sink] start = true)")
    if sc.pause_delivery_until_queued:
        needs.append("pauses delivery (pause_delivery_until_queued)")
    if sc.settings:
        needs.append(f"changes settings ({', '.join(sorted(sc.settings))})")
    campaigns = [s.name for s in sc.steps if s.kind == "campaign"]
    if campaigns:
        needs.append(f"creates campaigns in the store ({', '.join(campaigns)}), not over SMTP")
    if not sc.sink.start and not sc.sink.address and _checks_delivery(sc):
        needs.append("checks delivery but names no sink ([sink] address + record)")
    return needs


def _checks_delivery(sc: Scenario) -> bool:
    return (
        any(s.kind in ("smtp", "raw") and s.expects_delivery for s in sc.steps)
        or any(s.kind == "wait" and s.sink_at_least for s in sc.steps)
        or bool(sc.expect.order or sc.expect.during)
        or any(k in sc.expect.counts for k in ("delivered", "at_sink"))
    )


def _same_hop(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    try:
        (host_a, port_a), (host_b, port_b) = queue_store.parse_next_hop(a), queue_store.parse_next_hop(b)
    except InvalidInput:
        return False
    return (host_a.lower(), port_a) == (host_b.lower(), port_b)


def live_refusal(sc: Scenario, next_hop: str | None, store: Path | str) -> str:
    """One line refusing ``sc`` against the live relay of ``store`` (whose next hop
    is ``next_hop``), naming --start-relay; "" when it may run there."""
    needs = delivery_needs(sc)
    if sc.sink.address and not sc.sink.start and not _same_hop(sc.sink.address, next_hop):
        needs.append(f"checks at the sink {sc.sink.address}, which is not the relay's next hop ({next_hop or 'none set'})")
    if not needs:
        return ""
    return (
        f"{sc.name}: needs to own delivery — it {'; '.join(needs)} — and the relay on {store} is live "
        "(the harness never changes its next hop, pause, rate or parallel): run it with --start-relay"
    )


def live_refusals(names: list[str], store_path: str | Path) -> list[str]:
    """The refusals (see :func:`live_refusal`) for scenario files run without
    --start-relay against ``store_path``; none when no relay is alive there (the
    run then fails saying how to start one)."""
    scenarios = [load_scenario(name) for name in names]
    alive, next_hop = live_relay(store_path)
    if not alive:
        return []
    return [line for sc in scenarios if (line := live_refusal(sc, next_hop, store_path))]


def live_relay(store_path: str | Path) -> tuple[bool, str | None]:
    """Is a relay alive on ``store_path``, and its next hop."""
    db = open_store(store_path)
    try:
        return lease_store.relay_status(db).alive, queue_store.delivery_settings(db).next_hop
    finally:
        db.close()


# ---------------------------------------------------------------------------
# Running


EVENT_SETTLE_SECONDS = 5.0
EVENTS_SHOWN = 8  # events printed under a failed event expectation
APPROVAL_REASON = "harness scenario setup"


@dataclass(slots=True)
class RunOptions:
    """How to run: which store (setup + relay facts), where the relay listens, limits."""

    store_path: str | Path | None
    relay_host: str = "127.0.0.1"
    ports: str | None = None  # narrows the pool of served ports the sends pick from (a spec, "served" or "sample:N")
    concurrency: int = 64
    timeout: float = 30.0
    # The run owns delivery (it started the relay, --start-relay): only then may it set
    # the next hop, pause, rate, parallel or other settings — and it restores them, with
    # an event each. Against a live relay it sends over SMTP and nothing else.
    owns_delivery: bool = False
    keep: bool = False  # keep the lists, users, identities and campaigns the run made (--keep)
    store_removed: bool = False  # the store goes when the run ends (--start-relay's temporary one)
    on_total: Callable[[int], None] | None = None  # dialogues added to the plan
    on_advance: Callable[[int], None] | None = None  # dialogues finished


@dataclass(slots=True)
class Outcome:
    """One dialogue of one step on one port."""

    step: str
    port: int
    index: int
    result: DialogueResult | RawResult

    @property
    def accepted(self) -> bool:
        reply = self.result.replies.get("data")
        return self.result.ok and reply is not None and reply.code == 250


def select_ports(spec: str, served: list[int], not_served: dict[int, str]) -> tuple[list[int], dict[int, str]]:
    """The served ports a send uses, and the ports of ``spec`` skipped with why.

    ``served`` → every served port; ``sample:N`` → a deterministic sample of them;
    a spec → its ports the relay serves (never any other: the harness does not
    connect to a port the relay did not bind)."""
    if spec == "served":
        return sorted(served), {}
    match = re.fullmatch(r"sample:(\d+)", spec)
    if match:
        return sample_ports(sorted(served), int(match.group(1))), {}
    wanted = parse_port_spec(spec)
    serving = set(served)
    chosen = [p for p in wanted if p in serving]
    skipped = {p: not_served.get(p, "not in the relay's listen spec") for p in wanted if p not in serving}
    return chosen, skipped


def port_pool(limit: str | None, served: list[int], not_served: dict[int, str]) -> list[int]:
    """The served ports this run's sends may use: all of them, or those ``limit``
    (``--ports``: a spec, ``served`` or ``sample:N``) leaves."""
    if limit is None:
        return sorted(served)
    return select_ports(limit, served, not_served)[0]


def _tagged(tag: str, step: str, port: int, index: int) -> str:
    return f"{tag} {step} {port} {index}"


class _ScenarioRun:
    def __init__(self, scenario: Scenario, options: RunOptions, report: ScenarioReport) -> None:
        self.scenario = scenario
        self.options = options
        self.report = report
        self.tag = uuid.uuid4().hex[:12]
        # Every list and user the run makes is named with this prefix, so it is never
        # mistaken for (or collides with) anything of the store's own.
        self.prefix = f"hr-{self.tag[:6]}-"
        self.store = AsyncStore(options.store_path or default_db_path())
        self.passwords: dict[str, str] = {}
        self.outcomes: dict[str, list[Outcome]] = {}
        self.campaign_sizes: dict[str, int] = {}
        self.campaign_ids: dict[str, int] = {}
        self.served: list[int] = []
        self.not_served: dict[int, str] = {}
        self.pool: list[int] = []  # the served ports the sends pick from (see port_pool)
        self.implicit_tls: set[int] = set()  # served ports with TLS from the first byte: driven so
        self.tls_context: ssl.SSLContext | None = None
        self.sink: Any = None
        self.sink_view: SinkView | None = None
        self.started = time.time()
        self.paused_by_us = False
        self.previous_settings: dict[str, Any] = {}
        self.created = Created()
        self.semaphore = asyncio.Semaphore(max(1, options.concurrency))

    def named(self, name: str) -> str:
        """The store name of a scenario's user or list (``authz`` → ``hr-3fa9c1-authz``)."""
        return self.prefix + name

    def _list_name(self, name: str) -> str:
        """A list of the scenario's setup by its store name; any other as written."""
        return self.named(name) if any(item.name == name for item in self.scenario.lists) else name

    # -- plumbing ---------------------------------------------------------------

    async def run(self) -> None:
        await self.store.open()
        try:
            if not await self._relay_facts():
                return
            if not await self._may_run_here():
                return
            await self._setup()
            await self._start_sink()
            await self._steps()
            await self._resume_delivery()
            await self._delivery_checks()
            await self._expectations()
        finally:
            await self._teardown()

    async def _teardown(self) -> None:
        try:
            if self.paused_by_us:
                await self._resume_delivery()
            if self.previous_settings:
                # The relay goes back to its own next hop and controls, each change an event.
                await self.store.run(_restore_settings, self.previous_settings, self.prefix)
            if self.sink is not None:
                await self.sink.stop()
            await self._remove_or_keep()
        finally:
            await self.store.close()

    async def _remove_or_keep(self) -> None:
        if self.created.empty or self.options.store_removed:
            return  # nothing made, or the whole store goes with the run
        if self.options.keep:
            self.report.facts["kept"] = self.created.describe()
            return
        self.report.facts["removed"] = await self.store.run(_remove_created, self.created)

    def fail(self, name: str, expected: str, observed: str, detail: str = "") -> None:
        self.report.add(name, False, expected, observed, detail, error=True)

    # -- relay facts and setup -----------------------------------------------------

    async def _relay_facts(self) -> bool:
        status, pem = await self.store.run(_relay_facts)
        if not status.alive:
            self.fail(
                "relay",
                "a live relay on the store",
                "no relay alive" if status.owner is None else f"relay pid {status.pid} is not alive",
                f"store {masked(self.options.store_path or default_db_path())}: start one (`smtpplus relay`) or use --start-relay",
            )
            return False
        self.served, self.not_served = list(status.served), dict(status.not_served)
        self.implicit_tls = set(status.implicit_tls)
        self.report.facts["served_ports"] = format_port_spec(self.served)
        if self.implicit_tls:
            self.report.facts["implicit_tls_ports"] = format_port_spec(sorted(self.implicit_tls))
        self.report.facts["not_served_ports"] = {str(p): r for p, r in self.not_served.items()}
        self.report.facts["run_prefix"] = self.prefix
        self.pool = port_pool(self.options.ports, self.served, self.not_served)
        if self.options.ports:
            self.report.facts["port_pool"] = format_port_spec(self.pool)
        if pem:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=pem)
            # Pinned to the relay's own published (leaf) certificate, whatever names it
            # carries and whoever signed it: the leaf itself is the trust anchor.
            context.check_hostname = False
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        else:
            context = client_tls_context(insecure=True)
        self.tls_context = context
        return True

    async def _may_run_here(self) -> bool:
        """Against a live relay (not one the run started), a scenario that needs to
        own delivery is refused before anything is set up."""
        if self.options.owns_delivery:
            return True
        settings = await self.store.run(queue_store.delivery_settings)
        refusal = live_refusal(self.scenario, settings.next_hop, self.options.store_path or default_db_path())
        if refusal:
            self.fail("live-relay", "a scenario that only sends over SMTP and checks at the relay's next hop", "refused", refusal)
            return False
        return True

    async def _setup(self) -> None:
        t0 = time.perf_counter()
        sc = self.scenario
        # argon2 hashing is deliberately slow: off the event loop, all users at once.
        credentials = await asyncio.to_thread(lambda: {self.named(u.username): new_credentials() for u in sc.users})
        touched = [*sc.settings] if self.options.owns_delivery else []
        if self.options.owns_delivery and (sc.sink.start or sc.sink.address):
            touched += [settings_store.Keys.NEXT_HOP, settings_store.Keys.NEXT_HOP_TLS]
        self.previous_settings = await self.store.run(_read_settings, touched)
        try:
            summary = await self.store.run(_apply_setup, sc, credentials, self.prefix, self.created)
        except (StoreError, PolicyError, ValueError) as exc:
            self.fail("setup", "lists, users and identities made through the store", f"setup failed: {exc}")
            raise _Abort from None
        self.passwords = {name: made.password for name, made in credentials.items()}
        self.report.add("setup", True, "lists, users and identities made through the store", summary, seconds=time.perf_counter() - t0)

    async def _start_sink(self) -> None:
        spec = self.scenario.sink
        if spec.start:
            from harness.sink import CaptureSink

            self.sink = CaptureSink("127.0.0.1", 0, None, Chaos.from_mapping(spec.chaos) if spec.chaos else None)
            port = await self.sink.start()
            await self.store.run(queue_store.set_next_hop, f"127.0.0.1:{port}", tls="off")
            self.sink_view = SinkView(self.sink)
            self.report.facts["sink"] = f"127.0.0.1:{port}"
        elif spec.address:
            if spec.record is not None and not spec.record.is_file():
                self.fail(
                    "sink", f"the record file of the sink at {spec.address}", f"no file {spec.record}",
                    f"start the sink with `smtpplus sink --record {spec.record}`, or fix [sink] record",
                )
                raise _Abort
            if self.options.owns_delivery:
                await self.store.run(queue_store.set_next_hop, spec.address)
            self.report.facts["sink"] = spec.address
            if spec.record is not None:
                # From here on: records of earlier runs in the same file are not ours.
                self.sink_view = SinkView(None, record_path=spec.record)

    # -- steps -------------------------------------------------------------------------

    async def _steps(self) -> None:
        sc = self.scenario
        sends = [s for s in sc.steps if s.kind in ("smtp", "raw")]
        plans = {s.name: self._plan(s) for s in sends}
        if self.options.on_total:
            self.options.on_total(sum(len(ports) * s.repeat for s, (ports, _) in zip(sends, plans.values(), strict=True)))
        if sc.pause_delivery_until_queued and sends and self.options.owns_delivery:
            # An operator's own pause stays theirs: only a pause the run made is undone.
            self.paused_by_us = not await self.store.run(queue_store.set_paused, True)
        for step in sc.steps:
            t0 = time.perf_counter()
            if step.kind in ("smtp", "raw"):
                await self._send_step(step, *plans[step.name], started=t0)
                continue
            # The sends before a campaign or a wait are all queued: delivery resumes,
            # or a wait for the sink would never end.
            await self._resume_delivery()
            if step.kind == "campaign":
                await self._campaign_step(step, t0)
            else:
                await self._wait_step(step, t0)

    async def _resume_delivery(self) -> None:
        if self.paused_by_us:
            await self.store.run(queue_store.set_paused, False)
            self.paused_by_us = False

    def _plan(self, step: Step) -> tuple[list[int], dict[int, str]]:
        spec = step.ports or self.scenario.ports
        # Ports of the spec that the relay serves but --ports left out are not
        # "skipped": the run was asked to stay off them.
        pool, unfit = self._pool_for(step)
        ports, skipped = select_ports(spec, pool, self.not_served)
        skipped = {p: r for p, r in skipped.items() if p not in self.served}
        if unfit and spec != "served" and not spec.startswith("sample:"):
            # Named implicit-TLS ports this step cannot use are skipped, with why; from
            # a pool (served, sample:N) the step simply takes the others.
            named = set(parse_port_spec(spec))
            skipped.update({p: r for p, r in unfit.items() if p in named})
        if skipped:
            self.report.facts.setdefault("skipped_ports", {})[step.name] = {str(p): r for p, r in skipped.items()}
        return ports, skipped

    def _pool_for(self, step: Step) -> tuple[list[int], dict[int, str]]:
        """The pool this step may use, and the implicit-TLS ports it cannot, with why: an
        implicit-TLS port speaks TLS from the first byte, so a clear-text step (tls =
        "none") and a raw step (its client speaks STARTTLS) stay off it."""
        if not self.implicit_tls:
            return self.pool, {}
        if step.kind == "raw":
            why = "implicit TLS: raw sends speak STARTTLS"
        elif step.tls == "none":
            why = 'implicit TLS: the step sends without TLS (tls = "none")'
        else:
            return self.pool, {}
        return [p for p in self.pool if p not in self.implicit_tls], {p: why for p in self.pool if p in self.implicit_tls}

    async def _send_step(self, step: Step, ports: list[int], skipped: dict[int, str], *, started: float) -> None:
        expected = _expected_text(step)
        if not ports:
            narrowed = f", --ports leaves {format_port_spec(self.pool) or 'none of them'}" if self.options.ports else ""
            self.report.add(
                step.name, False, expected, "no served port to send on",
                f"the relay serves {format_port_spec(self.served) or 'nothing'}{narrowed}; skipped: "
                + (", ".join(f"{p} ({r})" for p, r in list(skipped.items())[:10]) or "none"),
            )
            return
        jobs = [(port, i) for port in ports for i in range(step.repeat)]
        outcomes = await asyncio.gather(*(self._one(step, port, i) for port, i in jobs))
        self.outcomes[step.name] = list(outcomes)
        self._judge_step(step, outcomes, expected, time.perf_counter() - started)

    async def _one(self, step: Step, port: int, index: int) -> Outcome:
        async with self.semaphore:
            if step.kind == "raw":
                result: DialogueResult | RawResult = await raw_send(self._raw_request(step, port, index))
            else:
                result = await run_dialogue(self._smtp_request(step, port, index))
        if self.options.on_advance:
            self.options.on_advance(1)
        return Outcome(step.name, port, index, result)

    def _credentials(self, step: Step) -> tuple[str | None, str | None]:
        if not step.auth or step.user is None:
            return None, None
        # Prefixed whether set up or not: a user the scenario did not make stays unknown.
        user = self.named(step.user)
        captured = self.passwords.get(user)
        if step.password == "captured":
            return user, captured if captured is not None else generate_password()
        if step.password == "wrong":
            return user, (captured or generate_password()) + "-wrong"
        return user, step.password

    def _recipients(self, step: Step) -> list[str]:
        generated = [f"rcpt-{n:04d}@{step.to_domain}" for n in range(1, step.to_count + 1)]
        return [*step.to, *generated]

    def _smtp_request(self, step: Step, port: int, index: int) -> SendRequest:
        user, password = self._credentials(step)
        recipients = self._recipients(step)
        header_from = step.mail_from if step.header_from is None else step.header_from
        headers = [*step.headers, (HARNESS_HEADER, _tagged(self.tag, step.name, port, index))]
        if header_from == "":
            headers.append(("From", ""))  # an empty value removes the default From:
        message = build_message(
            header_from=header_from or None, to=recipients[:3], subject=step.subject, headers=headers, body=step.body
        )
        return SendRequest(
            host=self.options.relay_host,
            port=port,
            tls=TlsMode(step.tls),
            tls_on_connect=port in self.implicit_tls,  # its tls is "required" or "optional" (see _pool_for)
            tls_context=self.tls_context,
            auth_user=user,
            auth_password=password,
            auth_mech=step.auth_mech,
            mail_from=step.mail_from,
            recipients=recipients,
            message=message,
            timeout=self.options.timeout,
        )

    def _raw_request(self, step: Step, port: int, index: int) -> RawSend:
        user, password = self._credentials(step)
        assert step.payload is not None
        tag = f"{HARNESS_HEADER}: {_tagged(self.tag, step.name, port, index)}\r\n".encode()
        return RawSend(
            host=self.options.relay_host,
            port=port,
            mail_from=step.raw_mail_from if step.raw_mail_from is not None else step.mail_from.encode(),
            recipients=step.raw_to or [r.encode() for r in self._recipients(step)],
            payload=tag + step.payload,
            terminator=step.terminator,
            tls_context=self.tls_context if step.tls != "none" else None,
            server_hostname=self.options.relay_host,
            auth_user=user,
            auth_password=password,
            timeout=self.options.timeout,
        )

    def _judge_step(self, step: Step, outcomes: list[Outcome], expected: str, seconds: float) -> None:
        misses = [(o, why) for o in outcomes if (why := _mismatch(step, o.result))]
        observed = _observed_summary(outcomes)
        if not misses:
            self.report.add(step.name, True, expected, observed, seconds=seconds)
            return
        first, why = misses[0]
        detail = [f"{len(misses)} of {len(outcomes)} dialogue(s) differ; first on port {first.port}: {why}"]
        detail += [f"  {line}" for line in _transcript_tail(first.result)]
        self.report.add(step.name, False, expected, observed, "\n".join(detail), seconds=seconds)

    async def _campaign_step(self, step: Step, started: float) -> None:
        template = (
            f"From: {step.mail_from}\r\nSubject: {step.subject}\r\n"
            f"{HARNESS_HEADER}: {_tagged(self.tag, step.name, 0, 0)}\r\n\r\n{step.body}"
        ).replace("\r\n", "\n").replace("\n", "\r\n").encode()
        try:
            info = await self.store.run(
                campaign_admin.create_campaign, self._list_name(step.campaign_list), subject=step.subject,
                template=template, mail_from=step.mail_from, priority=step.priority,
            )
        except StoreError as exc:
            self.report.add(step.name, False, "campaign scheduled", f"refused: {exc}")
            return
        self.created.campaigns.append(info.id)
        self.campaign_ids[step.name] = info.id
        self.campaign_sizes[step.name] = int(info.total or 0)
        self.report.add(
            step.name, True, "campaign scheduled", f"campaign {info.id}: {info.total} members, priority {info.priority}",
            seconds=time.perf_counter() - started,
        )

    async def _wait_step(self, step: Step, started: float) -> None:
        if step.sink_at_least:
            expected = f"≥ {step.sink_at_least} message(s){f' of {step.sink_of}' if step.sink_of else ''} at the sink"
            count = await self._wait_for_sink(lambda names: _count(names, step.sink_of) >= step.sink_at_least)
            passed = count is not None
            observed = f"{_count(await self._arrivals(), step.sink_of)} arrived"
            self.report.add(step.name, passed, expected, observed, seconds=time.perf_counter() - started)
        if step.seconds:
            await asyncio.sleep(step.seconds)

    # -- the sink --------------------------------------------------------------------

    async def _arrivals(self) -> list[str]:
        """Step names of this run's messages, in arrival order at the sink."""
        if self.sink_view is None:
            return []
        out = []
        for harness_id in self.sink_view.harness_ids():
            parts = (harness_id or "").split()
            if len(parts) == 4 and parts[0] == self.tag:
                out.append(parts[1])
        return out

    async def _wait_for_sink(self, done: Callable[[list[str]], bool]) -> list[str] | None:
        deadline = time.monotonic() + self.scenario.deliver_timeout
        while True:
            names = await self._arrivals()
            if done(names):
                return names
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)

    async def _delivery_checks(self) -> None:
        wanted: dict[str, int] = {}
        for step in self.scenario.steps:
            if step.kind in ("smtp", "raw") and step.expects_delivery and step.name in self.outcomes:
                wanted[step.name] = sum(1 for o in self.outcomes[step.name] if o.accepted)
            elif step.kind == "campaign" and step.name in self.campaign_sizes:
                wanted[step.name] = self.campaign_sizes[step.name]
        if not wanted:
            return
        if self.sink_view is None:
            observed, detail = "no sink started", "add [sink] start = true"
            if self.scenario.sink.address:
                observed = f"no record of the sink at {self.scenario.sink.address}"
                detail = "add [sink] record = the file it writes (smtpplus sink --record FILE)"
            for name in wanted:
                self.report.add(f"{name}.delivered", False, "delivery checked at a capture sink", observed, detail, error=True)
            return
        t0 = time.perf_counter()
        names = await self._wait_for_sink(lambda got: all(_count(got, n) >= k for n, k in wanted.items()))
        arrived = names if names is not None else await self._arrivals()
        seconds = time.perf_counter() - t0
        for name, count in wanted.items():
            got = _count(arrived, name)
            detail = "" if got == count else f"waited {self.scenario.deliver_timeout:g} s for the sink"
            self.report.add(
                f"{name}.delivered", got == count, f"{count} message(s) at the sink", f"{got} arrived", detail, seconds=seconds
            )

    # -- scenario-wide expectations ------------------------------------------------------

    async def _expectations(self) -> None:
        exp = self.scenario.expect
        arrivals = await self._arrivals()
        if exp.order:
            await self._order_check(exp.order, arrivals)
        for inner, outer in exp.during:
            self._during_check(inner, outer, arrivals)
        if exp.counts:
            self._count_checks(exp.counts, arrivals)
        for event in exp.events:
            await self._event_check(event)
        if exp.not_served_listed:
            self._not_served_check()

    async def _order_check(self, order: list[str], arrivals: list[str]) -> None:
        expected = " → ".join(order) + " (all of each before any of the next)"
        observed = _run_length(arrivals, order)
        problems = []
        for earlier, later in itertools.pairwise(order):
            positions_a = [i for i, n in enumerate(arrivals) if n == earlier]
            positions_b = [i for i, n in enumerate(arrivals) if n == later]
            if not positions_a or not positions_b:
                missing = earlier if not positions_a else later
                problems.append(f"{missing} never arrived at the sink")
            elif max(positions_a) > min(positions_b):
                problems.append(f"{later} (arrival #{min(positions_b) + 1}) came before {earlier} finished (arrival #{max(positions_a) + 1})")
        if problems:
            problems.append("effective priority (queue order is priority, then arrival): " + await self._priorities(order))
        self.report.add("order", not problems, expected, observed, "\n".join(problems))

    async def _priorities(self, names: list[str]) -> str:
        """``level-1-header 1 (user 3, header 1); newsletter 3 (campaign)`` — what the
        queue ordered each send's messages by."""
        queue_ids = {n: [q for o in self.outcomes.get(n, []) if (q := _queue_id(o.result))] for n in names}
        found = await self.store.run(scratch_store.message_priorities, [q for ids in queue_ids.values() for q in ids])
        parts = []
        for name in names:
            if name in self.campaign_ids:
                parts.append(f"{name} {self.scenario.step(name).priority} (campaign)")
                continue
            levels = sorted({found[q] for q in queue_ids[name] if q in found})
            shown = ", ".join(f"{p} (user {u}, header {h})" for p, u, h in levels) or "not queued"
            parts.append(f"{name} {shown}")
        return "; ".join(parts)

    def _during_check(self, inner: str, outer: str, arrivals: list[str]) -> None:
        expected = f"{inner} arrives after the first and before the last of {outer}"
        a = [i for i, n in enumerate(arrivals) if n == inner]
        b = [i for i, n in enumerate(arrivals) if n == outer]
        if not a or not b:
            observed = f"{inner}: {len(a)} arrived, {outer}: {len(b)} arrived"
            self.report.add(f"{inner}-during-{outer}", False, expected, observed)
            return
        observed = f"{inner} at #{a[0] + 1}..#{a[-1] + 1}; {outer} at #{b[0] + 1}..#{b[-1] + 1}"
        passed = b[0] < a[0] and a[-1] < b[-1]
        self.report.add(f"{inner}-during-{outer}", passed, expected, observed)

    def _count_checks(self, counts: dict[str, int], arrivals: list[str]) -> None:
        everything = [o for outs in self.outcomes.values() for o in outs]
        for key, want in counts.items():
            if key == "accepted":
                got = sum(1 for o in everything if o.accepted)
            elif key == "refused":
                got = sum(1 for o in everything if not o.result.ok)
            elif key == "delivered":
                got = len(arrivals)
            elif key == "at_sink":
                got = len(self.sink_view.harness_ids()) if self.sink_view is not None else 0
            else:
                pattern = ReplyPattern.parse(key)
                got = sum(
                    1
                    for o in everything
                    if (r := o.result.decisive_reply) is not None and pattern.matches(r.code, r.enhanced)
                )
            self.report.add(f"count.{key.replace(' ', '_')}", got == want, f"{want}", f"{got}")

    async def _event_check(self, event: EventExpectation) -> None:
        # Some events follow the last delivery (a campaign is marked done after its
        # last message): give them a few seconds to be recorded.
        deadline = time.monotonic() + min(self.scenario.deliver_timeout, EVENT_SETTLE_SECONDS)
        while True:
            found = await self.store.run(
                events_store.find_events, kind=event.kind, reason=event.reason, since=self.started, limit=100_000
            )
            # Events of users other than the run's are other traffic (a live relay's real
            # mail): they do not count. Events without a user (delivery) cannot be told apart.
            got = sum(1 for e in found if e.username is None or e.username.startswith(self.prefix))
            passed = got == event.count if event.count is not None else got >= (event.min if event.min is not None else 1)
            if passed or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        name = "events." + "/".join(p for p in (event.kind, event.reason) if p)
        detail = "" if passed else await self._events_hint(event)
        self.report.add(name, passed, event.describe(), f"{got} recorded", detail)

    async def _events_hint(self, event: EventExpectation) -> str:
        """The run's events nearest to a failed expectation (of its kind, else all),
        and where to see the rest — or, when the store goes with the run, how to keep it."""
        nearby = await self.store.run(
            events_store.find_events, kind=event.kind, since=self.started, limit=EVENTS_SHOWN
        ) if event.kind else []
        what = f"{event.kind} events" if nearby else "events"
        if not nearby:
            nearby = await self.store.run(events_store.find_events, since=self.started, limit=EVENTS_SHOWN)
        lines = [f"the run's latest {what} ({len(nearby)} shown):" if nearby else "the run recorded no events"]
        lines += [
            f"  {time.strftime('%H:%M:%S', time.localtime(e.at))} {e.kind}/{e.reason}"
            + (f" {clean(e.username)}" if e.username else "") + (f" — {clean(e.detail, 160)}" if e.detail else "")
            for e in reversed(nearby)
        ]
        if self.options.store_removed:
            lines.append("the run's store is removed when it ends: run again with --keep to keep it and see every event")
        else:
            lines.append(f"every event: `smtpplus console --no-relay --db {shlex.quote(masked(self.options.store_path or default_db_path()))}` → Events")
        return "\n".join(lines)

    def _not_served_check(self) -> None:
        spec = self.options.ports if self.options.ports and not self.options.ports.startswith(("sample:", "served")) else None
        listed = {p: r for p, r in self.not_served.items() if spec is None or p in set(parse_port_spec(spec))}
        unexplained = [p for p, r in listed.items() if not r]
        shown = ", ".join(f"{p} ({r})" for p, r in list(listed.items())[:20]) or "none"
        self.report.add(
            "ports-not-served",
            not unexplained,
            "every port not served is listed with the relay's reason",
            f"{len(self.served)} served, {len(listed)} not served: {shown}",
        )


class _Abort(Exception):
    """Setup failed: the scenario's remaining checks cannot run (already reported)."""


class SinkView:
    """The harness ids (``X-Harness-Id``, ``None`` for other messages) of what a sink
    took, in arrival order: from a :class:`harness.sink.CaptureSink` in this process,
    or from the JSON-lines record file of one running elsewhere (``smtpplus sink
    --record FILE``) — only the records appended after the view was made."""

    def __init__(self, sink: Any, *, record_path: Path | None = None) -> None:
        self.sink = sink
        self.record_path = record_path
        self._offset = record_path.stat().st_size if record_path is not None and record_path.exists() else 0
        # (harness id, Message-ID, recipients) read so far: the sink only ever appends.
        self._ids: list[tuple[str | None, str | None, list[str]]] = []

    def harness_ids(self) -> list[str | None]:
        if self.sink is not None:
            return _messages([(m.harness_id, m.message_id, m.rcpt_tos) for m in self.sink.messages])
        if self.record_path is not None:
            self._read_new_records(self.record_path)
        return _messages(self._ids)

    def _read_new_records(self, path: Path) -> None:
        # Polled many times a second while thousands arrive: read only what is new,
        # and only whole lines (the sink may be writing the last one).
        try:
            with path.open("rb") as file:
                file.seek(self._offset)
                chunk = file.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1
        for number, line in enumerate(chunk[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ScenarioError(f"{path}: record after byte {self._offset} (line {number} of the new ones) is not JSON") from None
            if isinstance(record, dict):
                self._ids.append((record.get("harness_id"), record.get("message_id"), list(record.get("rcpt_tos") or [])))
            else:
                self._ids.append((None, None, []))
        self._offset += end


def _messages(arrivals: list[tuple[str | None, str | None, list[str]]]) -> list[str | None]:
    """One entry per message: a message the relay split over several transactions
    (recipients_per_transaction, a next hop's 452) arrives as records with the same
    harness id and Message-ID and disjoint recipients — one message. The same
    recipient twice is a duplicate delivery and counts again; campaign messages share
    a harness id but each has its own Message-ID."""
    out: list[str | None] = []
    seen: dict[tuple[str, str | None], set[str]] = {}
    for harness_id, message_id, recipients in arrivals:
        if harness_id is not None:
            earlier = seen.setdefault((harness_id, message_id), set())
            split = bool(earlier) and earlier.isdisjoint(recipients)
            earlier.update(recipients)
            if split:
                continue
        out.append(harness_id)
    return out


_UNSET = "\0unset"

# How settings read in events (the relay's own events say "next hop set to …").
_SETTING_NAMES = {
    settings_store.Keys.NEXT_HOP: "next hop",
    settings_store.Keys.NEXT_HOP_TLS: "next hop STARTTLS",
    settings_store.Keys.PARALLEL: "parallel connections",
    settings_store.Keys.RATE: "rate",
    settings_store.Keys.PAUSED: "delivery paused",
}


@dataclass(slots=True)
class Created:
    """What a run made in the store, to remove afterwards (or keep, with --keep)."""

    lists: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    campaigns: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.lists or self.users or self.identities or self.campaigns)

    def describe(self) -> str:
        parts = [
            f"{label} {', '.join(str(v) for v in values)}"
            for label, values in (
                ("lists", self.lists), ("users", self.users), ("identities", self.identities), ("campaigns", self.campaigns)
            )
            if values
        ]
        return "; ".join(parts)


def _read_settings(db: Connection, keys: list[str]) -> dict[str, Any]:
    """Current values of ``keys`` (``_UNSET`` for keys without one), to restore later."""
    current = settings_store.get_settings(db, keys)
    return {key: current.get(key, _UNSET) for key in keys}


def _shown(key: str, value: Any) -> str:
    if value == _UNSET or value is None:
        return "unset (the default)"
    if "password" in key:
        return "****"
    return clean(value, 200)


def _setting_event(db: Connection, detail: str) -> None:
    events_store.record_event(db, NewEvent(EventKind.OPERATOR, Reason.SETTING_CHANGED, detail=detail))


def _apply_settings(db: Connection, settings: dict[str, Any], prefix: str) -> None:
    """A scenario's ``[setup] settings`` (only on a relay the run owns), each an event."""
    previous = _read_settings(db, list(settings))
    for key, value in settings.items():
        settings_store.set_setting(db, key, value)
        name = _SETTING_NAMES.get(key, key)
        _setting_event(db, f"{name} set to {_shown(key, value)} by harness run {prefix.rstrip('-')} "
                           f"(was {_shown(key, previous[key])})")


def _restore_settings(db: Connection, previous: dict[str, Any], prefix: str) -> None:
    """Put back what the run changed, each change an event, so the Events screen
    does not end at "next hop set to 127.0.0.1:…" of a run long gone."""
    with transaction(db):
        current = _read_settings(db, list(previous))
        for key, value in previous.items():
            if current[key] == value:
                continue
            if value == _UNSET:
                settings_store.delete_setting(db, key)
            else:
                settings_store.set_setting(db, key, value)
            name = _SETTING_NAMES.get(key, key)
            _setting_event(db, f"{name} restored to {_shown(key, value)} after harness run {prefix.rstrip('-')}")


def _relay_facts(db: Connection) -> tuple[Any, str | None]:
    return lease_store.relay_status(db), settings_store.get_setting(db, settings_store.Keys.TLS_CERT_PEM)


def _apply_setup(
    db: Connection, sc: Scenario, credentials: dict[str, Credentials], prefix: str, created: Created
) -> str:
    """Lists, members, users and identity states, through the store's API, each
    list and user named with the run's ``prefix``. The harness approves only
    identities it creates (never one of the store's own that is pending), and never
    those a scenario lists as pending. ``created`` learns what was made."""
    lists = {item.name: prefix + item.name for item in sc.lists}
    wanted: dict[str, list[str]] = {}
    for user in sc.users:
        try:
            wanted[user.username] = [*policy.parse_domains(user.domains), *policy.parse_senders(user.senders)]
        except PolicyError as exc:
            raise InvalidInput(f"user {user.username}: {exc}") from None
    existing = scratch_store.existing_identities(db, sorted({i for ids in wanted.values() for i in ids}))
    approve: set[str] = set()
    for user in sc.users:
        pending = {directory.canonical_identity(p) for p in user.pending}
        for identity in wanted[user.username]:
            if identity in pending:
                continue
            if existing.get(identity) == "pending":
                raise InvalidInput(
                    f"{identity} is a pending sender identity of this store; the harness approves only identities "
                    "it creates — verify it first, or run with --start-relay (a store of its own)"
                )
            if identity not in existing:
                approve.add(identity)
    with transaction(db):
        if sc.settings:
            _apply_settings(db, sc.settings, prefix)
        for item in sc.lists:
            directory.create_list(db, lists[item.name], item.description)
            if item.members:
                directory.import_members(db, lists[item.name], [(m, "") for m in item.members])
        for user in sc.users:
            domains, senders = policy.parse_domains(user.domains), policy.parse_senders(user.senders)
            user_admin.create_user(
                db, list_name=lists.get(user.list_name, user.list_name), credentials=credentials[prefix + user.username],
                username=prefix + user.username, priority=user.priority, note=user.note, domains=domains,
                senders=senders, active=user.active,
            )
        if approve:
            verification_admin.approve(db, sorted(approve), APPROVAL_REASON)
    created.lists += lists.values()
    created.users += [prefix + u.username for u in sc.users]
    created.identities += sorted({i for ids in wanted.values() for i in ids} - set(existing))
    members = sum(len(i.members) for i in sc.lists)
    return f"{len(sc.lists)} list(s), {members} member(s), {len(sc.users)} user(s), {len(approve)} identities approved"


def _remove_created(db: Connection, created: Created) -> str:
    """Remove what a run made: campaigns (cancelled first when still under way),
    users, lists, then its identities no one else lists. Mail stays."""
    campaigns = 0
    for campaign_id in created.campaigns:
        with contextlib.suppress(InvalidInput, NotFound):
            campaigns_store.cancel_campaign(db, campaign_id)
        campaigns += scratch_store.delete_finished_campaign(db, campaign_id)
    for username in created.users:
        with contextlib.suppress(NotFound):
            directory.delete_user(db, username)
    for name in created.lists:
        with contextlib.suppress(NotFound):
            directory.delete_list(db, name)
    identities = scratch_store.delete_unused_identities(db, created.identities)
    return (
        f"{len(created.lists)} list(s), {len(created.users)} user(s), {len(identities)} identities, "
        f"{campaigns} campaign(s)"
    )


# ---------------------------------------------------------------------------
# Judging one dialogue


def _expected_text(step: Step) -> str:
    parts = [str(step.expect)]
    if step.expect_text:
        parts.append(f"'{step.expect_text}'")
    if step.expect_stage:
        parts.append(f"at {step.expect_stage}")
    if step.expect_accepted_recipients is not None:
        parts.append(f"{step.expect_accepted_recipients} recipient(s) accepted")
    if step.expect_refused_recipients is not None:
        parts.append(f"the rest {step.expect_refused_recipients}")
    if step.expect_extra_replies is not None:
        parts.append(f"{step.expect_extra_replies} extra replies")
    return ", ".join(parts)


def _stage_reached(result: DialogueResult | RawResult) -> str:
    return str(result.failed_stage) if result.failed_stage is not None else "data"


def _mismatch(step: Step, result: DialogueResult | RawResult) -> str:
    """Why ``result`` is not what ``step`` expects ("" when it is)."""
    reply = result.decisive_reply
    if reply is None:
        return f"no reply: {result.error or 'nothing received'}"
    assert step.expect is not None
    if not step.expect.matches(reply.code, reply.enhanced):
        where = f" at {result.failed_stage}" if result.failed_stage else ""
        return f"got {reply}{where}"
    if step.expect_text and step.expect_text.lower() not in reply.text.lower():
        return f"reply {reply} does not say '{step.expect_text}'"
    if step.expect_stage and _stage_reached(result) != step.expect_stage:
        return f"the reply came at {_stage_reached(result)}, not {step.expect_stage}"
    accepted = len(result.accepted_recipients)
    if step.expect_accepted_recipients is not None and accepted != step.expect_accepted_recipients:
        return f"{accepted} recipient(s) accepted, not {step.expect_accepted_recipients}"
    if step.expect_refused_recipients is not None:
        refused = [r for _, r in result.recipient_replies if not r.ok]
        wrong = [r for r in refused if not step.expect_refused_recipients.matches(r.code, r.enhanced)]
        if not refused or wrong:
            return f"refused recipients got {wrong[0] if wrong else 'nothing refused'}"
    if step.expect_extra_replies is not None and isinstance(result, RawResult):
        if len(result.extra_replies) != step.expect_extra_replies:
            extras = "; ".join(str(r) for r in result.extra_replies[:5])
            return f"{len(result.extra_replies)} extra replies after the message ({extras})"
    return ""


def _observed_summary(outcomes: list[Outcome]) -> str:
    """``550 5.7.1 … on 3/3 ports`` — grouped by reply, most common first."""
    groups: dict[str, list[int]] = {}
    for o in outcomes:
        reply = o.result.decisive_reply
        key = _short_reply(reply) if reply is not None else f"no reply ({o.result.error})"
        if o.result.failed_stage is not None:
            key += f" at {o.result.failed_stage}"
        groups.setdefault(key, []).append(o.port)
    total = len(outcomes)
    parts = []
    for key, ports in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        where = f"port {ports[0]}" if len(set(ports)) == 1 else f"{len(set(ports))} ports"
        parts.append(f"{key} ×{len(ports)}/{total} ({where})")
    return "; ".join(parts)


def _short_reply(reply: Reply) -> str:
    text = reply.text.split("\n")[0]
    text = re.sub(r"queued as \S+", "queued as …", text)
    return f"{reply.code} {text[:80]}".strip()


def _transcript_tail(result: DialogueResult | RawResult, lines: int = 14) -> list[str]:
    return [f"{line.direction} {line.text}" for line in result.lines[-lines:]]


def _queue_id(result: DialogueResult | RawResult) -> str | None:
    """The relay's queue id from the reply to DATA ("250 2.0.0 Ok: queued as X")."""
    reply = result.replies.get("data")
    match = re.search(r"queued as\s+(\S+)", reply.text) if reply is not None and reply.code == 250 else None
    return match.group(1) if match else None


def _count(names: list[str], of: str | None) -> int:
    return len(names) if of is None else sum(1 for n in names if n == of)


def _run_length(names: list[str], only: list[str]) -> str:
    out: list[str] = []
    for name, group in itertools.groupby(n for n in names if n in only):
        size = len(list(group))
        out.append(name if size == 1 else f"{name}×{size}")
    return " → ".join(out) or "nothing arrived"


# ---------------------------------------------------------------------------
# Entry points


async def run_scenarios(scenarios: list[Scenario], options: RunOptions) -> RunReport:
    """Run scenarios one after the other against the relay serving ``options.store_path``."""
    report = RunReport(started_at=time.time())
    t0 = time.perf_counter()
    for scenario in scenarios:
        sreport = ScenarioReport(scenario.name, scenario.source, scenario.description, started_at=time.time())
        s0 = time.perf_counter()
        try:
            await _ScenarioRun(scenario, options, sreport).run()
        except _Abort:
            pass  # reported as a failed setup check
        except (StoreError, OSError, PortSpecError, ScenarioError) as exc:
            sreport.add("run", False, "the scenario runs to the end", f"{type(exc).__name__}: {exc}", error=True)
        sreport.seconds = time.perf_counter() - s0
        report.scenarios.append(sreport)
    report.seconds = time.perf_counter() - t0
    return report


RELAY_MODES = ("auto", "in-process", "subprocess")
# Above this many listening ports, "auto" runs the relay in a child process: a sweep
# is bound by one event loop's CPU, and the relay and the harness then get a core each.
SUBPROCESS_ABOVE_PORTS = 500


def relay_mode_for(mode: str, listen: str) -> str:
    """``in-process`` or ``subprocess`` for a started relay listening on ``listen``."""
    if mode != "auto":
        return mode
    if re.fullmatch(r"0(\*\d+)?", listen):
        count = int(listen.partition("*")[2] or 1)
    else:
        count = len(parse_port_spec(listen))
    return "subprocess" if count > SUBPROCESS_ABOVE_PORTS else "in-process"


@contextlib.asynccontextmanager
async def started_relay(
    store_path: str | Path, listen: str, *, data_dir: Path, mode: str = "in-process", **config: Any
) -> AsyncIterator[Any]:
    """A relay on ``store_path`` listening on 127.0.0.1 (``--start-relay``): a
    ``RelayService`` in this process, or (``mode="subprocess"``) in a child process.
    Either way the harness talks to it only over SMTP and through the store."""
    from relay.config import RelayConfig

    settings = RelayConfig(host="127.0.0.1", ports=listen, data_dir=data_dir, **config)
    if relay_mode_for(mode, listen) == "subprocess":
        async with _relay_in_child(store_path, settings) as child:
            yield child
        return
    from relay.service import RelayService

    service = RelayService(store_path, settings)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@contextlib.asynccontextmanager
async def _relay_in_child(store_path: str | Path, settings: Any) -> AsyncIterator[Any]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=_child_relay_main, args=(store_path, settings, theirs), daemon=True)
    child.start()
    try:
        ready = await asyncio.to_thread(ours.poll, 60)
        state, detail = ours.recv() if ready else ("error", "the relay did not start within 60 s")
        if state != "ready":
            raise StoreError(f"the started relay failed: {detail}")
        yield child
    finally:
        with contextlib.suppress(OSError):
            ours.send("stop")
        await asyncio.to_thread(child.join, 30)
        if child.is_alive():
            child.terminate()
            await asyncio.to_thread(child.join, 5)
        ours.close()


def _child_relay_main(store_path: str | Path, settings: Any, conn: Any) -> None:
    """The child process of ``started_relay(mode="subprocess")``: run until told to stop."""

    async def serve() -> None:
        from relay.service import RelayService

        service = RelayService(store_path, settings)
        try:
            await service.start()
        except Exception as exc:  # reported to the parent as one line
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("ready", None))
        stop = asyncio.Event()
        asyncio.get_running_loop().add_reader(conn.fileno(), stop.set)
        await stop.wait()
        await service.stop()

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


async def run_files(
    names: list[str],
    options: RunOptions,
    *,
    start_relay: bool = False,
    listen: str | None = None,
    relay_mode: str = "in-process",
    relay_config: dict[str, Any] | None = None,
) -> RunReport:
    """Load scenario files (paths or shipped names) and run them.

    With ``start_relay``, each scenario gets its own relay on 127.0.0.1 (in this
    process, or a child process: ``relay_mode``, see :func:`relay_mode_for`) listening
    on ``listen`` (else :func:`listen_for` the scenario and ``options.ports``), a fresh
    temporary store (unless ``options.store_path`` is given; kept with
    ``options.keep``) and a capture sink as next hop: the run owns its delivery.
    Without it, the run sends to the live relay of ``options.store_path`` and changes
    nothing of its delivery (see :func:`live_refusal`)."""
    scenarios = [load_scenario(name) for name in names]
    if not start_relay:
        return await run_scenarios(scenarios, dataclasses.replace(options, owns_delivery=False, store_removed=False))
    report = RunReport(started_at=time.time())
    t0 = time.perf_counter()
    for scenario in scenarios:
        if not scenario.sink.address:
            scenario.sink.start = True
        tmp = Path(tempfile.mkdtemp(prefix="smtpplus-harness-"))
        store_path = options.store_path or tmp / "smtpplus.db"
        removed = options.store_path is None and not options.keep
        try:
            spec = listen or listen_for(scenario.relay_listen, options.ports)
            data_dir = tmp / "data"
            run_options = dataclasses.replace(options, store_path=store_path, owns_delivery=True, store_removed=removed)
            async with started_relay(store_path, spec, data_dir=data_dir, mode=relay_mode, **(relay_config or {})):
                one = await run_scenarios([scenario], run_options)
        finally:
            if not (options.keep and options.store_path is None):
                shutil.rmtree(tmp, ignore_errors=True)
        if options.keep and options.store_path is None:
            one.scenarios[0].facts["store_kept"] = str(store_path)
        report.scenarios += one.scenarios
    report.seconds = time.perf_counter() - t0
    return report


def listen_for(relay_listen: str, ports: str | None) -> str:
    """What a started relay listens on for a scenario whose ``relay_listen`` is given,
    when ``--ports`` is ``ports``: only the ports the run uses — ``sample:N`` binds N of
    them (the same deterministic sample the run then sends on), not the whole range."""
    match = re.fullmatch(r"sample:(\d+)", ports or "")
    if match is None:
        return relay_listen
    count = int(match.group(1))
    ephemeral = re.fullmatch(r"0(?:\*(\d+))?", relay_listen)
    if ephemeral:
        return f"0*{max(1, min(count, int(ephemeral.group(1) or 1)))}"
    return format_port_spec(sample_ports(parse_port_spec(relay_listen), count))
