"""What the KPI report computes, without I/O: the range, the rows, the figures.

Part of ``handoffctl report`` (:mod:`telephony.recording.report` is the entry point and re-exports
everything public here; docs/report.md defines every figure):

- :func:`parse_range` turns ``--from`` / ``--to`` into ``[from_ms, to_ms)`` epoch ms in a time
  zone (:func:`zone`); :func:`hhmmss` and :func:`local` format instants for the PSAP.
- :class:`Transfer` and :class:`Call` are the rows read from Redis, :class:`Dataset` a read.
- :func:`compute` (pure) turns a dataset into a :class:`Report`: totals, diversion rate,
  outcomes, abandonment by phase, time to destination answer p50/p90/p99 (nearest-rank), and the
  share answered within ``records.answer_interval`` (shared/domain/004 §IV.F.2 style), overall and
  per PSAP, destination, mode and triage level.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from telephony.recording.events import PHASES

#: the longest range one report may cover, in days (a leap year)
MAX_RANGE_DAYS = 366
#: the percentiles of time to destination answer, nearest-rank
PERCENTILES = (50, 90, 99)
FORMATS = ("table", "csv", "json")
#: the group key of a transfer or call without that field
NONE = "(none)"
#: the final outcomes of a transfer (a transfer without one is still open)
_OUTCOMES = ("completed", "failed", "cancelled", "abandoned")

_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


class ReportError(Exception):
    """A bad argument (date, range, time zone, format); the message names the argument."""

    exit_code = 2


# ------------------------------------------------------------------------ time and ranges


def local_zone() -> tzinfo:
    """The machine's local zone with its DST rules: ``$TZ`` if it names a zone, else the zone
    ``/etc/localtime`` links to (or holds); a fixed offset only as a last resort."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        with contextlib.suppress(ZoneInfoNotFoundError, ValueError, OSError):
            return ZoneInfo(name)
    with contextlib.suppress(ZoneInfoNotFoundError, ValueError, OSError):
        target = os.path.realpath("/etc/localtime")
        if "/zoneinfo/" in target:
            return ZoneInfo(target.split("/zoneinfo/", 1)[1])
    with contextlib.suppress(ValueError, OSError), open("/etc/localtime", "rb") as f:
        return ZoneInfo.from_file(f, key="localtime")
    return datetime.now().astimezone().tzinfo or UTC


