"""The Redis writer against a real redis-server: the contract's layout, the PHI rule, exactly-once
application, the spool while Redis is down (and after a killed process), ``follow``."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import shutil
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from telephony.config import Config
from telephony.config.model import RecordsConfig
from telephony.recording.events import KINDS, RecordEvent
from telephony.recording.follow import follow
from telephony.recording.spool import Spool, encode
from telephony.recording.store import Recorder, caller_hash
from tests.peers.redis import RedisServer

P = "handoff:"
T0 = (int(time.time()) - 3600) * 1000  # an hour ago (older members get trimmed)
NUMBER = "+18055550123"
WHERE = "<gml:pos>34.4208 -119.6982</gml:pos>"
KEY = b"test-hash-key"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest_asyncio.fixture
async def r(server: RedisServer) -> AsyncIterator[Any]:
    client: Any = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def config(tmp_path: Path, **records: Any) -> Config:
    rc = RecordsConfig(spool_dir=tmp_path / "spool", **records)
    return Config(source=tmp_path / "handoffd.yaml", records=rc)


class Events:
    """Hand-built events with ids counting up, like the daemon's ``EventIds``."""

    def __init__(self, instance: str = "test") -> None:
        self.instance = instance
        self.seq = 0

    def __call__(self, kind: Any, call: str = "c1", dt: int = 0, **extra: Any) -> RecordEvent:
        self.seq += 1
        base: dict[str, Any] = {
            "emergency_call_id": f"urn:emergency:uid:callid:{call}:psap.example",
            "incident_id": f"urn:emergency:uid:incidentid:{call}:psap.example",
            "caller_number": NUMBER,
            "location": WHERE,
            "call_offered_ms": T0,
        }
        base.update(extra)
        return RecordEvent(
            id=f"{self.instance}-1-{self.seq}",
            kind=kind,
            at_ms=T0 + dt,
            call_id=call,
            psap="psap-a",
            trunk="cpe-a",
            **base,
        )


def transfer(e: Events, call: str, tid: str, **extra: Any) -> dict[str, Any]:
    return {
        "transfer_id": tid,
        "trigger": "refer",
        "mode": "warm",
        "triage_level": 2,
        "position": "disp-1",
        "transfer_requested_ms": T0 + 2000,
        **extra,
    }


def timeline(e: Events) -> list[RecordEvent]:
    """Three calls: c1 transferred (one failover) and completed; c2's transfer failed; c3
    abandoned while ringing after a cancelled attempt, and returned to the dispatcher."""
    t1 = transfer(e, "c1", "t1")
    t2 = transfer(e, "c2", "t2", mode="cold", trigger="invite")
    t3 = transfer(e, "c3", "t3")
    return [
        e("call_offered", "c1", 0),
        e("answered_by_dispatcher", "c1", 1000, position="disp-1"),
        e("transfer_requested", "c1", 2000, destination="988-primary", **t1),
        e("destination_trying", "c1", 2100, destination="988-primary", **t1),
        e("failover", "c1", 2500, destination="988-primary", sip_status=486, reason="busy", **t1),
        e("destination_trying", "c1", 2600, destination="988-backup", **t1),
        e("destination_ringing", "c1", 2700, destination="988-backup", **t1),
        e("destination_answered", "c1", 5000, destination="988-backup", **t1),
        e("party_joined", "c1", 5000, destination="988-backup", party="counselor", **t1),
        e("dispatcher_left", "c1", 9000, destination="988-backup", **t1),
        e("party_left", "c1", 9000, destination="988-backup", party="dispatcher", **t1),
        e("completed", "c1", 9000, destination="988-backup", **t1),
        e("call_ended", "c1", 60000, destination="988-backup", **t1),
        e("call_offered", "c2", 0),
        e("transfer_requested", "c2", 2000, destination="988-primary", **t2),
        e("failed", "c2", 3000, destination="988-primary", sip_status=503, reason="down", **t2),
        e("call_offered", "c3", 0),
        e("answered_by_dispatcher", "c3", 500, position="disp-1"),
        e("transfer_requested", "c3", 2000, destination="988-primary", **t3),
        e("cancelled", "c3", 2200, destination="988-primary", reason="dispatcher", **t3),
        e("destination_ringing", "c3", 2300, destination="988-primary", **t3),
        e("abandoned", "c3", 2400, phase="while ringing", destination="988-primary", **t3),
        e("returned_to_dispatcher", "c3", 2500, **t3),
    ]


