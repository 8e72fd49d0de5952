"""Pure priority rules: header priority, user priority, effective priority.

1 is the highest ("very high"), 5 the lowest; 3 is normal and the default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

HIGHEST, NORMAL, LOWEST = 1, 3, 5
NAMES = {1: "very high", 2: "high", 3: "normal", 4: "low", 5: "very low"}

_WORD_PRIORITY = {
    "high": 2,
    "urgent": 2,
    "low": 4,
    "non-urgent": 4,
    "nonurgent": 4,
    "normal": 3,
}
# Checked in this order after X-Priority.
_WORD_HEADERS = ("importance", "x-msmail-priority", "priority")


class PriorityError(ValueError):
    pass


def validate_priority(value: object) -> int:
    """An operator's priority 1–5 (int or digit string)."""
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if not HIGHEST <= number <= LOWEST:
        raise PriorityError(f"priority must be a whole number from 1 (very high) to 5 (very low), not {value!r}")
    return number


def header_priority(headers: Iterable[tuple[str, str]]) -> int:
    """The message's own priority from its headers.

    ``X-Priority``'s leading digit 1–5 wins; otherwise ``Importance``,
    ``X-MSMail-Priority`` or ``Priority`` (high/urgent → 2, low/non-urgent → 4);
    otherwise 3. The first occurrence of each header counts.
    """
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name.strip().lower(), str(value))
    x_priority = first.get("x-priority")
    if x_priority is not None:
        match = re.match(r"\s*([1-5])", x_priority)
        if match:
            return int(match.group(1))
    for name in _WORD_HEADERS:
        word_value = first.get(name)
        if word_value is None:
            continue
        word = word_value.strip().lower()
        if word in _WORD_PRIORITY:
            return _WORD_PRIORITY[word]
    return NORMAL


def effective_priority(user_priority: int, header_prio: int) -> int:
    """The higher of the two (numerically the smaller)."""
    return min(user_priority, header_prio)


def shows_as_urgent(header_prio: int) -> bool:
    """Recipients' mail clients flag header priority 1 (and 2) as important."""
    return header_prio <= 2
