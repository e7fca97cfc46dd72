"""The KPI report (telephony/recording/report.py) without Redis: every figure of a known set of
transfers against numbers worked out by hand below, nearest-rank percentile edge cases, the
--from/--to parser and its errors, and the CSV (header, HHMMSS across midnight and DST)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

import pytest

from telephony.recording.report import (
    CSV_COLUMNS,
    NONE,
    Call,
    Dataset,
    Figures,
    ReportError,
    Transfer,
    compute,
    hhmmss,
    nearest_rank,
    parse_range,
    render,
    zone,
)

LA = ZoneInfo("America/Los_Angeles")
T0 = 1_773_144_000_000  # 2026-03-10T12:00:00Z
S = 1000  # one second in ms
INTERVAL = 60.0


def ms(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, tz: tzinfo = UTC) -> int:
    """Epoch ms of a wall-clock time (worked out with datetime, not the code under test)."""
    return int(datetime(y, mo, d, h, mi, s, tzinfo=tz).timestamp()) * 1000


def test_t0() -> None:
    assert ms(2026, 3, 10, 12) == T0


def transfer(n: int, psap: str, **fields: object) -> Transfer:
    """A transfer hash as the records writer stores it (all values strings), read back."""
    h = {
        "transfer_id": f"t{n}",
        "call_id": f"c{n}",
        "psap": psap,
        "trunk": f"trunk-{psap}",
        "requested_ms": str(T0 + n * 600 * S),
        "failovers": "0",
    }
    for key, value in fields.items():
        if key.endswith("_after"):  # seconds after the request
            assert isinstance(value, int | float)
            h[key.removesuffix("_after") + "_ms"] = str(T0 + n * 600 * S + int(value * S))
        else:
            h[key] = str(value)
    return Transfer.from_hash(f"t{n}", h, T0 + n * 600 * S)


D1, D2 = "988-ventura", "988-backup"
A, B = "vcso", "oxnard"

# t1..t10: PSAP, destination, mode, triage level, outcome, phase, seconds to destination answer
TRANSFERS = (
    transfer(1, A, destination=D1, mode="cold", triage_level=2, outcome="completed",
             answered_after=10, completed_after=12),
    transfer(2, A, destination=D1, mode="warm", triage_level=3, outcome="completed",
             answered_after=60, completed_after=75, dispatcher_left_after=75),
    transfer(3, A, destination=D2, mode="cold", triage_level=2, outcome="completed",
             answered_after=90, completed_after=91, failovers=1),
    transfer(4, B, destination=D2, mode="cold", triage_level=2, outcome="failed",
             sip_status=503, reason="all destinations failed", failed_after=20, returned_after=21),
    transfer(5, B, destination=D1, mode="warm", triage_level=3, outcome="cancelled",
             sip_status=487, cancelled_after=5),
    transfer(6, A, destination=D1, mode="cold", triage_level=2, outcome="abandoned",
             phase="before destination ringing", abandoned_after=2),
    transfer(7, B, destination=D1, mode="warm", triage_level=2, outcome="abandoned",
             phase="while ringing", ringing_after=3, abandoned_after=8),
    transfer(8, B, destination=D2, mode="warm", triage_level=1, outcome="abandoned",
             phase="in conference", answered_after=30, abandoned_after=40),
    transfer(9, A, destination=D1, mode="consult", triage_level=3, outcome="abandoned",
             phase="on consult hold", answered_after=45, abandoned_after=50),
    transfer(10, A, mode="cold"),  # still open: no destination, no answer, no outcome
)  # fmt: skip
CALLS = tuple(Call(f"c{n}", T0 + n * S, A) for n in range(1, 11)) + tuple(
    Call(f"b{n}", T0 + n * S, B) for n in range(1, 6)
)
DATASET = Dataset(T0, T0 + 86_400_000, None, TRANSFERS, CALLS)


def test_transfer_from_hash() -> None:
    t = TRANSFERS[2]
    assert (t.transfer_id, t.psap, t.destination, t.mode, t.triage_level) == (
        "t3",
        A,
        D2,
        "cold",
        "2",
    )
    assert t.requested_ms == T0 + 1800 * S
    assert t.answer_ms == 90_000
    assert t.failovers == 1
    assert t.outcome_ms == t.completed_ms == T0 + 1800 * S + 91 * S
    assert TRANSFERS[9].outcome is None and TRANSFERS[9].outcome_ms is None
    # requested_ms missing or unreadable: the index score stands in
    assert Transfer.from_hash("x", {"requested_ms": "junk"}, 1234.0).requested_ms == 1234
    # a caller hash is never read; a clear number is
    hashed = Transfer.from_hash("x", {"caller_hash": "ab12"}, 1.0)
    assert hashed.caller_number is None
    assert Transfer.from_hash("x", {"caller_number": "+18055550100"}, 1).caller_number


PHASES_ONE_EACH = (
    ("before destination ringing", 1),
    ("while ringing", 1),
    ("in conference", 1),
    ("on consult hold", 1),
)


def test_totals() -> None:
    r = compute(DATASET, answer_interval=INTERVAL)
    # answered: t1 10 s, t2 60 s, t3 90 s, t8 30 s, t9 45 s -> sorted 10 30 45 60 90 (n = 5)
    # nearest rank: p50 -> ceil(2.5) = 3rd = 45; p90 -> ceil(4.5) = 5th = 90; p99 -> 5th = 90
    # within 60 s (not cancelled): t1, t2 (exactly 60 s), t8, t9 = 4; denominator 10 - 1 = 9
    assert r.totals == Figures(
        transfers=10,
        completed=3,
        failed=1,
        cancelled=1,
        abandoned=4,
        abandoned_by_phase=PHASES_ONE_EACH,
        open=1,
        returned=1,
        failovers=1,
        answered=5,
        answer_p50=45.0,
        answer_p90=90.0,
        answer_p99=90.0,
        within=4,
        within_denominator=9,
        share_within=4 / 9,
        abandonment_rate=4 / 10,
        calls_offered=15,
        diversion_rate=10 / 15,
    )
    assert (r.from_ms, r.to_ms, r.psap, r.answer_interval) == (T0, T0 + 86_400_000, None, 60.0)
    assert (r.missing_transfers, r.missing_calls) == (0, 0)


def test_per_psap() -> None:
    r = compute(DATASET, answer_interval=INTERVAL)
    assert [k for k, _ in r.by_psap] == [B, A]  # sorted by name: oxnard, vcso
    per = dict(r.by_psap)
    # vcso: t1 t2 t3 t6 t9 t10; answered 10 60 90 45 -> 10 45 60 90: p50 2nd = 45, p90 4th = 90
    # within: t1 t2 t9 = 3 of 6 (none cancelled); 10 calls offered
    assert per[A] == Figures(
        transfers=6, completed=3, failed=0, cancelled=0, abandoned=2,
        abandoned_by_phase=(("before destination ringing", 1), ("while ringing", 0),
                            ("in conference", 0), ("on consult hold", 1)),
        open=1, returned=0, failovers=1, answered=4,
        answer_p50=45.0, answer_p90=90.0, answer_p99=90.0,
        within=3, within_denominator=6, share_within=0.5, abandonment_rate=2 / 6,
        calls_offered=10, diversion_rate=0.6,
    )  # fmt: skip
    # oxnard: t4 t5 t7 t8; answered only t8 (30 s); within t8 = 1 of 4 - 1 cancelled = 3
    assert per[B] == Figures(
        transfers=4, completed=0, failed=1, cancelled=1, abandoned=2,
        abandoned_by_phase=(("before destination ringing", 0), ("while ringing", 1),
                            ("in conference", 1), ("on consult hold", 0)),
        open=0, returned=1, failovers=0, answered=1,
        answer_p50=30.0, answer_p90=30.0, answer_p99=30.0,
        within=1, within_denominator=3, share_within=1 / 3, abandonment_rate=0.5,
        calls_offered=5, diversion_rate=0.8,
    )  # fmt: skip


def test_per_destination() -> None:
    r = compute(DATASET, answer_interval=INTERVAL)
    assert [k for k, _ in r.by_destination] == [D2, D1, NONE]  # (none) last
    per = dict(r.by_destination)
    # 988-ventura: t1 t2 t5 t6 t7 t9; answered 10 60 45 -> 10 45 60: p50 ceil(1.5) = 2nd = 45,
    # p90 ceil(2.7) = 3rd = 60; within t1 t2 t9 = 3 of 6 - 1 cancelled = 5
    d1 = per[D1]
    assert (d1.transfers, d1.completed, d1.cancelled, d1.abandoned, d1.answered) == (6, 2, 1, 3, 3)
    assert (d1.answer_p50, d1.answer_p90, d1.answer_p99) == (45.0, 60.0, 60.0)
    assert (d1.within, d1.within_denominator, d1.share_within) == (3, 5, 0.6)
    assert (d1.calls_offered, d1.diversion_rate) == (None, None)
    # 988-backup: t3 t4 t8; answered 90 30 -> 30 90: p50 ceil(1.0) = 1st = 30, p90 2nd = 90
    d2 = per[D2]
    assert (d2.transfers, d2.completed, d2.failed, d2.abandoned, d2.answered) == (3, 1, 1, 1, 2)
    assert (d2.answer_p50, d2.answer_p90, d2.answer_p99) == (30.0, 90.0, 90.0)
    assert (d2.within, d2.within_denominator, d2.share_within) == (1, 3, 1 / 3)
    # no destination: the open t10 -- not within, no percentiles
    n = per[NONE]
    assert (n.transfers, n.open, n.answered, n.within, n.within_denominator) == (1, 1, 0, 0, 1)
    assert (n.answer_p50, n.answer_p90, n.answer_p99, n.share_within) == (None, None, None, 0.0)


def test_per_mode_and_triage_level() -> None:
    r = compute(DATASET, answer_interval=INTERVAL)
    mode = dict(r.by_mode)
    assert list(mode) == ["cold", "consult", "warm"]
    # cold: t1 t3 t4 t6 t10; answered 10 90; within t1 = 1 of 5
    assert (mode["cold"].transfers, mode["cold"].within, mode["cold"].within_denominator) == (
        5, 1, 5
    )  # fmt: skip
    assert (mode["cold"].answer_p50, mode["cold"].answer_p90) == (10.0, 90.0)
    # warm: t2 t5 t7 t8; within t2 t8 = 2 of 4 - 1 cancelled = 3
    assert (mode["warm"].transfers, mode["warm"].within, mode["warm"].within_denominator) == (
        4, 2, 3
    )  # fmt: skip
    assert (mode["consult"].transfers, mode["consult"].within) == (1, 1)
    level = dict(r.by_triage_level)
    assert list(level) == ["1", "2", "3", NONE]  # numeric order, missing last
    # level 2: t1 t3 t4 t6 t7; answered 10 90; within t1 = 1 of 5
    assert (level["2"].transfers, level["2"].answered, level["2"].within) == (5, 2, 1)
    assert level["1"].share_within == 1.0  # t8 answered in 30 s, then abandoned in conference
    # level 3: t2 t5 t9 -> within t2 t9 = 2 of 3 - 1 cancelled
    assert (level["3"].within, level["3"].within_denominator) == (2, 2)
    assert level[NONE].transfers == 1


def test_interval_boundary_and_cancelled_answer() -> None:
    exact = transfer(1, A, answered_after=60, outcome="completed")
    late = transfer(2, A, answered_after=60.001, outcome="completed")
    cancelled_after_answer = transfer(3, A, answered_after=5, outcome="cancelled")
    f = compute(
        Dataset(T0, T0 + 1, None, (exact, late, cancelled_after_answer), ()), answer_interval=60
    ).totals
    assert (f.within, f.within_denominator, f.answered) == (1, 2, 3)
    assert (f.calls_offered, f.diversion_rate) == (0, None)  # no calls: no rate, no crash


def test_empty_dataset() -> None:
    r = compute(Dataset(T0, T0 + 1, "vcso", (), ()), answer_interval=60)
    f = r.totals
    assert (f.transfers, f.answered, f.within, f.within_denominator) == (0, 0, 0, 0)
    assert (f.share_within, f.abandonment_rate, f.diversion_rate, f.answer_p50) == (
        None, None, None, None
    )  # fmt: skip
    assert r.by_psap == r.by_destination == r.by_mode == ()
    for fmt in ("table", "json", "csv"):
        assert render(r, (), fmt)


def test_unknown_phase_and_calls_without_transfers() -> None:
    odd = transfer(1, A, outcome="abandoned")  # no phase recorded
    r = compute(
        Dataset(T0, T0 + 1, None, (odd,), (Call("c1", T0, A), Call("z", T0, "ventura-pd"))),
        answer_interval=60,
    )
    assert dict(r.totals.abandoned_by_phase)[NONE] == 1
    per = dict(r.by_psap)
    assert (per["ventura-pd"].calls_offered, per["ventura-pd"].transfers) == (1, 0)
    assert per["ventura-pd"].diversion_rate == 0.0


def test_compute_rejects_a_nonpositive_interval() -> None:
    with pytest.raises(ValueError, match="answer_interval"):
        compute(DATASET, answer_interval=0)


# ------------------------------------------------------------------------------ percentiles


@pytest.mark.parametrize("p", [50, 90, 99])
def test_nearest_rank_edges(p: int) -> None:
    assert nearest_rank([], p) is None
    assert nearest_rank([7], p) == 7
    assert nearest_rank([9, 3], p) == (3 if p == 50 else 9)  # ceil(0.5 * 2) = 1st, ceil(1.8) = 2nd


def test_nearest_rank_hundred_values() -> None:
    values = list(range(100, 0, -1))  # 1..100, unsorted
    assert [nearest_rank(values, p) for p in (1, 50, 90, 99, 100)] == [1, 50, 90, 99, 100]
    assert nearest_rank(list(range(1, 11)), 99) == 10  # ceil(9.9) = 10th
    for bad in (0, 101, -5):
        with pytest.raises(ValueError):
            nearest_rank([1], bad)


# ---------------------------------------------------------------------------------- ranges


def test_parse_range_whole_days_in_a_zone() -> None:
    # March 2026 in Los Angeles: starts in PST (UTC-8), ends in PDT (UTC-7) after March 8
    start, end = parse_range("2026-03-01", "2026-03-31", LA)
    assert start == ms(2026, 3, 1, 8)
    assert end == ms(2026, 4, 1, 7)
    assert end - start == 31 * 86_400_000 - 3_600_000
    assert parse_range("2026-03-01", "2026-03-01", "UTC") == (ms(2026, 3, 1), ms(2026, 3, 2))
    assert parse_range(" 2026-03-01 ", "2026-03-01", "America/Los_Angeles")[0] == start


def test_parse_range_date_times() -> None:
    start, end = parse_range("2026-03-01T08:30", "2026-03-01 17:00:05", LA)
    assert (start, end) == (ms(2026, 3, 1, 16, 30), ms(2026, 3, 2, 1, 0, 5))
    # an explicit offset wins over the zone; the end instant is excluded as given
    start, end = parse_range("2026-03-01T00:00:00+00:00", "2026-03-02T00:00Z", LA)
    assert (start, end) == (ms(2026, 3, 1), ms(2026, 3, 2))
    # a date and a date-time mixed
    assert parse_range("2026-03-01", "2026-03-01T12:00", "UTC") == (
        ms(2026, 3, 1),
        ms(2026, 3, 1, 12),
    )


def test_parse_range_at_most_366_days() -> None:
    assert parse_range("2024-01-01", "2024-12-31", "UTC")[1] == ms(2025, 1, 1)  # leap year: 366
    assert parse_range("2026-01-01", "2026-12-31", LA)  # across both DST changes
    with pytest.raises(ReportError, match=r"^--to: '2025-01-01' is 367\.0 days .* at most 366"):
        parse_range("2024-01-01", "2025-01-01", "UTC")


@pytest.mark.parametrize(
    ("from_text", "to_text", "message"),
    [
        ("2026-13-01", "2026-12-31", "--from: '2026-13-01' is not a date (YYYY-MM-DD)"),
        ("2026-02-30", "2026-03-01", "--from: '2026-02-30' is not a date (YYYY-MM-DD)"),
        ("2026-03-01", "2026-02-29", "--to: '2026-02-29' is not a date (YYYY-MM-DD)"),
        ("2026-03-01", "9999-12-31", "--to: '9999-12-31' is not a date (YYYY-MM-DD)"),
        ("yesterday", "2026-03-01", "--from: 'yesterday' is not a date (YYYY-MM-DD) or a date"),
        ("", "2026-03-01", "--from: '' is not a date (YYYY-MM-DD) or a date-time"),
        ("2026/03/01", "2026-03-02", "--from: '2026/03/01' is not a date (YYYY-MM-DD) or a"),
        ("2026-3-1", "2026-03-02", "--from: '2026-3-1' is not a date (YYYY-MM-DD) or a"),
        ("2026-03-01", "03/31/2026", "--to: '03/31/2026' is not a date (YYYY-MM-DD) or a"),
        ("2026-03-01T25:00", "2026-03-02", "--from: '2026-03-01T25:00' is not a date-time"),
        ("2026-03-01", "2026-03-02T10:00+25", "--to: '2026-03-02T10:00+25' is not a date-time"),
        ("2026-03-31", "2026-03-01", "--to: '2026-03-01' is not after --from '2026-03-31': the"),
        ("2026-03-01T10:00", "2026-03-01T10:00", "--to: '2026-03-01T10:00' is not after --from"),
        ("2026-03-01T10:00", "2026-03-01T09:59", "--to: '2026-03-01T09:59' is not after --from"),
        ("2025-01-01", "2026-03-01", "--to: '2026-03-01' is 425.0 days after --from '2025-01-01'"),
    ],
)  # fmt: skip
def test_parse_range_errors(from_text: str, to_text: str, message: str) -> None:
    with pytest.raises(ReportError) as info:
        parse_range(from_text, to_text, "UTC")
    assert str(info.value).startswith(message)
    assert info.value.exit_code == 2


def test_time_zones() -> None:
    assert zone("UTC") is UTC and zone("utc") is UTC
    assert zone("America/Los_Angeles") == LA
    for bad in ("Mars/Base", "../etc/passwd", "America/"):
        with pytest.raises(ReportError, match=r"^--tz: .* is not a time zone"):
            zone(bad)


def test_local_zone_follows_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    assert zone(None) == LA
    assert parse_range("2026-07-01", "2026-07-01")[0] == ms(2026, 7, 1, 7)  # PDT
    monkeypatch.setenv("TZ", ":Europe/Paris")
    assert zone("") == ZoneInfo("Europe/Paris")


# ---------------------------------------------------------------------------------- render


def test_hhmmss() -> None:
    assert hhmmss(ms(2026, 3, 1), UTC) == "000000"  # midnight
    assert hhmmss(ms(2026, 3, 1, 0, 0, 1), UTC) == "000001"
    assert hhmmss(ms(2026, 3, 1, 0, 20, 59), UTC) == "002059"  # 004 §IV.H.5's example
    assert hhmmss(ms(2026, 3, 1, 23, 59, 59) + 999, UTC) == "235959"  # truncated, not rounded
    assert hhmmss(None, UTC) == ""


def _csv(rows: tuple[Transfer, ...], tz: object, interval: float = 60) -> list[dict[str, str]]:
    report = compute(Dataset(0, 1, None, rows, ()), answer_interval=interval)
    text = render(report, rows, "csv", tz=tz)  # type: ignore[arg-type]
    assert text.endswith("\r\n")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    assert tuple(header) == CSV_COLUMNS
    return [dict(zip(header, row, strict=True)) for row in reader]


def test_csv_header() -> None:
    assert CSV_COLUMNS == (
        "date", "transfer_id", "call_id", "incident_number", "emergency_call_id", "psap",
        "position", "first_ring_date", "first_ring", "pickup", "transfer_start",
        "destination_answer", "completed", "outcome", "outcome_time", "abandon_phase",
        "destination", "sip_status", "reason", "triage_level", "mode", "trigger", "failovers",
        "seconds_to_answer", "within_interval", "caller_number",
    )  # fmt: skip


def _raw(tid: str, **h: object) -> Transfer:
    return Transfer.from_hash(tid, {k: str(v) for k, v in h.items()}, 0)


def test_csv_across_the_dst_change() -> None:
    # 2026-03-08 in Los Angeles: 02:00 PST becomes 03:00 PDT (10:00 UTC)
    t = _raw(
        "t1", call_id="c1", psap=A, position="pos-3", incident_id="INC-26-0042",
        emergency_call_id="urn:emergency:uid:callid:abc:psap.example",
        call_offered_ms=ms(2026, 3, 8, 9, 59, 50),  # 01:59:50 PST
        dispatcher_answered_ms=ms(2026, 3, 8, 9, 59, 58),  # 01:59:58 PST
        requested_ms=ms(2026, 3, 8, 10, 0, 5),  # 03:00:05 PDT
        answered_ms=ms(2026, 3, 8, 10, 0, 20) + 250,  # 03:00:20.25 PDT
        completed_ms=ms(2026, 3, 8, 10, 0, 31), outcome="completed",
        destination=D1, triage_level=2, mode="warm", trigger="refer", failovers=1,
        caller_hash="d0e1f2",
    )  # fmt: skip
    (row,) = _csv((t,), LA)
    assert row == {
        "date": "2026-03-08",
        "transfer_id": "t1",
        "call_id": "c1",
        "incident_number": "INC-26-0042",
        "emergency_call_id": "urn:emergency:uid:callid:abc:psap.example",
        "psap": A,
        "position": "pos-3",
        "first_ring_date": "2026-03-08",
        "first_ring": "015950",
        "pickup": "015958",
        "transfer_start": "030005",
        "destination_answer": "030020",
        "completed": "030031",
        "outcome": "completed",
        "outcome_time": "030031",
        "abandon_phase": "",
        "destination": D1,
        "sip_status": "",
        "reason": "",
        "triage_level": "2",
        "mode": "warm",
        "trigger": "refer",
        "failovers": "1",
        "seconds_to_answer": "15.250",  # real elapsed time, not the wall-clock difference
        "within_interval": "yes",
        "caller_number": "",  # only a hash was stored: never printed
    }
    (utc,) = _csv((t,), UTC)
    assert (utc["first_ring"], utc["transfer_start"], utc["destination_answer"]) == (
        "095950", "100005", "100020"
    )  # fmt: skip


def test_csv_across_midnight_and_outcomes() -> None:
    ring = ms(2026, 1, 31, 23, 59, 59, tz=LA)
    start = ms(2026, 2, 1, 0, 0, 0, tz=LA)  # transfer starts at local midnight
    late = _raw(
        "t1", requested_ms=start, call_offered_ms=ring, dispatcher_answered_ms=ring + 1000,
        answered_ms=start + 61_000, outcome="abandoned", phase="in conference",
        abandoned_ms=start + 70_000, caller_number="+18055550100",
    )  # fmt: skip
    failed = _raw(
        "t2", requested_ms=start + 5000, outcome="failed", failed_ms=start + 9000,
        sip_status=503, reason="=HYPERLINK(\"http://x\")", destination="@evil",
    )  # fmt: skip
    cancelled = _raw(
        "t3", requested_ms=start + 6000, outcome="cancelled", cancelled_ms=start + 7000
    )
    opened = _raw("t4", requested_ms=start + 7000)
    rows = _csv((opened, cancelled, failed, late), LA)  # sorted by transfer start
    assert [r["transfer_id"] for r in rows] == ["t1", "t2", "t3", "t4"]
    r1, r2, r3, r4 = rows
    assert (r1["date"], r1["first_ring_date"], r1["first_ring"], r1["pickup"]) == (
        "2026-02-01", "2026-01-31", "235959", "000000"
    )  # fmt: skip
    assert (r1["transfer_start"], r1["destination_answer"], r1["outcome_time"]) == (
        "000000", "000101", "000110"
    )  # fmt: skip
    assert (r1["abandon_phase"], r1["seconds_to_answer"], r1["within_interval"]) == (
        "in conference", "61.000", "no"
    )  # fmt: skip
    assert r1["caller_number"] == "+18055550100"  # stored in clear: a number, kept as is
    assert (r2["outcome"], r2["sip_status"], r2["within_interval"], r2["outcome_time"]) == (
        "failed", "503", "no", "000009"
    )  # fmt: skip
    # free text that a spreadsheet would run as a formula is defused
    assert r2["reason"] == '\'=HYPERLINK("http://x")'
    assert r2["destination"] == "'@evil"
    assert (r3["outcome"], r3["within_interval"], r3["seconds_to_answer"]) == ("cancelled", "", "")
    assert (r4["outcome"], r4["within_interval"], r4["outcome_time"]) == ("open", "no", "")


def test_table_and_json() -> None:
    r = compute(DATASET, answer_interval=INTERVAL)
    table = render(r, TRANSFERS, "table", tz=LA)
    assert "2026-03-10 05:00:00 to 2026-03-11 05:00:00 America/Los_Angeles" in table
    assert "66.7 % (transfers / calls offered)" in table
    assert "45.0 / 90.0 / 90.0 s" in table
    assert "4 of 9 = 44.4 % (cancelled excluded)" in table
    lines = table.splitlines()
    psap_header = next(i for i, line in enumerate(lines) if line.startswith("PSAP "))
    assert lines[psap_header + 1].split() == [
        B, "5", "80.0", "%", "4", "0", "1", "1", "2", "0", "1",
        "30.0", "30.0", "30.0", "1/3", "33.3", "%",
    ]  # fmt: skip
    # columns are aligned: every row of a block has the same width up to its last cell
    assert len({len(lines[psap_header + i]) for i in range(3)}) == 1
    obj = json.loads(render(r, TRANSFERS, "json", tz=LA))
    assert obj["from"] == "2026-03-10T05:00:00-07:00" and obj["time_zone"] == "America/Los_Angeles"
    assert obj["percentile_method"] == "nearest-rank" and obj["answer_interval_s"] == 60.0
    assert obj["totals"]["share_within"] == 4 / 9
    assert obj["totals"]["abandoned_by_phase"]["while ringing"] == 1
    assert obj["by_destination"][D2]["answer_p90"] == 90.0
    assert obj["by_psap"][A]["diversion_rate"] == 0.6
    assert obj["missing_records"] == {"transfers": 0, "calls": 0}
    with pytest.raises(ReportError, match="--format: 'xml'"):
        render(r, TRANSFERS, "xml")


def test_table_warns_of_missing_records() -> None:
    d = Dataset(T0, T0 + 1, None, (), (), missing_transfers=2, missing_calls=1)
    table = render(compute(d, answer_interval=60), (), "table")
    assert "warning: 2 transfer(s) and 1 call(s)" in table