async def until(check: Callable[[], Awaitable[bool] | bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = check()
        if got if isinstance(got, bool) else await got:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {limit} s: {what}")


def replayed(rec: Recorder) -> bool:
    return rec.spooled == 0 and rec.up


async def stream(r: Any) -> list[dict[str, str]]:
    return [fields for _, fields in await r.xrange(f"{P}events")]


async def applied(r: Any, n: int) -> None:
    async def there() -> bool:
        return int(await r.xlen(f"{P}events")) >= n

    await until(there, 10, f"{n} events in the stream")


@pytest.mark.asyncio
async def test_every_kind_lands_in_the_stream_and_the_hashes(
    tmp_path: Path, server: RedisServer, r: Any
) -> None:
    rec = Recorder(config(tmp_path), redis_url=server.url, hash_key=KEY)
    events = timeline(Events())
    await rec.start()
    for ev in events:
        rec.submit(ev)
    await applied(r, len(events))
    await rec.stop(5)
    assert rec.up and rec.spooled == 0 and rec.dropped == 0

    got = await stream(r)
    assert [g["id"] for g in got] == [ev.id for ev in events]  # in order, once each
    assert {g["kind"] for g in got} == set(KINDS)
    fail = next(g for g in got if g["kind"] == "failed")
    assert fail["sip_status"] == "503" and fail["triage_level"] == "2" and fail["mode"] == "cold"
    assert fail["at_ms"] == str(T0 + 3000) and fail["transfer_id"] == "t2"

    c1 = await r.hgetall(f"{P}call:c1")
    assert c1["offered_ms"] == str(T0) and c1["answered_ms"] == str(T0 + 1000)
    assert c1["ended_ms"] == str(T0 + 60000) and c1["transfers"] == "1"
    assert c1["position"] == "disp-1" and c1["psap"] == "psap-a" and c1["trunk"] == "cpe-a"
    assert c1["emergency_call_id"].endswith(":c1:psap.example") and "incident_id" in c1
    assert (await r.hgetall(f"{P}call:c2"))["transfers"] == "1"
    assert await r.zscore(f"{P}calls:by_time", "c3") == T0
    assert 0 < await r.ttl(f"{P}call:c1") <= 400 * 86400

    t1 = await r.hgetall(f"{P}transfer:t1")
    assert t1["outcome"] == "completed" and t1["destination"] == "988-backup"
    assert t1["failovers"] == "1" and t1["sip_status"] == "486" and t1["reason"] == "busy"
    assert t1["call_offered_ms"] == str(T0) and t1["dispatcher_answered_ms"] == str(T0 + 1000)
    stamps = ("requested_ms", "trying_ms", "ringing_ms", "answered_ms", "completed_ms")
    assert [int(t1[k]) - T0 for k in stamps] == [2000, 2100, 2700, 5000, 9000]  # first wins
    assert t1["dispatcher_left_ms"] == str(T0 + 9000)
    assert (t1["trigger"], t1["mode"], t1["triage_level"]) == ("refer", "warm", "2")
    assert await r.zscore(f"{P}transfers:by_time", "t1") == T0 + 2000
    assert 0 < await r.ttl(f"{P}transfer:t1") <= 400 * 86400

    t2 = await r.hgetall(f"{P}transfer:t2")
    assert t2["outcome"] == "failed" and t2["failed_ms"] == str(T0 + 3000)
    assert "dispatcher_answered_ms" not in t2 and t2["failovers"] == "0"
    d = await r.hgetall(f"{P}discrepancy:t2")
    assert d == {
        "transfer_id": "t2",
        "call_id": "c2",
        "incident_id": "urn:emergency:uid:incidentid:c2:psap.example",
        "emergency_call_id": "urn:emergency:uid:callid:c2:psap.example",
        "agency": "psap-a",
        "sip_status": "503",
        "destination": "988-primary",
        "reason": "down",
        "at_ms": str(T0 + 3000),
    }
    assert await r.zrange(f"{P}discrepancies:by_time", 0, -1) == ["t2"]
    assert not await r.exists(f"{P}discrepancy:t1")

    t3 = await r.hgetall(f"{P}transfer:t3")
    assert t3["outcome"] == "abandoned" and t3["phase"] == "while ringing"
    assert t3["cancelled_ms"] == str(T0 + 2200) and t3["abandoned_ms"] == str(T0 + 2400)
    assert t3["returned_ms"] == str(T0 + 2500) and t3["reason"] == "dispatcher"


@pytest.mark.asyncio
@pytest.mark.parametrize("clear", [True, False])
@pytest.mark.parametrize("key", [KEY, None])
async def test_phi_rule(
    tmp_path: Path, server: RedisServer, r: Any, clear: bool, key: bytes | None
) -> None:
    cfg = config(tmp_path, store_caller_number=clear, store_location=clear)
    rec = Recorder(cfg, redis_url=server.url, hash_key=key)
    e = Events()
    await rec.start()
    rec.submit(e("call_offered", "c1"))
    rec.submit(e("transfer_requested", "c1", 10, **transfer(e, "c1", "t1")))
    await applied(r, 2)
    await rec.stop(5)
    stored = [*await stream(r), await r.hgetall(f"{P}call:c1"), await r.hgetall(f"{P}transfer:t1")]
    text = repr(stored) + repr(await r.keys("*"))
    digest = caller_hash(NUMBER, KEY)
    for where in stored:
        if clear:
            assert where["caller_number"] == NUMBER and "caller_hash" not in where
        elif key is not None:
            assert where["caller_hash"] == digest and "caller_number" not in where
        else:
            assert "caller_hash" not in where and "caller_number" not in where
    for where in stored[:3]:  # stream entries and the call hash carry the location
        assert (where.get("location") == WHERE) is clear
    if not clear:
        assert NUMBER not in text and "34.4208" not in text and "8055550123" not in text
        assert "location" not in text


@pytest.mark.asyncio
async def test_an_event_is_applied_once_even_submitted_twice_or_replayed_twice(
    tmp_path: Path, server: RedisServer, r: Any
) -> None:
    e = Events()
    evs = timeline(e)[:5]
    cfg = config(tmp_path)
    rec = Recorder(cfg, redis_url=server.url, hash_key=KEY)
    await rec.start()
    for ev in evs + evs:
        rec.submit(ev)

    async def settled() -> bool:
        return rec.applied + rec.duplicates == 10

    await until(settled, 10, "both copies handled")
    await rec.stop(5)
    assert rec.applied == 5 and rec.duplicates == 5
    assert await r.xlen(f"{P}events") == 5
    assert (await r.hgetall(f"{P}transfer:t1"))["failovers"] == "1"

    # a spool holding the same events (and one new), replayed by two recorders in turn
    spool_dir = cfg.records.spool_dir
    s = Spool(spool_dir, fsync="always", max_bytes=1 << 20)
    for ev in [*evs, timeline(Events("other"))[0]]:
        s.append(ev)
    s.close()
    copy = tmp_path / "copy"
    shutil.copytree(spool_dir, copy)
    for attempt in (1, 2):
        if attempt == 2:
            shutil.rmtree(spool_dir)
            shutil.copytree(copy, spool_dir)
        again = Recorder(cfg, redis_url=server.url, hash_key=KEY)
        await again.start()
        assert again.spooled == 6
        await until(functools.partial(replayed, again), 10, "spool replayed")
        await again.stop(5)
        assert (again.applied, again.duplicates) == ((1, 5) if attempt == 1 else (0, 6))
    assert await r.xlen(f"{P}events") == 6
    assert (await r.hgetall(f"{P}call:c1"))["transfers"] == "1"


@pytest.mark.asyncio
async def test_a_redis_that_lost_its_scripts_gets_the_script_again_and_loses_nothing(
    tmp_path: Path, server: RedisServer, r: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``SCRIPT FLUSH`` (what a restarted Redis looks like to the writer between its connect
    and its next batch): the batch gets NOSCRIPT, the writer loads the script again and the
    batch is applied once, without going to the spool."""
    evs = timeline(Events())
    rec = Recorder(config(tmp_path), redis_url=server.url, hash_key=KEY)
    await rec.start()
    rec.submit(evs[0])
    await applied(r, 1)
    await r.script_flush()
    assert (await r.script_exists(rec._sha)) == [False]
    for ev in evs[1:]:
        rec.submit(ev)
    await applied(r, len(evs))
    await rec.stop(5)
    assert rec.applied == len(evs) and rec.duplicates == 0
    assert rec.spooled == 0 and rec.dropped == 0
    assert [g["id"] for g in await stream(r)] == [ev.id for ev in evs]
    # the batch was not taken for a Redis failure (which would spool it and back off)
    assert not [m for m in caplog.messages if "unreachable" in m]


#: what the SIP parser makes of a header byte that is not UTF-8 (0xff, kept as a surrogate
#: escape so the message serializes back unchanged), and a lone surrogate a JSON body can carry
#: ("\\ud800" is valid JSON)
NOT_UTF8 = b"urn:emergency:uid:callid:\xff:psap.example".decode("utf-8", "surrogateescape")
LONE = "dispatcher \ud800 request"
NUMBER_NOT_UTF8 = b"+1805555\xfe123".decode("utf-8", "surrogateescape")


@pytest.mark.asyncio
@pytest.mark.parametrize("redis_up", [True, False], ids=["redis-up", "spooled-then-replayed"])
async def test_text_that_is_not_valid_unicode_is_stored_replaced_and_blocks_nothing(
    tmp_path: Path, server: RedisServer, r: Any, redis_up: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A CPE that sends a non-UTF-8 byte in Call-Info, or an API client a lone surrogate in
    ``reason``, must not stop the records: the text is stored with U+FFFD where it was not
    Unicode, and every event before and after it is applied once."""
    e = Events()
    bad = {"emergency_call_id": NOT_UTF8, "caller_number": NUMBER_NOT_UTF8}
    evs = [
        e("call_offered", "c1", 0),
        e("call_offered", "c2", 0, **bad),
        e("cancelled", "c2", 10, reason=LONE, **bad, **transfer(e, "c2", "t2")),
        e("call_ended", "c2", 20, **bad),
        e("call_ended", "c1", 30),
    ]
    if not redis_up:
        server.stop()
    rec = Recorder(config(tmp_path), redis_url=server.url, hash_key=KEY)
    await rec.start()
    for ev in evs:
        rec.submit(ev)
    if not redis_up:
        await until(lambda: rec.spooled == len(evs), 10, "all spooled")
        server.start()
    await applied(r, len(evs))
    await rec.stop(5)
    assert rec.applied == len(evs) and rec.dropped == 0 and rec.spooled == 0
    got = await stream(r)
    assert [g["id"] for g in got] == [ev.id for ev in evs]
    assert got[1]["emergency_call_id"] == "urn:emergency:uid:callid:\ufffd:psap.example"
    assert "\ufffd" in got[2]["reason"] and got[2]["reason"].startswith("dispatcher ")
    call = await r.hgetall(f"{P}call:c2")
    assert call["emergency_call_id"] == got[1]["emergency_call_id"] and "ended_ms" in call
    # the caller number is hashed, never stored, whatever its bytes; the same hash every time
    hashes = {g["caller_hash"] for g in got[1:4]}
    assert len(hashes) == 1 and "caller_number" not in call and "\ufffd" not in hashes.pop()
    if redis_up:  # straight to Redis, not through a failure and the spool
        assert not [m for m in caplog.messages if "unexpected" in m or "unreachable" in m]


@pytest.mark.asyncio
async def test_redis_down_spools_without_blocking_then_replays_in_order(
    tmp_path: Path, server: RedisServer, r: Any
) -> None:
    rec = Recorder(config(tmp_path, queue_size=50), redis_url=server.url, hash_key=KEY)
    e = Events()
    await rec.start()
    sent: list[RecordEvent] = []

    def burst(n: int) -> list[int]:
        costs = []
        for i in range(n):
            ev = e("destination_ringing", f"c{i % 7}", len(sent), **transfer(e, "c", f"t{i % 7}"))
            t = time.perf_counter_ns()
            rec.submit(ev)
            costs.append(time.perf_counter_ns() - t)
            sent.append(ev)
        return costs

    burst(20)
    await applied(r, 20)
    server.stop()
    costs: list[int] = []
    for _ in range(10):  # calls keep coming while Redis is down
        costs += burst(100)
        await asyncio.sleep(0.03)
    await until(lambda: not rec.up and rec.spooled >= 900, 10, "events spooled")
    costs += burst(500)
    assert rec.spooled == len(sent) - 20 and rec.dropped == 0
    us = sorted(c / 1000 for c in costs)
    med, p99 = statistics.median(us), us[int(len(us) * 0.99)]
    print(f"submit() with Redis down: median {med:.1f} us, p99 {p99:.1f} us, max {us[-1]:.0f} us")
    assert med < 200 and p99 < 2000

    server.start()
    await until(lambda: rec.up and rec.spooled == 0, 15, "spool replayed")
    burst(30)  # and straight on afterwards
    back: Any = aioredis.Redis.from_url(server.url, decode_responses=True)  # r's socket is dead
    try:
        await applied(back, len(sent) - 20)  # (the first 20 went with Redis: no persistence)
        await rec.stop(5)
        got = [g["id"] for g in await stream(back)]
    finally:
        await back.aclose()
    assert got == [ev.id for ev in sent[20:]]  # all, once, in submission order
    assert list((tmp_path / "spool").iterdir()) == []


@pytest.mark.asyncio
async def test_a_spool_left_behind_is_replayed_by_the_next_recorder(
    tmp_path: Path, server: RedisServer, r: Any
) -> None:
    cfg = config(tmp_path, spool_fsync="always")
    e = Events()
    evs = timeline(e)
    server.stop()
    rec = Recorder(cfg, redis_url=server.url, hash_key=KEY)
    await rec.start()
    for ev in evs[:10]:
        rec.submit(ev)
    await asyncio.sleep(0.1)
    for ev in evs[10:]:
        rec.submit(ev)
    await rec.stop(1)  # Redis never came: everything stays in the spool
    assert not rec.up and rec.spooled == len(evs)
    (seg,) = (tmp_path / "spool").glob("*.log")
    text = seg.read_text()  # the spool is storage too: the PHI rule applies before it
    assert NUMBER not in text and "34.4208" not in text and caller_hash(NUMBER, KEY) in text
    # as if killed in the middle of the next write: a torn last line
    torn = encode(e("call_ended", "c9"))
    with seg.open("ab") as f:
        f.write(torn[:-9])

    server.start()
    again = Recorder(cfg, redis_url=server.url, hash_key=KEY)
    await again.start()
    assert again.spool is not None and again.spool.torn == 1
    later = e("call_offered", "c4")
    again.submit(later)  # new events queue up behind the old ones
    await until(lambda: again.spooled == 0 and again.up, 10, "old spool replayed")
    await applied(r, len(evs) + 1)
    await again.stop(5)
    got = await stream(r)
    assert [g["id"] for g in got] == [ev.id for ev in [*evs, later]]
    assert {g["caller_hash"] for g in got} == {caller_hash(NUMBER, KEY)}
    assert not any("caller_number" in g or "location" in g for g in got)
    assert await r.exists(f"{P}discrepancy:t2")


@pytest.mark.asyncio
async def test_follow_tails_the_stream_and_acks_in_a_group(
    tmp_path: Path, server: RedisServer, r: Any
) -> None:
    rec = Recorder(config(tmp_path), redis_url=server.url, hash_key=KEY)
    e = Events()
    evs = timeline(e)
    await rec.start()
    for ev in evs[:4]:
        rec.submit(ev)
    await applied(r, 4)

    out = io.StringIO()
    n = await follow(server.url, P, group=None, consumer=None, start="0", count=3, out=out)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert n == 3 and [x["id"] for x in lines] == [ev.id for ev in evs[:3]]
    assert all("stream_id" in x for x in lines) and "caller_number" not in lines[0]

    # "$": only what is added after it started
    new_out = io.StringIO()
    tail = asyncio.create_task(
        follow(server.url, P, group=None, consumer=None, start="$", count=2, out=new_out)
    )
    await asyncio.sleep(0.2)
    rec.submit(evs[4])
    rec.submit(evs[5])
    assert await asyncio.wait_for(tail, 10) == 2
    assert [json.loads(x)["id"] for x in new_out.getvalue().splitlines()] == [
        evs[4].id,
        evs[5].id,
    ]

    # a consumer group from the beginning: prints and acknowledges
    g_out = io.StringIO()
    got = await follow(server.url, P, group="cad", consumer="cad-1", start="0", count=6, out=g_out)
    assert got == 6
    assert [json.loads(x)["id"] for x in g_out.getvalue().splitlines()] == [ev.id for ev in evs[:6]]
    pending = await r.xpending(f"{P}events", "cad")
    assert pending["pending"] == 0
    info = await r.xinfo_groups(f"{P}events")
    assert (
        info[0]["name"] == "cad"
        and info[0]["last-delivered-id"]
        == json.loads(g_out.getvalue().splitlines()[-1])["stream_id"]
    )

    # a crashed consumer: entries delivered but not acked come back first on its next run
    await r.xreadgroup("cad", "cad-2", {f"{P}events": ">"}, count=10, block=100)  # none yet
    rec.submit(evs[6])
    await applied(r, 7)
    await r.xreadgroup("cad", "cad-2", {f"{P}events": ">"}, count=1)  # read, then "crash"
    assert (await r.xpending(f"{P}events", "cad"))["pending"] == 1
    redo = io.StringIO()
    assert (
        await follow(server.url, P, group="cad", consumer="cad-2", start="0", count=1, out=redo)
        == 1
    )
    assert json.loads(redo.getvalue())["id"] == evs[6].id
    assert (await r.xpending(f"{P}events", "cad"))["pending"] == 0
    await rec.stop(5)


@pytest.mark.asyncio
async def test_a_burst_of_events_is_applied_without_spooling(
    tmp_path: Path, server: RedisServer, r: Any
) -> None:
    """4,000 events submitted at once all reach Redis from the queue (speed: bench/recorder.py)."""
    rec = Recorder(config(tmp_path, queue_size=20_000), redis_url=server.url, hash_key=KEY)
    await rec.start()
    await until(lambda: rec.up, 5, "connected")
    e = Events()
    n = 4000
    evs = []
    for i in range(n // 4):
        call, tid = f"c{i}", f"t{i}"
        tr = transfer(e, call, tid)
        evs += [
            e("call_offered", call, 0),
            e("transfer_requested", call, 10, **tr),
            e("destination_answered", call, 20, destination="988-primary", **tr),
            e("completed", call, 30, destination="988-primary", **tr),
        ]
    for ev in evs:
        rec.submit(ev)
    await until(lambda: rec.applied >= n, 30, "all applied")
    await rec.stop(5)
    assert rec.spooled == 0 and rec.duplicates == 0 and await r.xlen(f"{P}events") == n


def test_config_fields_used_exist() -> None:
    rc = RecordsConfig()
    assert replace(rc, queue_size=1).queue_size == 1