def zone(name: str | None) -> tzinfo:
    """The zone called ``name`` (an IANA name such as ``America/Los_Angeles``, or ``UTC``); the
    machine's local zone when ``name`` is None or empty."""
    if not name:
        return local_zone()
    if name.upper() in ("UTC", "Z", "ETC/UTC"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ReportError(
            f"--tz: {name!r} is not a time zone (an IANA name such as America/Los_Angeles, or UTC)"
        ) from None


def zone_name(tz: tzinfo) -> str:
    key = getattr(tz, "key", None)
    return str(key) if key else (tz.tzname(None) or "UTC")


def epoch_ms(dt: datetime) -> int:
    """Exact Unix epoch milliseconds of an aware datetime."""
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def local(ms: int, tz: tzinfo) -> datetime:
    """``ms`` (epoch milliseconds) as a datetime in ``tz``, truncated to the second."""
    return datetime.fromtimestamp(ms // 1000, tz)


def hhmmss(ms: int | None, tz: tzinfo) -> str:
    """004 §IV.H.5: ``HHMMSS`` with leading zeroes (``000000`` is midnight); empty when None."""
    return "" if ms is None else local(ms, tz).strftime("%H%M%S")


def _bound(flag: str, text: str, tz: tzinfo, *, end: bool) -> int:
    s = text.strip()
    if _DATE.fullmatch(s):
        try:
            day = date.fromisoformat(s)
            if end:  # --to DATE includes that whole day
                day += timedelta(days=1)
        except (ValueError, OverflowError):
            raise ReportError(f"{flag}: {text!r} is not a date (YYYY-MM-DD)") from None
        return epoch_ms(datetime(day.year, day.month, day.day, tzinfo=tz))
    if _DATETIME.match(s):
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise ReportError(
                f"{flag}: {text!r} is not a date-time (YYYY-MM-DDTHH:MM[:SS][+HH:MM])"
            ) from None
        return epoch_ms(dt if dt.tzinfo is not None else dt.replace(tzinfo=tz))
    raise ReportError(
        f"{flag}: {text!r} is not a date (YYYY-MM-DD) or a date-time (YYYY-MM-DDTHH:MM[:SS])"
    )


def parse_range(from_text: str, to_text: str, tz: tzinfo | str | None = None) -> tuple[int, int]:
    """``[from_ms, to_ms)`` for ``--from`` / ``--to``. A date ``YYYY-MM-DD`` is a whole day in
    ``tz`` (``--from`` its start, ``--to`` the start of the next day, so that day is included); a
    date-time ``YYYY-MM-DDTHH:MM[:SS]`` is that instant in ``tz`` unless it carries an offset, and
    ``--to`` is then excluded. ``tz``: a tzinfo, a zone name, or None for the local zone.
    Raises :class:`ReportError` for a bad value, an empty range or one over 366 days."""
    tzi = tz if isinstance(tz, tzinfo) else zone(tz)
    start = _bound("--from", from_text, tzi, end=False)
    end = _bound("--to", to_text, tzi, end=True)
    if end <= start:
        raise ReportError(
            f"--to: {to_text!r} is not after --from {from_text!r}: the range is empty"
        )
    # an hour of slack: a year of local days may be an hour longer across a DST change
    if end - start > MAX_RANGE_DAYS * _DAY_MS + _HOUR_MS:
        days = (end - start) / _DAY_MS
        raise ReportError(
            f"--to: {to_text!r} is {days:.1f} days after --from {from_text!r}; "
            f"a report covers at most {MAX_RANGE_DAYS} days"
        )
    return start, end


# ----------------------------------------------------------------------------------- rows


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Transfer:
    """One ``P transfer:<id>`` hash. ``caller_number`` is the number only where it was stored in
    clear; a ``caller_hash`` is never read. Times are epoch ms; None when the hash lacks them."""

    transfer_id: str
    requested_ms: int
    call_id: str | None = None
    psap: str | None = None
    trunk: str | None = None
    emergency_call_id: str | None = None
    incident_id: str | None = None
    position: str | None = None
    trigger: str | None = None
    mode: str | None = None
    triage_level: str | None = None
    caller_number: str | None = None
    outcome: str | None = None  # completed | failed | cancelled | abandoned; None: still open
    phase: str | None = None
    destination: str | None = None
    sip_status: str | None = None
    reason: str | None = None
    call_offered_ms: int | None = None
    dispatcher_answered_ms: int | None = None
    trying_ms: int | None = None
    ringing_ms: int | None = None
    answered_ms: int | None = None
    completed_ms: int | None = None
    dispatcher_left_ms: int | None = None
    failed_ms: int | None = None
    cancelled_ms: int | None = None
    abandoned_ms: int | None = None
    returned_ms: int | None = None
    failovers: int = 0

    @classmethod
    def from_hash(cls, transfer_id: str, h: Mapping[str, str], score: float) -> Transfer:
        """Read a transfer hash; ``score`` (its ``transfers:by_time`` score) stands in for a
        missing or unreadable ``requested_ms``."""
        kwargs: dict[str, Any] = {k: h[k] for k in _TEXT if h.get(k)}
        kwargs.update((k, _int(h.get(k))) for k in TIMES)
        if kwargs.get("requested_ms") is None:
            kwargs["requested_ms"] = int(score)
        kwargs["transfer_id"] = h.get("transfer_id") or transfer_id
        kwargs["failovers"] = _int(h.get("failovers")) or 0
        return cls(**kwargs)

    @property
    def answer_ms(self) -> int | None:
        """Time to destination answer (answered_ms - requested_ms), or None if never answered."""
        return None if self.answered_ms is None else self.answered_ms - self.requested_ms

    @property
    def outcome_ms(self) -> int | None:
        """When the outcome event happened (None while open)."""
        return getattr(self, f"{self.outcome}_ms", None) if self.outcome in _OUTCOMES else None


_NAMES = [f.name for f in fields(Transfer)]
#: the timestamps of a transfer hash (epoch ms)
TIMES = tuple(n for n in _NAMES if n.endswith("_ms"))
_TEXT = tuple(n for n in _NAMES if not n.endswith("_ms") and n not in ("transfer_id", "failovers"))


@dataclass(frozen=True, slots=True)
class Call:
    """One offered call (``calls:by_time`` member whose ``P call:<id>`` hash exists)."""

    call_id: str
    offered_ms: int
    psap: str | None = None


@dataclass(frozen=True, slots=True)
class Dataset:
    """What :func:`load` read: the transfers requested and the calls offered in
    ``[from_ms, to_ms)``, of ``psap`` (None: all). ``missing_*``: index members whose hash is gone
    (expired or never written); they are left out of every figure."""

    from_ms: int
    to_ms: int
    psap: str | None
    transfers: tuple[Transfer, ...]
    calls: tuple[Call, ...]
    missing_transfers: int = 0
    missing_calls: int = 0


# -------------------------------------------------------------------------------- compute


def nearest_rank(values: Iterable[int], p: int) -> int | None:
    """The ``p``-th percentile (0 < p <= 100) by the nearest-rank method: the smallest value
    such that at least p % of the values are <= it, i.e. the ``ceil(p * n / 100)``-th smallest.
    None when there are no values. Always one of the values (never interpolated)."""
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} is not in (0, 100]")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = -(-p * len(ordered) // 100)  # ceil without floats
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True, slots=True)
class Figures:
    """The KPIs of one set of transfers (docs/report.md gives each definition).

    ``answer_p*`` are seconds; ``share_within`` = ``within / within_denominator``;
    ``calls_offered`` and ``diversion_rate`` only for the totals and per PSAP (None elsewhere).
    Ratios are None when their denominator is 0."""

    transfers: int
    completed: int
    failed: int
    cancelled: int
    abandoned: int
    abandoned_by_phase: tuple[tuple[str, int], ...]
    open: int
    returned: int
    failovers: int
    answered: int
    answer_p50: float | None
    answer_p90: float | None
    answer_p99: float | None
    within: int
    within_denominator: int
    share_within: float | None
    abandonment_rate: float | None
    calls_offered: int | None = None
    diversion_rate: float | None = None


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def is_within(t: Transfer, answer_interval: float) -> bool:
    """Counted as within interval: not cancelled, reached destination answer, and
    ``answered_ms - requested_ms <= answer_interval`` seconds."""
    a = t.answer_ms
    return t.outcome != "cancelled" and a is not None and a <= answer_interval * 1000


