"""Conference mixer cost: µs per 20 ms tick of a 3-party conference, and how many fit on a core.

core (default)  In process, no sockets. One 3-party conference (caller PCMU 440 Hz, dispatcher
                PCMA 1000 Hz, counselor PCMU 1800 Hz: so every tick also transcodes). A "tick"
                is what one conference costs per 20 ms: the 3 packets that arrived
                (``Mixer.receive``: parse, jitter buffer) plus ``Mixer.tick`` (decode, mix-minus
                with clipping, encode 3 frames, 3 RTP headers). Peer in the same run, rounds
                interleaved: ``PurePython``, the same job one sample at a time in pure Python
                (table lookups per sample, ``sum`` per sample, ``min``/``max`` clipping); its
                payloads are checked equal to the mixer's before timing. Each sample is a batch
                of ``--batch`` ticks with the garbage collector off (as ``timeit`` does); the
                tables show the median over ``--rounds`` rounds and the median of per-round
                ratios. "tick only" times ``Mixer.tick`` alone (per-tick timer reads included,
                ~0.1 µs).
                Then ``--many`` conferences at once (default 200,400): one period = every
                conference's 3 receives + tick, timed as a whole (memory/cache effects
                included); the share of the 20 ms period that takes is the CPU a core spends
                mixing them. Twice: each mixer ticking alone (``Mixer.tick``), and all of them
                in one ``tick_all`` (what the conferences' shared clock does), in
                interleaved halves of the same run.
--udp N,...     End to end on 127.0.0.1: N conferences through ``telephony.media.Relay`` leg
                endpoints and ``Conference`` (uvloop, this process pinned to CPU 0; with
                ``--baseline`` the same phones bridged in pairs by the plain relay instead: the
                same packets in and out, no mixer, i.e. the socket floor); a separate
                process pinned to CPU 1 plays the 3N phones: each sends a 172-byte G.711 packet
                every 20 ms (spread evenly over the period) and counts what the mixer sends
                back. Clean = every packet the phones sent was mixed (none lost, none late), no
                tick found a gap in a playing buffer, no tick skipped, and every packet the
                mixer sent arrived. Mixer CPU % is this process's user+system time over the
                window (100 = one core; the user/system split is in --json, but this VM's
                tick-based accounting splits short wake-ups unreliably); it includes the
                sockets (recv, send: on loopback the kernel's delivery to the phones' sockets is
                charged to the sender) and the loop. The garbage collector runs as handoffd
                runs it (``--collector daemon``, the default: telephony/collector.py), or with
                CPython's thresholds (``default``), or both interleaved (``both``).

Run:  uv run python bench/mixer.py [--rounds 25] [--batch 500] [--many 200,400] [--json]
      uv run python bench/mixer.py --udp 100,150,200 [--duration 10] [--repeats 3] [--baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import random
import resource
import select
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, ClassVar

import numpy as np
from rtp_relay import _cpu, _pin, _recv, machine

from telephony.collector import Collector
from telephony.media import g711
from telephony.media.conference import Conference
from telephony.media.g711 import PCMA, PCMU
from telephony.media.mixer import Mixer, tick_all
from telephony.media.party import Party
from telephony.media.ports import PortAllocator
from telephony.media.relay import Relay
from telephony.media.rtp import FRAME, PERIOD

try:
    import uvloop
except ImportError:
    uvloop = None  # type: ignore[assignment]

HOST = "127.0.0.1"
HDR = struct.Struct("!BBHII")
PARTIES = ((PCMU, 440.0), (PCMA, 1000.0), (PCMU, 1800.0))  # caller, dispatcher, counselor
CYCLE = 5  # 5 frames = 800 samples: whole cycles of every tone, so frames repeat every 5
MIXER_CPU, GEN_CPU = 0, 1


def tone_payloads(codec: int, freq: float) -> list[bytes]:
    t = np.arange(CYCLE * FRAME, dtype=np.float64)
    samples = np.round(6000 * np.sin(2 * np.pi * freq * t / 8000)).astype(np.int16)
    return [g711.encode(samples[i * FRAME : (i + 1) * FRAME], codec) for i in range(CYCLE)]


PAYLOADS = [tone_payloads(codec, freq) for codec, freq in PARTIES]


def packets(first: int, ticks: int, ssrc_base: int = 0x1000) -> list[list[bytes]]:
    """RTP packets of the 3 parties for ticks ``first`` .. ``first + ticks``."""
    return [
        [
            HDR.pack(0x80, PARTIES[i][0], k & 0xFFFF, (k * FRAME) & 0xFFFFFFFF, ssrc_base + i)
            + PAYLOADS[i][k % CYCLE]
            for i in range(3)
        ]
        for k in range(first, first + ticks)
    ]


# ---------------------------------------------------------------------------- the peer


class PyParty:
    __slots__ = ("buf", "codec", "dec", "enc", "first", "play", "seq", "ssrc", "ts")

    def __init__(self, codec: int, ssrc: int) -> None:
        self.codec = codec
        self.dec = g711.DECODE_TABLES[codec].tolist()
        self.enc = g711.ENCODE_TABLES[codec].tobytes()
        self.ssrc = ssrc
        self.seq = 0
        self.ts = 0
        self.first = True
        self.buf: dict[int, list[int]] = {}
        self.play: int | None = None


class PurePython:
    """The mixer's steady-state job in plain Python, one sample at a time: parse the header,
    decode by table into a timestamp-keyed buffer, start after two frames, mix-minus with
    clipping, encode by table, write the header. (No reordering, loss or event handling:
    the peer is given the easy path only.)"""

    ZERO: ClassVar[list[int]] = [0] * FRAME
    DEC: ClassVar[dict[int, list[int]]] = {
        PCMU: g711.ULAW_DECODE.tolist(),
        PCMA: g711.ALAW_DECODE.tolist(),
    }

    def __init__(self) -> None:
        self.parties: list[PyParty] = []

    def join(self, codec: int) -> PyParty:
        p = PyParty(codec, 0x2000 + len(self.parties))
        self.parties.append(p)
        return p

    def receive(self, p: PyParty, data: bytes, now: float) -> None:
        _b0, b1, _seq, ts, _ssrc = HDR.unpack_from(data)
        dec = self.DEC[b1 & 0x7F]
        p.buf[ts] = [dec[b] for b in data[12:]]

    def tick(self, now: float) -> list[bytes]:
        frames = []
        for p in self.parties:
            if p.play is None:
                if len(p.buf) < 2:
                    frames.append(self.ZERO)
                    continue
                p.play = min(p.buf)
            f = p.buf.pop(p.play, None)
            p.play += FRAME
            frames.append(self.ZERO if f is None else f)
        total = [sum(col) for col in zip(*frames, strict=True)]
        out = []
        for p, own in zip(self.parties, frames, strict=True):
            enc = p.enc
            payload = bytes(
                [
                    enc[min(32767, max(-32768, t - s)) & 0xFFFF]
                    for t, s in zip(total, own, strict=True)
                ]
            )
            b1 = p.codec | (0x80 if p.first else 0)
            p.first = False
            out.append(HDR.pack(0x80, b1, p.seq & 0xFFFF, p.ts & 0xFFFFFFFF, p.ssrc) + payload)
            p.seq += 1
            p.ts += FRAME
        return out


# ---------------------------------------------------------------------------- core timing


class Subject:
    """One conference of either kind, fed with consecutive packets."""

    def __init__(self, kind: str, ssrc_base: int = 0x1000) -> None:
        self.kind = kind
        self.k = 0
        self.ssrc_base = ssrc_base
        if kind == "numpy":
            self.mixer = Mixer(rng=random.Random(1))
            self.parties: list[Any] = [self.mixer.join(codec=c) for c, _ in PARTIES]
            self.receive: Callable[[Any, bytes, float], object] = self.mixer.receive
            self.tick: Callable[[float], list[Any]] = self.mixer.tick
        else:
            self.peer = PurePython()
            self.parties = [self.peer.join(c) for c, _ in PARTIES]
            self.receive = self.peer.receive
            self.tick = self.peer.tick

    def next_packets(self, ticks: int) -> list[list[bytes]]:
        pk = packets(self.k, ticks, self.ssrc_base)
        self.k += ticks
        return pk


def time_full(s: Subject, ticks: int) -> float:
    """µs per tick: 3 receives + tick."""
    batch = s.next_packets(ticks)
    receive, tick, parties = s.receive, s.tick, s.parties
    p0, p1, p2 = parties
    gc.disable()
    t0 = time.perf_counter_ns()
    for a, b, c in batch:
        receive(p0, a, 0.0)
        receive(p1, b, 0.0)
        receive(p2, c, 0.0)
        tick(0.0)
    t1 = time.perf_counter_ns()
    gc.enable()
    return (t1 - t0) / ticks / 1000


def time_tick_only(s: Subject, ticks: int) -> float:
    batch = s.next_packets(ticks)
    receive, tick, parties = s.receive, s.tick, s.parties
    p0, p1, p2 = parties
    clock = time.perf_counter_ns
    spent = 0
    gc.disable()
    for a, b, c in batch:
        receive(p0, a, 0.0)
        receive(p1, b, 0.0)
        receive(p2, c, 0.0)
        t0 = clock()
        tick(0.0)
        spent += clock() - t0
    gc.enable()
    return spent / ticks / 1000


def time_many(subjects: list[Subject], periods: int, batched: bool = False) -> float:
    """Median ms for one 20 ms period of every conference (3 receives + tick each; with
    ``batched``, 3 receives each and one ``tick_all`` of them all)."""
    batches = [s.next_packets(periods) for s in subjects]
    work = list(zip(subjects, batches, strict=True))
    mixers = [s.mixer for s in subjects]
    samples = []
    gc.disable()
    for k in range(periods):
        t0 = time.perf_counter_ns()
        for s, batch in work:
            a, b, c = batch[k]
            p0, p1, p2 = s.parties
            s.receive(p0, a, 0.0)
            s.receive(p1, b, 0.0)
            s.receive(p2, c, 0.0)
            if not batched:
                s.tick(0.0)
        if batched:
            tick_all(mixers, 0.0)
        samples.append(time.perf_counter_ns() - t0)
    gc.enable()
    return statistics.median(samples) / 1e6


def check_same_audio() -> None:
    """The peer must produce the mixer's payloads (so the race is like for like)."""
    a, b = Subject("numpy"), Subject("python")
    for pk in packets(0, 20):
        outs = []
        for s in (a, b):
            for p, data in zip(s.parties, pk, strict=True):
                s.receive(p, data, 0.0)
            out = s.tick(0.0)
            outs.append([o[1] if isinstance(o, tuple) else o for o in out])
        assert [x[12:] for x in outs[0]] == [x[12:] for x in outs[1]], "peer output differs"


