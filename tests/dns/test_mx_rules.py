"""The pure parts of MX routing: ordering, null MX, names, failure classification and
the TTL cache — exhaustively, with hypothesis where the input space is wide."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.mx import (
    MAX_TTL,
    RouteFailure,
    Trouble,
    TtlCache,
    failure_for,
    is_null_mx,
    lookup_name,
    order_by_preference,
    route_ttl,
)
from relay.reasons import PROBLEMS, Reason
from tests.dns.conftest import Clock

hosts = st.sampled_from([f"mx{i}.example.test" for i in range(6)] + ["."])
records = st.lists(st.tuples(st.integers(0, 65535) | st.sampled_from([0, 10, 20]), hosts), max_size=12)


@given(records, st.integers())
def test_ordering_is_by_preference_and_keeps_each_hosts_best(rows: list[tuple[int, str]], seed: int) -> None:
    ordered = order_by_preference(rows, random.Random(seed))
    preferences = [preference for preference, _name in ordered]
    assert preferences == sorted(preferences)
    names = [name for _preference, name in ordered]
    assert len(names) == len(set(names)) and "." not in names
    best = {name: min(p for p, n in rows if n == name) for _p, name in rows if name != "."}
    assert dict((name, preference) for preference, name in ordered) == best


@given(records, st.integers())
def test_the_same_seed_gives_the_same_order_whatever_the_answer_order(rows: list[tuple[int, str]], seed: int) -> None:
    shuffled = list(rows)
    random.Random(seed ^ 0x5EED).shuffle(shuffled)
    assert order_by_preference(rows, random.Random(seed)) == order_by_preference(shuffled, random.Random(seed))


def test_equal_preferences_come_in_every_order_about_equally_often() -> None:
    rng = random.Random(2024)
    rows = [(10, "a"), (10, "b"), (10, "c"), (5, "first")]
    counts = Counter(tuple(name for _p, name in order_by_preference(rows, rng)) for _ in range(6000))
    assert all(order[0] == "first" for order in counts)
    assert len(counts) == 6 and all(800 < n < 1200 for n in counts.values())  # 1000 each expected


@pytest.mark.parametrize(
    ("rows", "null"),
    [
        ([(0, ".")], True),
        ([(10, ".")], True),  # a non-zero preference is still "no mail"
        ([(0, "."), (0, "")], True),
        ([(0, "."), (10, "mx.example.test")], False),  # mixed: the real host is used
        ([(10, "mx.example.test")], False),
        ([], False),  # no MX at all is the implicit MX, not a null MX
    ],
)
def test_null_mx(rows: list[tuple[int, str]], null: bool) -> None:
    assert is_null_mx(rows) is null


@pytest.mark.parametrize(
    ("domain", "name"),
    [
        ("example.test", "example.test"),
        ("Example.TEST.", "example.test"),
        (" example.test ", "example.test"),
        ("bücher.test", "xn--bcher-kva.test"),
        ("BÜCHER.test", "xn--bcher-kva.test"),  # UTS 46 maps case first
        ("straße.test", "xn--strae-oqa.test"),  # IDNA 2008: ß is kept, not "ss"
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        ("xn--bcher-kva.test", "xn--bcher-kva.test"),
    ],
)
def test_lookup_names(domain: str, name: str) -> None:
    assert lookup_name(domain) == name


@pytest.mark.parametrize("domain", ["[192.0.2.1]", "[IPv6:::1]", "", ".", "a..test", "x" * 64 + ".test", "a\x00b.test", "\u0661\u0041.test"])
def test_names_dns_cannot_carry_fail_for_good(domain: str) -> None:
    with pytest.raises(RouteFailure) as caught:
        lookup_name(domain)
    assert (caught.value.permanent, caught.value.enhanced, caught.value.reason) == (True, "5.1.2", Reason.FAILED_NO_DOMAIN)
    assert "\x00" not in str(caught.value)


@given(st.text(max_size=80))
def test_any_text_is_a_name_or_a_permanent_failure(text: str) -> None:
    try:
        name = lookup_name(text)
    except RouteFailure as failure:
        assert failure.permanent and failure.enhanced == "5.1.2"
        assert "\n" not in str(failure)
        return
    assert name.isascii() and name == name.lower() and not name.endswith(".")


CLASSES = {
    Trouble.NULL_MX: (True, "5.1.10", Reason.FAILED_NULL_MX),
    Trouble.NXDOMAIN: (True, "5.1.2", Reason.FAILED_NO_DOMAIN),
    Trouble.BAD_NAME: (True, "5.1.2", Reason.FAILED_NO_DOMAIN),
    Trouble.NODATA: (True, "5.1.2", Reason.FAILED_NO_MAIL_HOST),
    Trouble.NO_HOST_ADDRESS: (True, "5.4.4", Reason.FAILED_NO_MAIL_HOST),
    Trouble.TIMEOUT: (False, "4.4.3", Reason.DEFERRED_DNS),
    Trouble.SERVFAIL: (False, "4.4.3", Reason.DEFERRED_DNS),
}


@pytest.mark.parametrize("trouble", list(Trouble))
def test_every_trouble_has_one_class(trouble: Trouble) -> None:
    failure = failure_for("example.test", trouble, "detail")
    assert (failure.permanent, failure.enhanced, failure.reason) == CLASSES[trouble]
    assert failure.enhanced[0] == ("5" if failure.permanent else "4")
    assert failure.reason in PROBLEMS and "example.test" in str(failure)
    assert failure.again() == failure and failure.again() is not failure


def test_a_failure_message_escapes_what_a_client_sent() -> None:
    failure = failure_for("evil\x1b]52;c;x\x07.test", Trouble.NXDOMAIN, "line\nbreak")
    assert "\x1b" not in str(failure) and "\n" not in str(failure) and "\x07" not in str(failure)


@given(st.lists(st.integers(-5, 10 * MAX_TTL), max_size=6))
def test_route_ttl_is_the_lowest_capped(ttls: list[int]) -> None:
    assert route_ttl(ttls) == max(0, min([MAX_TTL, *ttls]))


def test_the_cache_expires_entries_by_the_clock() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(clock)
    cache.put("a", 1, 10)
    cache.put("zero", 2, 0)
    assert cache.get("a") == 1 and cache.get("zero") is None
    clock.advance(9.9)
    assert cache.get("a") == 1
    clock.advance(0.1)
    assert cache.get("a") is None and len(cache) == 0
    assert (cache.hits, cache.misses) == (2, 2)


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 20), st.integers(0, 5)), max_size=60), st.integers(1, 8))
def test_the_cache_never_holds_more_than_its_size_nor_answers_stale(
    steps: list[tuple[int, int, int]], size: int
) -> None:
    clock = Clock()
    cache: TtlCache[int, int] = TtlCache(clock, max_entries=size)
    expiry: dict[int, float] = {}
    for key, ttl, wait in steps:
        cache.put(key, key * 2, ttl)
        if ttl > 0:
            expiry[key] = clock.now + ttl
        else:
            expiry.pop(key, None)
        clock.advance(wait)
        assert len(cache) <= size
        for probe in range(31):
            value = cache.get(probe)
            if value is not None:
                assert value == probe * 2 and clock.now < expiry[probe]


def test_a_full_cache_drops_the_expired_then_the_oldest() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(clock, max_entries=2)
    cache.put("short", 1, 1)
    cache.put("old", 2, 100)
    clock.advance(2)
    cache.put("new", 3, 100)  # "short" has expired: it goes, "old" stays
    assert (cache.get("old"), cache.get("new")) == (2, 3)
    cache.put("newer", 4, 100)  # nothing expired: the oldest put ("old") goes
    assert (cache.get("old"), cache.get("new"), cache.get("newer")) == (None, 3, 4)
