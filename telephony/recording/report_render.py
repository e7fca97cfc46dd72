"""How the KPI report is written: an aligned ``table`` for a person, one ``json`` object, or
``csv`` with one row per transfer (times as HHMMSS in the report's time zone, 004 §IV.H.5).

Part of ``handoffctl report``: :func:`render` takes what :mod:`telephony.recording.report_kpi`
computed; :mod:`telephony.recording.report` re-exports it. Column and field definitions:
docs/report.md.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, tzinfo
from typing import Any

from telephony.recording.report_kpi import (
    FORMATS,
    Figures,
    Report,
    ReportError,
    Transfer,
    hhmmss,
    is_within,
    local,
    zone_name,
)

#: CSV columns, one row per transfer (docs/report.md maps them to 004 §IV.H)
CSV_COLUMNS = tuple(
    """date transfer_id call_id incident_number emergency_call_id psap position first_ring_date
    first_ring pickup transfer_start destination_answer completed outcome outcome_time
    abandon_phase destination sip_status reason triage_level mode trigger failovers
    seconds_to_answer within_interval caller_number""".split()  # noqa: SIM905
)
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")


def _cell(value: str | None) -> str:
    """A CSV cell that a spreadsheet will not run as a formula: free text starting with
    ``= + - @`` (or a tab / CR) gets a leading ``'``; numbers such as ``+18055550100`` stay."""
    s = "" if value is None else value
    if s and s[0] in "=+-@\t\r" and not _NUMBER.fullmatch(s):
        return "'" + s
    return s


def csv_row(t: Transfer, tz: tzinfo, answer_interval: float) -> list[str]:
    a = t.answer_ms
    within = "" if t.outcome == "cancelled" else ("yes" if is_within(t, answer_interval) else "no")
    ring = t.call_offered_ms
    values = [
        local(t.requested_ms, tz).date().isoformat(),
        t.transfer_id,
        t.call_id,
        t.incident_id,
        t.emergency_call_id,
        t.psap,
        t.position,
        "" if ring is None else local(ring, tz).date().isoformat(),
        hhmmss(ring, tz),
        hhmmss(t.dispatcher_answered_ms, tz),
        hhmmss(t.requested_ms, tz),
        hhmmss(t.answered_ms, tz),
        hhmmss(t.completed_ms, tz),
        t.outcome or "open",
        hhmmss(t.outcome_ms, tz),
        t.phase,
        t.destination,
        t.sip_status,
        t.reason,
        t.triage_level,
        t.mode,
        t.trigger,
        str(t.failovers),
        "" if a is None else f"{a / 1000:.3f}",
        within,
        t.caller_number,
    ]
    return [_cell(v) for v in values]


def _render_csv(report: Report, rows: Sequence[Transfer], tz: tzinfo) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for t in sorted(rows, key=lambda t: (t.requested_ms, t.transfer_id)):
        writer.writerow(csv_row(t, tz, report.answer_interval))
    return buf.getvalue()


def _iso(ms: int, tz: tzinfo) -> str:
    return local(ms, tz).isoformat()


def _fig_json(f: Figures) -> dict[str, Any]:
    d = asdict(f)
    d["abandoned_by_phase"] = dict(f.abandoned_by_phase)
    return d


def _render_json(report: Report, tz: tzinfo) -> str:
    def groups(g: tuple[tuple[str, Figures], ...]) -> dict[str, Any]:
        return {k: _fig_json(f) for k, f in g}

    obj = {
        "from": _iso(report.from_ms, tz),
        "to": _iso(report.to_ms, tz),
        "from_ms": report.from_ms,
        "to_ms": report.to_ms,
        "time_zone": zone_name(tz),
        "psap": report.psap,
        "answer_interval_s": report.answer_interval,
        "percentile_method": "nearest-rank",
        "totals": _fig_json(report.totals),
        "by_psap": groups(report.by_psap),
        "by_destination": groups(report.by_destination),
        "by_mode": groups(report.by_mode),
        "by_triage_level": groups(report.by_triage_level),
        "missing_records": {"transfers": report.missing_transfers, "calls": report.missing_calls},
    }
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def _pct(r: float | None) -> str:
    return "-" if r is None else f"{r * 100:.1f} %"


