"""Small text formatters shared by the console's screens (pure)."""

from __future__ import annotations

import datetime as dt

from relay.display import clean
from relay.priority import NAMES as PRIORITY_NAMES


def safe(text: object) -> str:
    """Text from outside (headers, addresses, replies, names) as a widget may show it:
    terminal controls, OSC/CSI and bidi overrides escaped visibly (relay.display)."""
    return "" if text is None else clean(text)


def count(n: int | None) -> str:
    """``100000`` → ``100,000``; None → ``-``."""
    return "-" if n is None else f"{n:,}"


def age(seconds: float | None) -> str:
    """A short duration: ``0s``, ``42s``, ``3m05s``, ``2h14m``, ``3d04h``; None → ``-``."""
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def clock_time(ts: float | None, now: float) -> str:
    """Local ``HH:MM:SS`` for today, else ``YYYY-MM-DD HH:MM``; None → ``-``."""
    if ts is None:
        return "-"
    when = dt.datetime.fromtimestamp(ts).astimezone()
    today = dt.datetime.fromtimestamp(now).astimezone().date()
    if when.date() == today:
        return when.strftime("%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M")


def full_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def local_midnight(now: float) -> float:
    """The start of the local day containing ``now`` (for "today" statistics)."""
    day = dt.datetime.fromtimestamp(now).astimezone()
    return day.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def priority(p: int) -> str:
    """``1`` → ``1 very high``."""
    return f"{p} {PRIORITY_NAMES.get(p, '?')}"


def rate(per_second: float | None) -> str:
    if per_second is None:
        return "-"
    if per_second == 0:
        return "unlimited"
    return f"{per_second:g}/s"


def clean_lines(text: str) -> str:
    """A multi-line block (kept as lines) with every other control escaped."""
    return clean(text, keep_newlines=True)


def shorten(text: str | None, width: int) -> str:
    """Cut ``text`` to ``width`` characters with an ellipsis."""
    if not text:
        return ""
    text = clean(" ".join(text.split()))
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def parse_since(text: str, now: float) -> float | None:
    """An operator's time filter: ``15m``, ``2h``, ``3d``, ``today``, ``HH:MM`` (today)
    or ``YYYY-MM-DD [HH:MM]``. Empty → None. Raises ValueError with the accepted forms."""
    value = text.strip().lower()
    if not value:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return now - float(value[:-1]) * units[value[-1]]
    if value == "today":
        return local_midnight(now)
    try:
        if len(value) <= 5 and ":" in value:
            hour, minute = (int(x) for x in value.split(":"))
            day = dt.datetime.fromtimestamp(now).astimezone()
            return day.replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()
        for fmt in ("%Y-%m-%d %H:%M", "%Y-%m-%d"):
            try:
                return dt.datetime.strptime(value, fmt).astimezone().timestamp()
            except ValueError:
                continue
    except ValueError:
        pass
    raise ValueError("time: use 15m, 2h, 3d, today, HH:MM or YYYY-MM-DD [HH:MM]")