def yardstick() -> float:
    import timeit  # noqa: PLC0415

    n, t = timeit.Timer("sum(range(1000))").autorange()
    return t / n * 1e6


def core(args: argparse.Namespace) -> dict[str, Any]:
    check_same_audio()
    numpy_s, py_s = Subject("numpy"), Subject("python")
    for s in (numpy_s, py_s):  # warm up
        time_full(s, 50)
    full_np, full_py, tick_np, tick_py, ratios = [], [], [], [], []
    py_batch = max(20, args.batch // 20)  # the peer is ~20-50x slower: keep rounds short
    for _ in range(args.rounds):
        a = time_full(numpy_s, args.batch)
        b = time_full(py_s, py_batch)
        full_np.append(a)
        full_py.append(b)
        ratios.append(b / a)
        tick_np.append(time_tick_only(numpy_s, args.batch))
        tick_py.append(time_tick_only(py_s, py_batch))
    med = statistics.median
    result: dict[str, Any] = {
        "numpy_full_us": med(full_np),
        "numpy_tick_us": med(tick_np),
        "numpy_receive_us": (med(full_np) - med(tick_np)) / 3,
        "python_full_us": med(full_py),
        "python_tick_us": med(tick_py),
        "ratio_medians": med(full_py) / med(full_np),
        "ratio_paired": med(ratios),
        "numpy_full_p90_us": statistics.quantiles(full_np, n=10)[-1],
        "rounds": args.rounds,
        "batch": args.batch,
    }
    result["conferences_per_core_100pct"] = PERIOD * 1e6 / result["numpy_full_us"]
    result["python_conferences_per_core_100pct"] = PERIOD * 1e6 / result["python_full_us"]
    many = []
    for n in (int(x) for x in args.many.split(",") if x):
        subjects = [Subject("numpy", 0x1000 + 4 * i) for i in range(n)]
        time_many(subjects, 5)
        alone, batched = [], []
        for _ in range(2):  # interleaved halves: the machine's drift hits both alike
            alone.append(time_many(subjects, args.periods // 2))
            batched.append(time_many(subjects, args.periods // 2, batched=True))
        for mode, ms in (("alone", statistics.mean(alone)), ("tick_all", statistics.mean(batched))):
            many.append(
                {
                    "conferences": n,
                    "mode": mode,
                    "ms_per_period": ms,
                    "core_pct": 100 * ms / (PERIOD * 1e3),
                }
            )
    result["many"] = many
    return result


# ---------------------------------------------------------------------------- end to end


def _socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.bind((HOST, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return s


def phones(conn: Connection, confs: int, duration: float, pin: bool) -> None:
    """The 3 x ``confs`` phones: paced sending (spin), counting what comes back."""
    pinned = pin and _pin(GEN_CPU)
    socks = [_socket() for _ in range(3 * confs)]
    conn.send([s.getsockname()[1] for s in socks])
    targets: list[int] = conn.recv()
    n = len(socks)
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    ep = select.epoll()
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    received = [0] * n
    sent = [0] * n
    late: list[int] = []

    def drain(i: int) -> None:
        sk = socks[i]
        while True:
            try:
                sk.recv(2048)
            except BlockingIOError:
                return
            received[i] += 1

    phase = [s * 20_000_000 // n for s in range(n)]
    conn.send("started")
    t0 = time.monotonic_ns() + 20_000_000
    end = t0 + int(duration * 1e9)
    k, s, due = 0, 0, t0
    while True:
        now = time.monotonic_ns()
        while due <= now and due < end:
            codec = PARTIES[s % 3][0]
            pkt = HDR.pack(0x80, codec, k & 0xFFFF, (k * FRAME) & 0xFFFFFFFF, s)
            socks[s].sendto(pkt + PAYLOADS[s % 3][k % CYCLE], (HOST, targets[s]))
            sent[s] += 1
            late.append(now - due)
            s += 1
            if s == n:
                s, k = 0, k + 1
            due = t0 + k * 20_000_000 + phase[s]
        if now >= end:
            break
        wait = due - now
        for fd, _ in ep.poll(0 if wait < 2_000_000 else wait / 1e9):
            drain(by_fd[fd])
    late.sort()
    conn.send({"sent": sum(sent), "gen_late_p99_us": late[int(0.99 * (len(late) - 1))] / 1000,
               "pinned": pinned})  # fmt: skip
    while not conn.poll(0):  # keep reading until the mixer side has stopped
        for fd, _ in ep.poll(0.01):
            drain(by_fd[fd])
    conn.recv()
    time.sleep(0.05)
    for i in range(n):
        drain(i)
    conn.send({"received": sum(received)})
    ep.close()
    for sk in socks:
        sk.close()


async def udp_case(
    confs: int,
    duration: float,
    base_port: int,
    pin: bool = True,
    relay_only: bool = False,
    collector: str = "daemon",
) -> dict[str, Any]:
    """``confs`` conferences (or, ``relay_only``, the same 3 x ``confs`` phones bridged in
    pairs by the plain relay: the same packets in and out, no mixer: the I/O floor).
    ``collector``: ``daemon`` (handoffd's policy) or ``default`` (CPython's thresholds)."""
    gc_policy = Collector() if collector == "daemon" else None
    if gc_policy is not None:  # as handoffd runs it (telephony/collector.py)
        gc_policy.install()
        gc_policy.drive(asyncio.get_running_loop(), idle=lambda: False)
    try:
        return await _udp_case(confs, duration, base_port, pin, relay_only)
    finally:
        if gc_policy is not None:
            gc_policy.uninstall()


async def _udp_case(
    confs: int, duration: float, base_port: int, pin: bool, relay_only: bool
) -> dict[str, Any]:
    relay = Relay(PortAllocator(HOST, base_port, base_port + 6 * confs + 63))
    eps = [await relay.open_endpoint(f"c{i}/{j}") for i in range(confs) for j in range(3)]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=phones, args=(child, confs, duration, pin))
    proc.start()
    conferences: list[Conference] = []
    try:
        ports = await _recv(parent)
        for e, port in zip(eps, ports, strict=True):
            e.set_remote(HOST, port, port)
        if relay_only:
            for a, b in zip(eps[::2], eps[1::2], strict=True):
                relay.bridge(a, b)
        else:
            for i in range(confs):
                conf = Conference(f"c{i}")
                for j in range(3):
                    conf.add(eps[3 * i + j], codec=PARTIES[j][0])
                conferences.append(conf)
        parent.send([e.rtp_port for e in eps])
        assert await _recv(parent) == "started"
        ru0, cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), _cpu(), time.perf_counter()
        gen: dict[str, Any] = await _recv(parent)
        await asyncio.sleep(0.15)  # the last packets are played out
        ru1, cpu1, wall1 = resource.getrusage(resource.RUSAGE_SELF), _cpu(), time.perf_counter()
        parties: list[Party] = [p for c in conferences for p in c.mixer.parties]
        st = [p.stats() for p in parties]
        counters = [e.stats() for e in eps]
        skipped = sum(c.mixer.ticks_skipped for c in conferences)
        errors = sum(c.errors for c in conferences)
        for c in conferences:
            c.close()
        parent.send("stop")
        back: dict[str, Any] = await _recv(parent)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    await relay.wait_closed()
    relay_in = sum(c.rtp_packets_in for c in counters)
    relay_out = sum(c.rtp_packets_out for c in counters)
    mixed = sum(s.audio_in for s in st) if not relay_only else relay_in
    late = sum(s.late for s in st)
    holes = sum(s.holes for s in st)
    # each party's buffer runs dry once when the phones stop
    starved = sum(s.underruns for s in st) - len(st)
    wall = wall1 - wall0
    row = {
        "mode": "relay" if relay_only else "conference",
        "conferences": confs,
        "sent": gen["sent"],
        "mixed": mixed,
        "lost_in": gen["sent"] - relay_in,
        "late": late,
        "holes": holes,
        "starved": starved,
        "ticks_skipped": skipped,
        "frames_out": relay_out,
        "lost_out": relay_out - back["received"],
        "errors": errors,
        "mixer_cpu_pct": 100 * (cpu1 - cpu0) / wall,
        "user_pct": 100 * (ru1.ru_utime - ru0.ru_utime) / wall,
        "sys_pct": 100 * (ru1.ru_stime - ru0.ru_stime) / wall,
        "gen_late_p99_us": gen["gen_late_p99_us"],
        "us_per_conference_tick": (cpu1 - cpu0) / (confs * wall / PERIOD) * 1e6,
    }
    row["clean"] = (
        row["lost_in"] == 0
        and late == 0
        and holes == 0
        and starved <= 0
        and skipped == 0
        and row["lost_out"] == 0
        and errors == 0
    )
    return row


def udp(args: argparse.Namespace) -> list[dict[str, Any]]:
    if uvloop is None:
        sys.exit("uvloop is not installed")
    counts = [int(x) for x in args.udp.split(",") if x]
    if args.baseline and any(n % 2 for n in counts):
        sys.exit("--baseline bridges the 3N phones in pairs: N must be even")
    if not args.no_pin:
        _pin(MIXER_CPU)
    rows = []
    collectors = ["daemon", "default"] if args.collector == "both" else [args.collector]
    for rep in range(args.repeats):
        for n in counts:
            for policy in collectors if rep % 2 == 0 else collectors[::-1]:
                row = _udp_row(args, n, policy)
                row["repeat"] = rep
                rows.append(row)
    return rows


def _udp_row(args: argparse.Namespace, n: int, policy: str) -> dict[str, Any]:
    loop = uvloop.new_event_loop()
    try:
        row = loop.run_until_complete(
            udp_case(n, args.duration, args.port_base, not args.no_pin, args.baseline, policy)
        )
    finally:
        loop.close()
    row["collector"] = policy
    print(
        f"[gc {policy}] {row['mode']:10s} {n:4d} conferences: sent {row['sent']} "
        f"mixed {row['mixed']} "
        f"lost_in {row['lost_in']} late {row['late']} holes {row['holes']} starved "
        f"{row['starved']} skipped {row['ticks_skipped']} lost_out {row['lost_out']} "
        f"cpu {row['mixer_cpu_pct']:.0f}% (user {row['user_pct']:.0f}, sys "
        f"{row['sys_pct']:.0f}) ({row['us_per_conference_tick']:.1f} µs/conf "
        f"tick) gen late p99 {row['gen_late_p99_us']:.0f} µs -> "
        f"{'clean' if row['clean'] else 'NOT clean'}",
        file=sys.stderr,
        flush=True,
    )
    return row


# ---------------------------------------------------------------------------- output


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--batch", type=int, default=500, help="ticks per timed sample (numpy)")
    ap.add_argument("--many", default="200,400", help="conferences timed together")
    ap.add_argument("--periods", type=int, default=100, help="periods per --many case")
    ap.add_argument("--udp", default="", help="end to end: comma list of conference counts")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--port-base", type=int, default=24000)
    ap.add_argument("--no-pin", action="store_true", help="let the scheduler place both sides")
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="with --udp: the same phones bridged in pairs by the relay, no mixer (N even)",
    )
    ap.add_argument(
        "--collector",
        choices=("daemon", "default", "both"),
        default="daemon",
        help="with --udp: the garbage collector as handoffd runs it, CPython's default, or both",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    info = machine() | {"numpy": np.__version__, "yardstick_us": yardstick(), "argv": sys.argv[1:]}
    if args.udp:
        rows = udp(args)
        info["loadavg_after"] = os.getloadavg()
        if args.json:
            print(json.dumps({"machine": info, "udp": rows}, indent=1))
            return
        print(json.dumps(info))
        print(udp_table(rows))
        return
    if not args.no_pin:
        _pin(MIXER_CPU)
    result = core(args)
    info["loadavg_after"] = os.getloadavg()
    if args.json:
        print(json.dumps({"machine": info, "core": result}, indent=1))
        return
    print(json.dumps(info))
    print(core_table(result))


def core_table(r: dict[str, Any]) -> str:
    lines = [
        "| one 3-party conference (PCMU, PCMA, PCMU) | numpy mixer µs | pure Python µs | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| per 20 ms tick: 3 receives + tick | {r['numpy_full_us']:.1f} | "
        f"{r['python_full_us']:.1f} | {r['ratio_medians']:.1f}x "
        f"(paired {r['ratio_paired']:.1f}x) |",
        f"| tick only (decode, mix, clip, encode, headers) | {r['numpy_tick_us']:.1f} | "
        f"{r['python_tick_us']:.1f} | {r['python_tick_us'] / r['numpy_tick_us']:.1f}x |",
        f"| receive, per packet (parse, jitter buffer) | {r['numpy_receive_us']:.1f} | | |",
        f"| conferences per core at 100 % (20 ms / tick) | "
        f"{r['conferences_per_core_100pct']:.0f} | "
        f"{r['python_conferences_per_core_100pct']:.0f} | |",
        "",
        "| conferences mixed together | ticked | ms per 20 ms period (median) "
        "| share of one core |",
        "| ---: | --- | ---: | ---: |",
    ]
    for m in r["many"]:
        lines.append(
            f"| {m['conferences']} | {m['mode']} | {m['ms_per_period']:.2f} "
            f"| {m['core_pct']:.0f} % |"
        )
    return "\n".join(lines)


def udp_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| mode (collector) | conferences | phones' packets/s in | mixed (or relayed) | lost in "
        "| late | holes "
        "| starved | ticks skipped | lost out | CPU % (one core) | CPU µs per conference tick "
        "| generator late p99 µs | clean |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- |",
    ]
    for mode, n, policy in sorted({(r["mode"], r["conferences"], r["collector"]) for r in rows}):
        mine = [
            r
            for r in rows
            if r["conferences"] == n and r["mode"] == mode and r["collector"] == policy
        ]

        def med(key: str, mine: list[dict[str, Any]] = mine) -> float:
            return statistics.median(float(r[key]) for r in mine)

        def worst(key: str, mine: list[dict[str, Any]] = mine) -> int:
            return max(int(r[key]) for r in mine)

        clean = sum(1 for r in mine if r["clean"])
        lines.append(
            f"| {mode} ({policy}) | {n} | {150 * n:,} | {med('mixed'):,.0f} | {worst('lost_in')} "
            f"| {worst('late')} | {worst('holes')} | {max(0, worst('starved'))} "
            f"| {worst('ticks_skipped')} | {worst('lost_out')} | {med('mixer_cpu_pct'):.0f} "
            f"| {med('us_per_conference_tick'):.1f} | {med('gen_late_p99_us'):.0f} "
            f"| {clean}/{len(mine)} runs |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