def figures(
    transfers: Sequence[Transfer], answer_interval: float, calls_offered: int | None = None
) -> Figures:
    """The KPIs of ``transfers`` (pure). ``calls_offered``: the diversion-rate denominator."""
    outcome = {o: sum(1 for t in transfers if t.outcome == o) for o in _OUTCOMES}
    phases: dict[str, int] = dict.fromkeys(PHASES, 0)
    for t in transfers:
        if t.outcome == "abandoned":
            key = t.phase or NONE
            phases[key] = phases.get(key, 0) + 1
    answers = [a for t in transfers if (a := t.answer_ms) is not None]
    pct = [nearest_rank(answers, p) for p in PERCENTILES]
    secs = [None if v is None else v / 1000 for v in pct]
    within = sum(1 for t in transfers if is_within(t, answer_interval))
    denominator = len(transfers) - outcome["cancelled"]
    return Figures(
        transfers=len(transfers),
        completed=outcome["completed"],
        failed=outcome["failed"],
        cancelled=outcome["cancelled"],
        abandoned=outcome["abandoned"],
        abandoned_by_phase=tuple(phases.items()),
        open=sum(1 for t in transfers if t.outcome not in _OUTCOMES),
        returned=sum(1 for t in transfers if t.returned_ms is not None),
        failovers=sum(t.failovers for t in transfers),
        answered=len(answers),
        answer_p50=secs[0],
        answer_p90=secs[1],
        answer_p99=secs[2],
        within=within,
        within_denominator=denominator,
        share_within=_ratio(within, denominator),
        abandonment_rate=_ratio(outcome["abandoned"], len(transfers)),
        calls_offered=calls_offered,
        diversion_rate=None if calls_offered is None else _ratio(len(transfers), calls_offered),
    )


def _sort_key(key: str) -> tuple[int, int, str]:
    return (key == NONE, int(key) if key.isdigit() else 0, key)


def _groups(
    transfers: Sequence[Transfer], key: Callable[[Transfer], str | None]
) -> dict[str, list[Transfer]]:
    out: dict[str, list[Transfer]] = {}
    for t in transfers:
        out.setdefault(key(t) or NONE, []).append(t)
    return {k: out[k] for k in sorted(out, key=_sort_key)}


@dataclass(frozen=True, slots=True)
class Report:
    from_ms: int
    to_ms: int
    psap: str | None
    answer_interval: float
    totals: Figures
    by_psap: tuple[tuple[str, Figures], ...]
    by_destination: tuple[tuple[str, Figures], ...]
    by_mode: tuple[tuple[str, Figures], ...]
    by_triage_level: tuple[tuple[str, Figures], ...]
    missing_transfers: int = 0
    missing_calls: int = 0


def compute(dataset: Dataset, *, answer_interval: float) -> Report:
    """The KPIs of ``dataset`` (pure: no I/O, no clock). ``answer_interval``: seconds."""
    if answer_interval <= 0:
        raise ValueError(f"answer_interval must be positive, not {answer_interval}")
    ts = dataset.transfers
    offered: dict[str, int] = {}
    for c in dataset.calls:
        offered[c.psap or NONE] = offered.get(c.psap or NONE, 0) + 1
    by_psap = _groups(ts, lambda t: t.psap)
    psaps = sorted(set(by_psap) | set(offered), key=_sort_key)

    def per(key: Callable[[Transfer], str | None]) -> tuple[tuple[str, Figures], ...]:
        return tuple((k, figures(g, answer_interval)) for k, g in _groups(ts, key).items())

    return Report(
        from_ms=dataset.from_ms,
        to_ms=dataset.to_ms,
        psap=dataset.psap,
        answer_interval=answer_interval,
        totals=figures(ts, answer_interval, len(dataset.calls)),
        by_psap=tuple(
            (p, figures(by_psap.get(p, []), answer_interval, offered.get(p, 0))) for p in psaps
        ),
        by_destination=per(lambda t: t.destination),
        by_mode=per(lambda t: t.mode),
        by_triage_level=per(lambda t: t.triage_level),
        missing_transfers=dataset.missing_transfers,
        missing_calls=dataset.missing_calls,
    )
