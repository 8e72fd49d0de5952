"""Scenario files: parsing, readable errors, reply patterns, port selection."""

from __future__ import annotations

import pytest

from harness.scenario import ReplyPattern, ScenarioError, parse_scenario, select_ports

MINIMAL_SEND = {"name": "s", "user": "u", "mail_from": "a@example.com", "to": ["b@example.com"], "expect": "250"}


@pytest.mark.parametrize(
    ("pattern", "code", "enhanced", "matches"),
    [
        ("250", 250, "2.0.0", True),
        ("2xx", 250, "2.0.0", True),
        ("2xx", 550, "5.7.1", False),
        ("5.7.1", 550, "5.7.1", True),
        ("5.7.1", 550, "5.6.0", False),
        ("550 5.7.1", 550, "5.7.1", True),
        ("550 5.7.1", 553, "5.7.1", False),
        ("55x", 553, "5.1.3", True),
    ],
)
def test_reply_patterns(pattern: str, code: int, enhanced: str, matches: bool) -> None:
    assert ReplyPattern.parse(pattern).matches(code, enhanced) is matches


def test_a_bad_reply_pattern_says_how_to_write_one() -> None:
    with pytest.raises(ValueError, match="250, 2xx, 5.7.1"):
        ReplyPattern.parse("ok")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sends": [{**MINIMAL_SEND, "expcet": "250"}]}, r"sends\[0\]: unknown key\(s\) expcet"),
        ({"sends": [{**MINIMAL_SEND, "expect": "fine"}]}, r"sends\[0\]\.expect: 'fine' is not a reply pattern"),
        ({"sends": [{**MINIMAL_SEND, "ports": "25-"}]}, r"sends\[0\]\.ports: .*or use 'served' / 'sample:N'"),
        ({"sends": [{**MINIMAL_SEND, "tls": "maybe"}]}, r"tls: 'maybe' is not one of required, optional, none"),
        ({"sends": [{k: v for k, v in MINIMAL_SEND.items() if k != "expect"}]}, "say what reply to expect"),
        ({"sends": [MINIMAL_SEND, MINIMAL_SEND]}, "send names must be unique; repeated: s"),
        ({"sends": [MINIMAL_SEND], "expect": {"order": ["s", "t"]}}, r"\[expect\] names send 't'"),
        ({"sends": [{**MINIMAL_SEND, "kind": "raw"}]}, "a raw send needs payload"),
        ({"setup": {"users": [{"username": "u", "list": "l", "priority": 9}]}}, "priority must be a whole number from 1"),
        ({"scenario": {"name": "has space"}}, "letters, digits"),
    ],
)
def test_scenario_errors_name_the_file_the_key_and_the_fix(data: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match=message) as info:
        parse_scenario(data, source="t.toml")
    assert str(info.value).startswith("t.toml")


def test_raw_payload_strings_keep_every_byte() -> None:
    scenario = parse_scenario(
        {"sends": [{**MINIMAL_SEND, "kind": "raw", "payload": "a\n.\r\x00\u00ff", "raw_to": ["x\u0001@y.example"]}]},
        source="t.toml",
    )
    step = scenario.steps[0]
    assert step.payload == b"a\n.\r\x00\xff"
    assert step.raw_to == [b"x\x01@y.example"]


def test_port_selection_uses_only_served_ports() -> None:
    served = [25, 1025, 1026, 1028]
    not_served = {1027: "in use — stop the other program"}
    chosen, skipped = select_ports("25,1025-1028,6000", served, not_served)
    assert chosen == [25, 1025, 1026, 1028]
    assert skipped == {1027: "in use — stop the other program", 6000: "not in the relay's listen spec"}
    assert select_ports("served", served, not_served) == (served, {})
    sample, _ = select_ports("sample:2", served, not_served)
    assert len(sample) == 2 and set(sample) <= set(served)
    assert select_ports("sample:2", served, not_served)[0] == sample  # deterministic


def test_the_port_pool_narrows_the_served_ports_and_sends_pick_from_it() -> None:
    from harness.scenario import port_pool

    served = list(range(20500, 20510))
    assert port_pool(None, served, {}) == served
    pool = port_pool("20500-20504,20600", served, {})
    assert pool == [20500, 20501, 20502, 20503, 20504]
    # A send's own ports choose from the pool: sample:1 stays one port, served is the pool.
    assert len(select_ports("sample:1", pool, {})[0]) == 1
    assert select_ports("served", pool, {})[0] == pool
    assert len(port_pool("sample:3", served, {})) == 3


@pytest.mark.parametrize(
    ("sink", "message"),
    [
        ({"start": True, "address": "127.0.0.1:2525"}, "give one of them"),
        ({"record": "sink.jsonl"}, r"give its address = \"host:port\" too"),
        ({"start": True, "chaos": {"bogus": 1}}, r"\[sink\]\.chaos: unknown chaos key 'bogus' — valid keys: 4xx, 5xx"),
        ({"address": "127.0.0.1:2525", "chaos": {"4xx": 0.5}}, "smtpplus sink --chaos"),
    ],
)
def test_sink_table_errors(sink: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario({"sink": sink}, source="t.toml")


def test_a_given_sinks_record_file_is_relative_to_the_scenario_file(tmp_path: object) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    scenario = parse_scenario({"sink": {"address": "127.0.0.1:2525", "record": "sink.jsonl"}}, source="t.toml", base=base)
    assert scenario.sink.record == base / "sink.jsonl"
