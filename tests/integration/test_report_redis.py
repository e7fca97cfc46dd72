"""The KPI report against a real redis-server: records written in the layout of the records
contract (docs/records.md) are read back by load(), then computed and rendered, end to end
through ``handoffctl report`` (main_report). Checks the [from, to) boundaries, the PSAP filter,
index members whose hash is gone, chunked pipelines, and the exit codes."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from telephony.recording.report import CHUNK, StoreError, compute, load, main_report, render
from tests.peers.redis import RedisServer
from tests.peers.sipp import free_port

LA = ZoneInfo("America/Los_Angeles")
REPO = Path(__file__).resolve().parents[2]


def ms(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, tz: tzinfo = UTC) -> int:
    """Epoch ms of a wall-clock time (worked out with datetime, not the code under test)."""
    return int(datetime(y, mo, d, h, mi, s, tzinfo=tz).timestamp()) * 1000


# March 2026 in Los Angeles, as `--from 2026-03-01 --to 2026-03-31 --tz America/Los_Angeles`
F = ms(2026, 3, 1, tz=LA)
E = ms(2026, 4, 1, tz=LA)
S = 1000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    srv.start()
    yield srv
    srv.stop()


@pytest_asyncio.fixture
async def r(server: RedisServer) -> AsyncIterator[Any]:
    client: Any = aioredis.Redis.from_url(server.url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


async def put_transfer(r: Any, p: str, tid: str, at: int, *, hash_: bool = True, **f: Any) -> None:
    """A transfer as the records writer leaves it: ``P transfer:<id>`` + ``P transfers:by_time``."""
    fields = {"transfer_id": tid, "call_id": f"call-{tid}", "requested_ms": at, "failovers": 0}
    fields.update(f)
    if hash_:
        await r.hset(f"{p}transfer:{tid}", mapping={k: str(v) for k, v in fields.items()})
    await r.zadd(f"{p}transfers:by_time", {tid: at})


async def put_call(r: Any, p: str, cid: str, at: int, psap: str, *, hash_: bool = True) -> None:
    if hash_:
        fields = {"call_id": cid, "psap": psap, "trunk": "t", "offered_ms": str(at)}
        await r.hset(f"{p}call:{cid}", mapping={**fields, "transfers": "1"})
    await r.zadd(f"{p}calls:by_time", {cid: at})


async def month(r: Any, p: str) -> None:
    """Transfers and calls on and around the edges of March 2026 (Los Angeles)."""
    ans: dict[str, Any] = {"outcome": "completed", "destination": "988-ventura", "mode": "cold"}
    await put_transfer(r, p, "x1", F, psap="vcso", answered_ms=F + 20 * S, **ans)  # first ms: in
    await put_transfer(r, p, "x2", E - 1, psap="oxnard", outcome="failed", sip_status=503)  # in
    await put_transfer(r, p, "x3", E, psap="vcso", **ans)  # the end is excluded
    await put_transfer(r, p, "x4", F - 1, psap="vcso", **ans)  # before the start
    await put_transfer(
        r, p, "x5", F + 3600 * S, psap="vcso", outcome="abandoned", phase="while ringing"
    )
    await put_transfer(r, p, "x6", F + 7200 * S, hash_=False)  # hash expired: not counted
    await put_transfer(
        r, p, "x7", F + 10800 * S, psap="oxnard", answered_ms=F + 10870 * S,
        caller_number="+18055550100", incident_id="INC-7", call_offered_ms=F + 10700 * S,
        dispatcher_answered_ms=F + 10705 * S, completed_ms=F + 10880 * S, triage_level=2, **ans,
    )  # fmt: skip
    await put_transfer(
        r, p, "x8", F + 14400 * S, psap="vcso", caller_hash="9f" * 32, answered_ms=F + 14460 * S,
        outcome="abandoned", phase="in conference", destination="988-backup", mode="warm",
    )  # fmt: skip
    for i in range(6):  # vcso: 6 calls in range
        await put_call(r, p, f"a{i}", F + i * 60 * S, "vcso")
    await put_call(r, p, "b0", F, "oxnard")
    await put_call(r, p, "b1", E - 1, "oxnard")
    await put_call(r, p, "a-end", E, "vcso")  # excluded
    await put_call(r, p, "a-before", F - 1, "vcso")  # excluded
    await put_call(r, p, "gone", F + S, "vcso", hash_=False)  # not counted


@pytest.mark.asyncio
async def test_load_range_boundaries_and_figures(server: RedisServer, r: Any) -> None:
    await month(r, "handoff:")
    d = await load(server.url, "handoff:", F, E, None)
    assert [t.transfer_id for t in d.transfers] == ["x1", "x5", "x7", "x8", "x2"]
    assert (d.missing_transfers, d.missing_calls) == (1, 1)
    assert len(d.calls) == 8
    x7 = d.transfers[2]
    assert (x7.caller_number, x7.incident_id, x7.answer_ms, x7.triage_level) == (
        "+18055550100", "INC-7", 70_000, "2"
    )  # fmt: skip
    assert d.transfers[3].caller_number is None  # only a hash stored
    rep = compute(d, answer_interval=60)
    t = rep.totals
    # 5 transfers / 8 calls; answered x1 20 s, x7 70 s, x8 60 s -> 20 60 70
    assert (t.transfers, t.calls_offered, t.diversion_rate) == (5, 8, 5 / 8)
    assert (t.completed, t.failed, t.abandoned, t.cancelled, t.open) == (2, 1, 2, 0, 0)
    assert (t.answer_p50, t.answer_p90, t.answer_p99) == (60.0, 70.0, 70.0)
    assert (t.within, t.within_denominator) == (2, 5)  # x1 and x8 (exactly 60 s)
    per = dict(rep.by_psap)
    assert (per["vcso"].transfers, per["vcso"].calls_offered) == (3, 6)
    assert (per["oxnard"].transfers, per["oxnard"].calls_offered) == (2, 2)
    assert rep.missing_transfers == 1 and "warning: 1 transfer(s) and 1 call(s)" in render(
        rep, d.transfers, "table", tz=LA
    )


@pytest.mark.asyncio
async def test_load_psap_filter_and_prefix(server: RedisServer, r: Any) -> None:
    await month(r, "kpi:")
    await month(r, "other:")
    d = await load(server.url, "kpi:", F, E, "oxnard")
    assert [t.transfer_id for t in d.transfers] == ["x7", "x2"]
    assert sorted(c.call_id for c in d.calls) == ["b0", "b1"]
    rep = compute(d, answer_interval=60)
    assert (rep.psap, rep.totals.transfers, rep.totals.diversion_rate) == ("oxnard", 2, 1.0)
    assert [k for k, _ in rep.by_psap] == ["oxnard"]
    assert (await load(server.url, "kpi:", F, E, "nowhere")).transfers == ()
    assert (await load(server.url, "empty:", F, E, None)).transfers == ()
    # a one-millisecond range holds exactly the transfer requested at that millisecond
    assert [t.transfer_id for t in (await load(server.url, "kpi:", F, F + 1, None)).transfers] == [
        "x1"
    ]


@pytest.mark.asyncio
async def test_load_in_chunks(server: RedisServer, r: Any) -> None:
    n = 2 * CHUNK + 3
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        tid = f"t{i:05d}"
        pipe.hset(
            f"bulk:transfer:{tid}",
            mapping={
                "transfer_id": tid,
                "psap": "vcso",
                "requested_ms": str(F + i),
                "outcome": "failed",
            },
        )
        pipe.zadd("bulk:transfers:by_time", {tid: F + i})
    await pipe.execute()  # fmt: skip
    d = await load(server.url, "bulk:", F, E, "vcso")
    assert len(d.transfers) == n
    assert [t.transfer_id for t in d.transfers[:2]] == ["t00000", "t00001"]
    assert compute(d, answer_interval=60).totals.failed == n


@pytest.mark.asyncio
async def test_load_errors(server: RedisServer, r: Any) -> None:
    await r.set("odd:transfers:by_time", "not a zset")
    with pytest.raises(StoreError, match=r"cannot read the records from Redis at 127\.0\.0\.1"):
        await load(server.url, "odd:", F, E, None)
    port = free_port()
    with pytest.raises(StoreError, match=f"127.0.0.1:{port}") as info:
        await load(f"redis://:secret@127.0.0.1:{port}/0", "handoff:", F, E, None)
    assert "secret" not in str(info.value)


def _config(tmp_path: Path, url: str) -> Path:
    cfg = tmp_path / "handoffd.yaml"
    cfg.write_text(
        "trunks:\n  psap-a:\n    allow: [127.0.0.1]\n    psap_id: vcso\n"
        f"rules: {REPO / 'routing_rules'}\n"
        f"redis:\n  url: {url}\n"
        'records:\n  key_prefix: "kpi:"\n  answer_interval: 30\n',
        encoding="utf-8",
    )
    return cfg


async def _seed(url: str, prefix: str) -> None:
    client: Any = aioredis.Redis.from_url(url, decode_responses=True)
    await client.flushdb()
    await month(client, prefix)
    await client.aclose()


def test_handoffctl_report_end_to_end(server: RedisServer, tmp_path: Path) -> None:
    asyncio.run(_seed(server.url, "kpi:"))
    cfg = _config(tmp_path, server.url)
    base = ["--from", "2026-03-01", "--to", "2026-03-31", "--tz", "America/Los_Angeles"]
    out, err = io.StringIO(), io.StringIO()
    assert (
        main_report([*base, "--config", str(cfg), "--format", "csv"], stdout=out, stderr=err) == 0
    )
    assert err.getvalue() == ""
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert [row["transfer_id"] for row in rows] == ["x1", "x5", "x7", "x8", "x2"]
    x1, x7, x2 = rows[0], rows[2], rows[4]
    assert (x1["date"], x1["transfer_start"], x1["destination_answer"]) == (
        "2026-03-01", "000000", "000020"
    )  # fmt: skip
    assert x1["within_interval"] == "yes"  # 20 s <= the config's 30 s
    assert (x7["first_ring"], x7["pickup"], x7["transfer_start"], x7["destination_answer"]) == (
        "025820", "025825", "030000", "030110"
    )  # fmt: skip
    assert (x7["seconds_to_answer"], x7["within_interval"], x7["caller_number"]) == (
        "70.000", "no", "+18055550100"
    )  # fmt: skip
    assert (x2["date"], x2["transfer_start"], x2["outcome"]) == ("2026-03-31", "235959", "failed")
    assert rows[3]["caller_number"] == ""  # hashed: never shown

    out = io.StringIO()
    args = [*base, "--config", str(cfg), "--psap", "vcso", "--format", "json"]
    assert main_report(args, stdout=out, stderr=err) == 0
    obj = json.loads(out.getvalue())
    assert obj["psap"] == "vcso" and obj["answer_interval_s"] == 30.0
    assert obj["from"] == "2026-03-01T00:00:00-08:00" and obj["to"] == "2026-04-01T00:00:00-07:00"
    assert (obj["totals"]["transfers"], obj["totals"]["calls_offered"]) == (3, 6)
    # within 30 s: x1 (20 s) only; x8 took 60 s
    assert (obj["totals"]["within"], obj["totals"]["within_denominator"]) == (1, 3)

    out = io.StringIO()
    # no config: the default prefix handoff:, under which nothing was written
    assert main_report([*base, "--redis-url", server.url], stdout=out, stderr=err) == 0
    assert re.search(r"^  transfers +0$", out.getvalue(), re.MULTILINE)


def test_handoffctl_report_errors(server: RedisServer, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    bad = ["--from", "2026-13-01", "--to", "2026-03-31", "--redis-url", server.url]
    assert main_report(bad, stdout=out, stderr=err) == 2
    assert err.getvalue() == "handoffctl report: --from: '2026-13-01' is not a date (YYYY-MM-DD)\n"
    assert out.getvalue() == ""

    err = io.StringIO()
    port = free_port()
    down = [
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-31",
        "--redis-url",
        f"redis://127.0.0.1:{port}",
    ]
    assert main_report(down, stdout=out, stderr=err) == 1
    assert f"cannot read the records from Redis at 127.0.0.1:{port}" in err.getvalue()

    err = io.StringIO()
    assert main_report([*down[:4], "--redis-url", "http://x"], stdout=out, stderr=err) == 2
    assert err.getvalue().startswith("handoffctl report: --redis-url: 'http://x'")

    err = io.StringIO()
    assert main_report([*down[:4], "--config", str(tmp_path / "none.yaml")], stderr=err) == 1
    assert "configuration not valid" in err.getvalue() and "cannot read" in err.getvalue()

    err = io.StringIO()
    assert main_report([*down[:4], "--psap", " "], stdout=out, stderr=err) == 2
    assert "--psap" in err.getvalue()

    err = io.StringIO()
    assert main_report(["--from", "2026-03-01"], stdout=out, stderr=err) == 2  # argparse
    assert "--to" in err.getvalue()
    assert out.getvalue() == ""
