"""Transfer records end to end: a real handoffd, real SIPp parties, a real redis-server.

- A REFER transfer leaves a complete timeline in Redis (call and transfer hashes, the stream)
  and no caller number or location anywhere in Redis (the example's PHI switches are off).
- Redis stopped during a live transfer: the SIP path does not notice, events go to the spool,
  and when Redis comes back they are replayed in order with no duplicate.
- ``kill -9`` of the daemon while its events sit in the spool: a restarted daemon replays them.
- The logs of a whole run (debug level) hold neither the caller number nor the PIDF-LO
  coordinates the caller sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from telephony.daemon import Daemon
from telephony.io.stack import SipStack
from telephony.sip.transaction import Endpoint, TimerConfig
from tests.e2e.harness import Ports, settled, write_setup
from tests.peers.redis import RedisServer
from tests.peers.sipp import SCENARIOS, SippResult, SippRun, free_port, media_port, start_sipp
from tests.peers.ua import MiniUac

pytestmark = [pytest.mark.asyncio, pytest.mark.sipp]
DATA = SCENARIOS / "data"
HANDOFFD = Path(sys.executable).with_name("handoffd")
P = "handoff:"
#: what the caller sends in uac-911-caller.xml: its number (From, PAI) and its PIDF-LO position
PHI = ("+18055550123", "18055550123", "8055550123", "34.4208", "-119.6982")


async def _caller(tmp: Path, ports: Ports, csv: str, hold_ms: int) -> SippRun:
    return await start_sipp(
        "uac-911-caller",
        workdir=tmp,
        local_port=free_port(),
        remote=f"127.0.0.1:{ports.sip}",
        calls=1,
        timeout_s=40,
        extra=("-inf", str(DATA / csv), "-d", str(hold_ms), "-mp", media_port()),
    )


async def _uas(tmp: Path, name: str, port: int, *extra: str) -> SippRun:
    return await start_sipp(name, workdir=tmp, local_port=port, calls=1, timeout_s=40, extra=extra)


def _ok(res: SippResult, what: str) -> None:
    assert res.returncode == 0, f"{what}: {res.stdout[-1500:]}{res.stderr[-1500:]}"


async def _refer_transfer(tmp: Path, ports: Ports, hold_ms: int = 7000) -> None:
    """The 911 caller reaches disp-1, which REFERs it to 988; the primary 988 line answers."""
    d988 = await _uas(tmp, "uas-988-answer", ports.primary)
    disp = await _uas(
        tmp, "uas-dispatcher-refer", ports.disp1, "-inf", str(DATA / "refer-988.csv"), "-d", "1500"
    )
    await asyncio.sleep(0.3)
    res = await (await _caller(tmp, ports, "911-caller.csv", hold_ms)).wait(40)
    _ok(res, "caller")
    _ok(await disp.wait(20), "dispatcher")
    _ok(await d988.wait(20), "988")


async def _until(check: Any, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {limit} s: {what}")


async def _dump(r: aioredis.Redis) -> str:
    """Every key and value in Redis as one text, to search for PHI."""
    parts: list[str] = []
    async for key in r.scan_iter(count=1000):
        kind = await r.type(key)
        parts.append(key)
        if kind == "hash":
            parts.append(json.dumps(await r.hgetall(key)))
        elif kind == "stream":
            parts.append(json.dumps(await r.xrange(key)))
        elif kind == "zset":
            parts.append(json.dumps(await r.zrange(key, 0, -1)))
        elif kind == "string":
            parts.append(str(await r.get(key)))
    return "\n".join(parts)


async def _stream(r: aioredis.Redis) -> list[dict[str, str]]:
    return [fields for _, fields in await r.xrange(f"{P}events")]


async def test_refer_transfer_timeline_in_redis_without_phi(
    tmp_path: Path, daemon: Daemon, ports: Ports, redis_server: RedisServer
) -> None:
    await _refer_transfer(tmp_path, ports)
    call = next(iter((await settled(daemon)).ended.values()))
    t = call.transfer
    assert t is not None and t.state.value == "completed"
    r = aioredis.from_url(redis_server.url, decode_responses=True)
    try:

        async def all_there() -> bool:
            kinds = {e["kind"] for e in await _stream(r)}
            return "call_ended" in kinds

        await _until(all_there, 10, "the call_ended event in the stream")
        events = await _stream(r)
        kinds = [e["kind"] for e in events]
        for kind in (
            "call_offered",
            "answered_by_dispatcher",
            "transfer_requested",
            "destination_trying",
            "destination_answered",
            "completed",
            "dispatcher_left",
            "call_ended",
        ):
            assert kind in kinds, (kind, kinds)
        assert len({e["id"] for e in events}) == len(events)  # no event twice
        assert [int(e["at_ms"]) for e in events] == sorted(int(e["at_ms"]) for e in events)
        assert {e["call_id"] for e in events} == {call.id}

        th = await r.hgetall(f"{P}transfer:{t.id}")
        assert th["outcome"] == "completed" and th["trigger"] == "refer" and th["mode"] == "cold"
        assert th["destination"] == "988-primary" and th["triage_level"] == "1"
        assert th["psap"] == "psap-a" and th["emergency_call_id"] == call.meta.emergency_call_id
        times = [int(th[k]) for k in ("requested_ms", "trying_ms", "answered_ms", "completed_ms")]
        assert times == sorted(times)
        assert int(th["call_offered_ms"]) <= int(th["dispatcher_answered_ms"]) <= times[0]
        assert abs(times[0] - time.time() * 1000) < 60_000  # wall clock, not monotonic time

        ch = await r.hgetall(f"{P}call:{call.id}")
        assert ch["position"] == "disp-1" and int(ch["transfers"]) == 1
        assert int(ch["offered_ms"]) <= int(ch["answered_ms"]) <= int(ch["ended_ms"])
        assert await r.zscore(f"{P}transfers:by_time", t.id) == int(th["requested_ms"])
        assert await r.zscore(f"{P}calls:by_time", call.id) == int(ch["offered_ms"])
        assert await r.ttl(f"{P}transfer:{t.id}") > 86400  # retention applies

        text = await _dump(r)
        for secret in PHI:
            assert secret not in text, f"{secret!r} stored in Redis with the PHI switches off"
    finally:
        await r.aclose()


async def test_redis_down_during_a_live_transfer_spools_and_replays_in_order(
    tmp_path: Path, daemon: Daemon, ports: Ports, redis_server: RedisServer
) -> None:
    recorder = daemon.observer.recorder
    redis_server.stop()  # down before the call starts: every event of the call meets it down
    transfer = asyncio.create_task(_refer_transfer(tmp_path, ports, hold_ms=5000))

    async def spooling() -> bool:
        return not recorder.up and recorder.spooled >= 3

    await _until(spooling, 20, "events in the spool while Redis is down")
    redis_server.start()  # back while the call is still up: the rest go straight on after replay
    await transfer
    call = next(iter((await settled(daemon)).ended.values()))

    async def replayed() -> bool:
        return recorder.up and recorder.spooled == 0

    await _until(replayed, 15, "spool replayed after Redis came back")
    r = aioredis.from_url(redis_server.url, decode_responses=True)
    try:

        async def ended() -> bool:
            return "call_ended" in {e["kind"] for e in await _stream(r)}

        await _until(ended, 10, "call_ended recorded")
        events = [e for e in await _stream(r) if e["call_id"] == call.id]
        ids = [e["id"] for e in events]
        assert len(set(ids)) == len(ids), "an event was applied twice"
        # the order the call layer produced them in: event ids count up per daemon
        seqs = [int(i.rsplit("-", 1)[1]) for i in ids]
        assert seqs == sorted(seqs)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "an event is missing"
        assert events[0]["kind"] == "call_offered" and events[-1]["kind"] == "call_ended"
        assert call.transfer is not None
        th = await r.hgetall(f"{P}transfer:{call.transfer.id}")
        assert th["outcome"] == "completed" and "answered_ms" in th
    finally:
        await r.aclose()


async def _spawn(config: Path, log: Path) -> asyncio.subprocess.Process:
    out = log.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            str(HANDOFFD), "--config", str(config), stdout=out, stderr=out
        )
    finally:
        out.close()


async def _healthy(http: int, proc: asyncio.subprocess.Process) -> None:
    async def up() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"handoffd exited with {proc.returncode}")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", http)
        except OSError:
            return False
        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
        head = await reader.read(64)
        writer.close()
        return head.split(b" ", 2)[1:2] == [b"200"]  # aiohttp answers HTTP/1.0 in kind

    await _until(up, 10, "handoffd healthy")


async def test_kill_9_with_events_in_the_spool_then_restart_replays_them_and_logs_hold_no_phi(
    tmp_path: Path, ports: Ports
) -> None:
    server = RedisServer(tmp_path / "redis")  # not started yet: the daemon spools
    root = tmp_path / "etc"
    config = write_setup(
        root,
        ports,
        redis_url=server.url,
        records="  store_caller_number: false\n",
    )
    text = config.read_text().replace("  spool:\n", "  spool:\n    fsync: always\n")
    config.write_text(text.replace("drain:\n", "logging:\n  level: debug\ndrain:\n"))
    log = tmp_path / "handoffd.log"
    proc = await _spawn(config, log)
    try:
        await _healthy(ports.http, proc)
        # a transfer that fails over (busy primary) and then fails (unavailable backup)
        busy = await _uas(tmp_path, "uas-988-busy", ports.primary)
        down = await _uas(tmp_path, "uas-988-unavailable", ports.backup)
        await asyncio.sleep(0.3)
        res = await (await _caller(tmp_path, ports, "911-to-988.csv", hold_ms=500)).wait(30)
        assert res.count("Status503(C)") == 1, res.stdout[-1500:]
        _ok(await busy.wait(10), "busy 988")
        _ok(await down.wait(10), "unavailable 988")
        spool = root / "spool"

        async def spooled() -> bool:
            size = sum(f.stat().st_size for f in spool.rglob("*") if f.is_file())
            return size > 0

        await _until(spooled, 5, "events in the spool")
        await asyncio.sleep(0.5)  # the call_ended event and the spool write after the 503
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    server.start()
    r = aioredis.from_url(server.url, decode_responses=True)
    proc = await _spawn(config, log)
    try:
        await _healthy(ports.http, proc)

        async def replayed() -> bool:
            return bool(await r.exists(f"{P}discrepancies:by_time"))

        await _until(replayed, 15, "the spooled failure replayed into Redis")
        events = await _stream(r)
        kinds = [e["kind"] for e in events]
        assert kinds[:3] == ["call_offered", "transfer_requested", "destination_trying"], kinds
        assert kinds.count("failover") == 1 and kinds.count("failed") == 1
        assert len({e["id"] for e in events}) == len(events)
        (tid,) = await r.zrange(f"{P}discrepancies:by_time", 0, -1)
        disc = await r.hgetall(f"{P}discrepancy:{tid}")
        assert disc["agency"] == "psap-a" and disc["sip_status"] == "503"
        assert disc["destination"] == "988-backup"
        th = await r.hgetall(f"{P}transfer:{tid}")
        assert th["outcome"] == "failed" and th["failovers"] == "1" and th["trigger"] == "invite"
        text = await _dump(r)
        for secret in PHI:
            assert secret not in text
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await r.aclose()
        server.stop()

    logged = log.read_text()
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "transfer requested" for e in lines), logged[-2000:]
    assert any(e.get("level") == "debug" for e in lines)  # the strictest level was on
    for secret in PHI:
        assert secret not in logged, f"{secret!r} in the daemon's log"
    assert os.path.getsize(log) > 0


async def test_a_header_byte_that_is_not_utf8_reaches_redis_replaced_and_blocks_nothing(
    tmp_path: Path,
    daemon: Daemon,
    ports: Ports,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A CPE whose Call-Info carries a byte that is not UTF-8 (0xff): the call goes through,
    its events reach Redis with U+FFFD in place of the byte, and the next call's events
    follow (before the fix the writer retried that batch forever)."""
    disp = await _uas(tmp_path, "uas-basic-call", ports.disp1, "-m", "2")
    await asyncio.sleep(0.3)
    stack = SipStack(lambda ev: None, TimerConfig())
    local = await stack.listen("udp", "127.0.0.1", 0)
    uac = MiniUac(stack, local)
    stack.handler = uac.handle
    odd = b"<urn:emergency:uid:callid:\xff1:psap.example>;purpose=emergency-CallId"
    plain = "<urn:emergency:uid:callid:plain2:psap.example>;purpose=emergency-CallId"
    sip = Endpoint("udp", "127.0.0.1", ports.sip)
    try:
        first = await uac.call(
            sip, "disp-1", 0.2, (("Call-Info", odd.decode("utf-8", "surrogateescape")),)
        )
        second = await uac.call(sip, "disp-1", 0.2, (("Call-Info", plain),))
    finally:
        await stack.close()
    got = (first.invite_status, first.bye_status, second.invite_status, second.bye_status)
    assert got == (200,) * 4
    _ok(await disp.wait(20), "dispatcher")
    r: Any = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:

        async def both_ended() -> bool:
            entries = [f for _, f in await r.xrange(f"{P}events")]
            return sum(1 for f in entries if f["kind"] == "call_ended") == 2

        await _until(both_ended, 10, "both calls' events in Redis")
        ids = {
            f["emergency_call_id"]
            for _, f in await r.xrange(f"{P}events")
            if f["kind"] == "call_offered"
        }
        assert ids == {
            "urn:emergency:uid:callid:\ufffd1:psap.example",
            "urn:emergency:uid:callid:plain2:psap.example",
        }
    finally:
        await r.aclose()
    assert daemon.observer.recorder.spooled == 0 and daemon.observer.recorder.up
    # straight to Redis: the writer never failed on the batch (nor went the spool's way)
    failures = [r.getMessage() for r in caplog.records if r.name == "telephony.records"]
    assert not [m for m in failures if "unreachable" in m or "unexpected" in m], failures
