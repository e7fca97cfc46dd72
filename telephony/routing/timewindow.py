"""Weekly time windows in an IANA time zone: "Mon-Fri 22:00-06:00 America/Los_Angeles".

A window is evaluated on the local wall clock of its zone (``zoneinfo``), so it follows daylight
saving time: 08:00-17:00 means 08:00-17:00 local on both sides of a DST change. The hours are
``start`` inclusive and ``end`` exclusive. A window whose end is before its start crosses midnight;
its days name the day the window *starts*: ``days: [fri], hours: 22:00-06:00`` covers Friday 22:00
until Saturday 06:00. On the night clocks go back, a wall-clock time that happens twice matches
twice; on the night they go forward, the skipped hour never happens.

The ``parse_*`` helpers raise :class:`ValueError` with an operator-readable message; the loader
adds the ``file:line``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
ALL_DAYS = frozenset(range(7))
_DAY_SECONDS = 24 * 3600
_HOURS = re.compile(r"([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})\Z")


def _day_index(name: str) -> int:
    key = name.strip().lower()
    if key in DAY_NAMES:
        return DAY_NAMES.index(key)
    if key in _FULL_DAY_NAMES:
        return _FULL_DAY_NAMES.index(key)
    raise ValueError(f"{name!r} is not a day (use mon, tue, wed, thu, fri, sat, sun)")


def parse_days(item: str) -> frozenset[int]:
    """Days named by one entry of ``days``: ``"mon"``, ``"monday"`` or a range ``"mon-fri"``.

    A range may wrap around the week end (``"fri-mon"`` is Fri, Sat, Sun, Mon).
    """
    first, dash, last = item.partition("-")
    if not dash:
        return frozenset({_day_index(first)})
    a, b = _day_index(first), _day_index(last)
    if a == b:
        raise ValueError(f"day range {item!r} starts and ends on the same day; write just one day")
    span = (b - a) % 7
    return frozenset((a + i) % 7 for i in range(span + 1))


def parse_hours(text: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` as (start, end) seconds after midnight; ``24:00`` only as the end."""
    m = _HOURS.match(text.strip())
    if m is None:
        raise ValueError(f"hours {text!r} are not HH:MM-HH:MM (e.g. 22:00-06:00)")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2 != 0):
        raise ValueError(f"hours {text!r}: not a time of day (00:00 to 23:59, or 24:00 as the end)")
    start, end = (h1 * 60 + m1) * 60, (h2 * 60 + m2) * 60
    if start == end:
        raise ValueError(
            f"hours {text!r} start and end at the same time; use 00:00-24:00 for the whole day"
        )
    return start, end


def load_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (e.g. ``America/Los_Angeles``)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"{name!r} is not an IANA time zone (e.g. America/Los_Angeles, UTC)"
        ) from None


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def describe_days(days: frozenset[int]) -> str:
    if days == ALL_DAYS:
        return "every day"
    return ",".join(DAY_NAMES[d] for d in sorted(days))


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Days of the week (0 = Monday) and hours ``[start, end)`` in seconds, in ``zone``."""

    zone: ZoneInfo
    days: frozenset[int] = ALL_DAYS
    start: int = 0
    end: int = _DAY_SECONDS

    @property
    def crosses_midnight(self) -> bool:
        return self.end < self.start

    def contains(self, now: datetime) -> bool:
        """Whether the aware datetime ``now`` falls inside this window."""
        local = now.astimezone(self.zone)
        t = local.hour * 3600 + local.minute * 60 + local.second
        day = local.weekday()
        if not self.crosses_midnight:
            return day in self.days and self.start <= t < self.end
        # Starts on one of ``days`` and runs into the next morning.
        return (day in self.days and t >= self.start) or (
            (day - 1) % 7 in self.days and t < self.end
        )

    def describe(self) -> str:
        hours = f"{_clock(self.start)}-{_clock(self.end)}"
        return f"{describe_days(self.days)} {hours} {self.zone.key}"


def local_time_text(now: datetime, zone: ZoneInfo) -> str:
    """``now`` as the window sees it, e.g. ``"sun 03:00 America/Los_Angeles"``."""
    local = now.astimezone(zone)
    return f"{DAY_NAMES[local.weekday()]} {local:%H:%M} {zone.key}"
