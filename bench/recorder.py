"""Transfer records: how fast the Recorder gets events into a real redis-server, and what
``submit()`` (the only part on the SIP path) costs while Redis is down and events spool.

Peer in the same run: redis-py pipelining a bare ``XADD`` per event (no hashes, no indexes, no
idempotency): the floor for "put an event in Redis from asyncio Python". The ratio says what
the records layout and exactly-once application cost on top.

    .venv/bin/python bench/recorder.py [--events 20000] [--repeats 5]

Needs ``redis-server`` (Debian package). Everything on 127.0.0.1; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.asyncio as aioredis

from telephony.config.model import Config, RecordsConfig
from telephony.recording.events import RecordEvent
from telephony.recording.store import Recorder
from tests.peers.redis import RedisServer

T0 = 1_790_000_000_000
KINDS = ("call_offered", "transfer_requested", "destination_answered", "completed")


def events(n: int, run: int) -> list[RecordEvent]:
    out = []
    for i in range(n):
        call, kind = f"c{run}-{i // 4}", KINDS[i % 4]
        transfer: dict[str, Any] = {}
        if kind != "call_offered":
            transfer = {"transfer_id": f"t{run}-{i // 4}", "mode": "cold", "triage_level": 1}
            transfer |= {"destination": "988-primary", "transfer_requested_ms": T0 + 10}
        out.append(
            RecordEvent(
                id=f"bench-{run}-{i}",
                kind=kind,  # type: ignore[arg-type]
                at_ms=T0 + i,
                call_id=call,
                psap="psap-a",
                trunk="cpe",
                emergency_call_id=f"urn:emergency:uid:callid:{call}:psap.example",
                caller_number="+18055550123",
                call_offered_ms=T0,
                **transfer,
            )
        )
    return out


def config(workdir: Path, spool: str) -> Config:
    rc = RecordsConfig(spool_dir=workdir / spool, queue_size=100_000)
    return Config(source=workdir / "handoffd.yaml", records=rc)


async def until(check: Any, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        await asyncio.sleep(0.005)


async def live(
    server: RedisServer, workdir: Path, evs: list[RecordEvent], run: int
) -> tuple[float, float]:
    """Events/s into Redis, and this process's CPU µs per event (the writer's Python; Redis's
    own time is in redis-server, not counted)."""
    rec = Recorder(config(workdir, f"live{run}"), redis_url=server.url, hash_key=b"k")
    await rec.start()
    await until(lambda: rec.up, 5)
    t, cpu = time.perf_counter(), time.process_time()
    for ev in evs:
        rec.submit(ev)
    await until(lambda: rec.applied >= len(evs), 120)
    rate = len(evs) / (time.perf_counter() - t)
    cpu_us = (time.process_time() - cpu) / len(evs) * 1e6
    await rec.stop(5)
    return rate, cpu_us


async def spooled(workdir: Path, evs: list[RecordEvent], run: int) -> tuple[float, float, float]:
    """Redis down: submit cost (median, p99 µs); then Redis up: replay rate (events/s), timed
    from the reconnect."""
    server = RedisServer(workdir / f"redis-replay{run}")  # not started: the recorder spools
    rec = Recorder(config(workdir, f"spool{run}"), redis_url=server.url, hash_key=b"k")
    await rec.start()
    costs = []
    for i, ev in enumerate(evs):
        t = time.perf_counter_ns()
        rec.submit(ev)
        costs.append(time.perf_counter_ns() - t)
        if i % 256 == 255:
            await asyncio.sleep(0)  # let the writer move the queue to the spool, as in a daemon
    await until(lambda: rec.spooled >= len(evs), 60)
    server.start()
    try:
        await until(lambda: rec.up, 30)  # from the reconnect, not the backoff before it
        t0, before = time.perf_counter(), rec.applied
        await until(lambda: rec.applied >= len(evs), 120)
        rate = (len(evs) - before) / (time.perf_counter() - t0)
        await rec.stop(5)
    finally:
        server.stop()
    costs.sort()
    return statistics.median(costs) / 1000, costs[int(len(costs) * 0.99)] / 1000, rate


async def peer(server: RedisServer, evs: list[RecordEvent]) -> tuple[float, float]:
    r = aioredis.from_url(server.url)
    try:
        t, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(evs), 256):
            pipe = r.pipeline(transaction=False)
            for ev in evs[i : i + 256]:
                pipe.xadd("peer:events", {k: str(v) for k, v in ev.fields().items()})
            await pipe.execute()
        rate = len(evs) / (time.perf_counter() - t)
        return rate, (time.process_time() - cpu) / len(evs) * 1e6
    finally:
        await r.aclose()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    keys = ("live", "peer", "replay", "p50", "p99", "live_cpu", "peer_cpu")
    rows: dict[str, list[float]] = {k: [] for k in keys}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis")
        server.start()
        try:
            for run in range(args.repeats):
                evs = events(args.events, run)
                rate, cpu = await live(server, workdir, evs, run)
                rows["live"].append(rate)
                rows["live_cpu"].append(cpu)
                rate, cpu = await peer(server, evs)
                rows["peer"].append(rate)
                rows["peer_cpu"].append(cpu)
                p50, p99, rate = await spooled(workdir, events(args.events, 100 + run), run)
                rows["p50"].append(p50)
                rows["p99"].append(p99)
                rows["replay"].append(rate)
        finally:
            server.stop()
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"python {platform.python_version()}"
    )
    print(f"events per run {args.events}, repeats {args.repeats} (medians; min-max in brackets)")
    for key, unit in (("live", "events/s"), ("peer", "events/s"), ("replay", "events/s")):
        v = rows[key]
        print(f"  {key:7} {med[key]:10.0f} {unit}  [{min(v):.0f}-{max(v):.0f}]")
    print(f"  live / peer = {med['live'] / med['peer']:.2f}")
    print(
        f"  this process's CPU per event: live {med['live_cpu']:.1f} us, "
        f"peer {med['peer_cpu']:.1f} us (ratio {med['live_cpu'] / med['peer_cpu']:.2f})"
    )
    print(f"  submit() while Redis is down: p50 {med['p50']:.1f} us, p99 {med['p99']:.1f} us")


if __name__ == "__main__":
    asyncio.run(main())
