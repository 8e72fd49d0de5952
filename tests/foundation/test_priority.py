"""Header priority, user priority and effective priority (relay.priority)."""

from __future__ import annotations

import itertools

import pytest

from relay import priority
from relay.priority import PriorityError, effective_priority, header_priority

# Every value a header may take in the exhaustive test, with what it means alone:
# a number for a recognized value, None for a value that is ignored.
X_PRIORITY_VALUES = {"1": 1, "2 (High)": 2, " 3": 3, "4": 4, "5 (Lowest)": 5, "0": None, "9": None, "high": None}
WORD_VALUES = {"high": 2, "URGENT": 2, "Low": 4, "non-urgent": 4, "normal": 3, "bogus": None}
WORD_HEADERS = ("Importance", "X-MSMail-Priority", "Priority")


def _expected(x_priority: str | None, words: dict[str, str | None]) -> int:
    """The rule from PRODUCT.md, spelled out independently of the implementation."""
    if x_priority is not None and X_PRIORITY_VALUES[x_priority] is not None:
        return X_PRIORITY_VALUES[x_priority]  # type: ignore[return-value]
    for header in WORD_HEADERS:
        value = words.get(header)
        if value is not None and WORD_VALUES[value] is not None:
            return WORD_VALUES[value]  # type: ignore[return-value]
    return 3


def test_header_priority_every_combination() -> None:
    choices_x = [None, *X_PRIORITY_VALUES]
    choices_word = [None, *WORD_VALUES]
    checked = 0
    for x_value, *word_values in itertools.product(choices_x, *(choices_word for _ in WORD_HEADERS)):
        words = dict(zip(WORD_HEADERS, word_values, strict=True))
        headers = [(name, value) for name, value in words.items() if value is not None]
        if x_value is not None:
            headers.append(("X-Priority", x_value))
        assert header_priority(headers) == _expected(x_value, words), headers
        # Header order and header-name case do not matter.
        assert header_priority([(n.upper(), v) for n, v in reversed(headers)]) == _expected(x_value, words)
        checked += 1
    assert checked == len(choices_x) * len(choices_word) ** 3


def test_x_priority_leading_digit_wins() -> None:
    assert header_priority([("X-Priority", "1 (Highest)"), ("Importance", "low")]) == 1
    assert header_priority([("X-Priority", "5"), ("Priority", "urgent")]) == 5
    assert header_priority([("x-priority", "  2")]) == 2


def test_no_priority_headers_means_normal() -> None:
    assert header_priority([]) == 3
    assert header_priority([("Subject", "X-Priority: 1"), ("From", "a@example.com")]) == 3


def test_the_first_occurrence_of_a_header_counts() -> None:
    assert header_priority([("X-Priority", "1"), ("X-Priority", "5")]) == 1
    assert header_priority([("Importance", "low"), ("Importance", "high")]) == 4


def test_an_ignored_value_falls_through_to_the_next_header() -> None:
    assert header_priority([("X-Priority", "urgent"), ("Importance", "high")]) == 2
    assert header_priority([("Importance", "bogus"), ("Priority", "non-urgent")]) == 4


@pytest.mark.parametrize(("user", "header"), itertools.product(range(1, 6), repeat=2))
def test_effective_priority_is_the_higher_of_the_two(user: int, header: int) -> None:
    result = effective_priority(user, header)
    assert result == min(user, header)
    assert result in (user, header)


def test_only_a_header_priority_shows_as_urgent_to_recipients() -> None:
    assert [priority.shows_as_urgent(p) for p in range(1, 6)] == [True, True, False, False, False]
    # A user priority of 1 speeds the queue, but the header — what recipients see — stays normal.
    assert effective_priority(1, header_priority([])) == 1
    assert not priority.shows_as_urgent(header_priority([]))


@pytest.mark.parametrize(("value", "expected"), [(1, 1), (5, 5), ("3", 3), (" 2 ", 2), ("4", 4)])
def test_valid_operator_priorities(value: object, expected: int) -> None:
    assert priority.validate_priority(value) == expected


@pytest.mark.parametrize("value", [0, 6, -1, "7", "", "x", "2.5", "1,2", None, True, 3.5])
def test_invalid_operator_priorities(value: object) -> None:
    with pytest.raises(PriorityError, match="1 \\(very high\\) to 5 \\(very low\\)"):
        priority.validate_priority(value)


def test_priority_names() -> None:
    assert priority.NAMES == {1: "very high", 2: "high", 3: "normal", 4: "low", 5: "very low"}
    assert (priority.HIGHEST, priority.NORMAL, priority.LOWEST) == (1, 3, 5)