def _sec(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f}"


def _align(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = []
    for r in (header, *rows):
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


_COUNTS = "transfers completed failed cancelled abandoned open answered"
_GROUP_HEADER = (*_COUNTS.split(), "p50_s", "p90_s", "p99_s", "within", "share")


def _group_table(title: str, groups: tuple[tuple[str, Figures], ...], offered: bool) -> list[str]:
    header = [title] + (["offered", "diversion"] if offered else []) + list(_GROUP_HEADER)
    rows = []
    for key, f in groups:
        lead = [key] + ([str(f.calls_offered or 0), _pct(f.diversion_rate)] if offered else [])
        counts = (f.transfers, f.completed, f.failed, f.cancelled, f.abandoned, f.open, f.answered)
        rows.append(
            lead
            + [str(n) for n in counts]
            + [_sec(f.answer_p50), _sec(f.answer_p90), _sec(f.answer_p99)]
            + [f"{f.within}/{f.within_denominator}", _pct(f.share_within)]
        )
    return _align(header, rows)


def _render_table(report: Report, tz: tzinfo) -> str:
    t = report.totals
    fmt = "%Y-%m-%d %H:%M:%S"
    interval = f"{report.answer_interval:g} s"
    lines = [
        "Transfer KPI report (911 -> 988)",
        f"  range       {local(report.from_ms, tz).strftime(fmt)} to "
        f"{local(report.to_ms, tz).strftime(fmt)} {zone_name(tz)} (end excluded)",
        f"  PSAP        {report.psap or 'all'}",
        f"  interval    {interval} from transfer start to destination answer",
        "  percentiles nearest-rank, over the transfers the destination answered",
        "",
    ]
    items = [
        ("calls offered", str(t.calls_offered or 0)),
        ("transfers", str(t.transfers)),
        ("diversion rate", f"{_pct(t.diversion_rate)} (transfers / calls offered)"),
        ("completed", str(t.completed)),
        ("failed", str(t.failed)),
        ("cancelled", str(t.cancelled)),
        ("abandoned", f"{t.abandoned} ({_pct(t.abandonment_rate)} of transfers)"),
        *((f"  {phase}", str(n)) for phase, n in t.abandoned_by_phase),
        ("open (no outcome yet)", str(t.open)),
        ("returned to dispatcher", str(t.returned)),
        ("failovers", str(t.failovers)),
        ("answered by destination", str(t.answered)),
        (
            "time to answer p50/p90/p99",
            f"{_sec(t.answer_p50)} / {_sec(t.answer_p90)} / {_sec(t.answer_p99)} s",
        ),
        (
            f"within {interval}",
            f"{t.within} of {t.within_denominator} = {_pct(t.share_within)} (cancelled excluded)",
        ),
    ]
    width = max(len(k) for k, _ in items)
    lines += ["Totals"] + [f"  {k.ljust(width)}  {v}" for k, v in items]
    for title, groups, offered in (
        ("PSAP", report.by_psap, True),
        ("destination", report.by_destination, False),
        ("mode", report.by_mode, False),
        ("triage_level", report.by_triage_level, False),
    ):
        if groups:
            lines += ["", *_group_table(title, groups, offered)]
    if report.missing_transfers or report.missing_calls:
        lines += [
            "",
            f"warning: {report.missing_transfers} transfer(s) and {report.missing_calls} call(s) "
            "in the time index had no record (expired?) and are not counted",
        ]
    return "\n".join(lines) + "\n"


def render(report: Report, rows: Sequence[Transfer], fmt: str, *, tz: tzinfo = UTC) -> str:
    """``report`` as ``table`` or ``json``, or ``rows`` as ``csv`` (one row per transfer);
    dates and times in ``tz``."""
    if fmt == "table":
        return _render_table(report, tz)
    if fmt == "json":
        return _render_json(report, tz)
    if fmt == "csv":
        return _render_csv(report, rows, tz)
    raise ReportError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
