"""RTP relay throughput and added jitter: N concurrent G.711 calls through telephony.media.

The relay (``telephony.media.Relay``, uvloop unless ``--loop asyncio``) runs in this process,
pinned to CPU 0 when the machine has more than one. A separate process (multiprocessing,
``spawn``), pinned to CPU 1, plays both ends of every call with plain non-blocking UDP sockets
on 127.0.0.1: per call one socket for the caller (side A) and one for the callee (side B).

paced (default)  Every call streams both ways like a real G.711 call: one 172-byte RTP packet
                 (12-byte header + 160 bytes = 20 ms of PCMU) every 20 ms per direction, i.e.
                 100 packets/s per call through the relay. The 2N streams are spread evenly over
                 the 20 ms period. Each packet carries its send time (``time.time_ns()`` taken
                 right before ``sendto``); the receiving socket has SO_TIMESTAMPNS, so the
                 receive time is the kernel's (when the relay's ``sendto`` queued it), not when
                 the generator got round to reading it. Per stream, for consecutive packets:

                     added jitter = |(recv[i] - recv[i-1]) - (send[i] - send[i-1])|

                 (RFC 3550's D(i-1, i) with the actual send spacing in place of the RTP
                 timestamp spacing, so pacing errors of the generator itself cancel out).
                 "Transit" is recv - send: loopback + the relay's queueing and processing.
                 Lost = sent - received, counted per stream at the end after a 0.5 s drain.
blast            The generator sends 172-byte RTP packets round-robin over all 2N streams as
                 fast as it can for the duration and does not read; the relay's own counters
                 over the window give the ceiling: packets accepted and forwarded per second,
                 with the relay's CPU time (one core at 100 % is the ceiling).
--baseline       paced, but each generator socket sends straight to the other end's socket
                 (no relay): the floor of the jitter/transit measurement on this machine.

Each (mode, N) case runs ``--repeats`` times; the table shows the median of each column over
the repeats ("lost" is the worst run). Relay CPU % is the relay process's user+system time
(getrusage) over the window / wall time; softirq time spent delivering its loopback packets
may not be charged to it. "Generator late p99" is how late the generator sent versus its
schedule: when it grows past a few hundred µs the generator, not the relay, is the limit.
Before the runs a stall check (``--hiccup``) spins on each CPU and reports clock gaps > 200 µs:
stalls the machine imposes on any process (hypervisor, kernel threads), which show up in the
relay's p99.9 and are not the relay's doing.

Run:  uv run python bench/rtp_relay.py [--calls 50,100,200,500] [--duration 10] [--repeats 3]
                                       [--blast 100] [--loop uvloop|asyncio] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from telephony.media import Bridge, PortAllocator, Relay

try:
    import uvloop
except ImportError:  # the relay runs on asyncio's loop then (--loop asyncio)
    uvloop = None  # type: ignore[assignment]

HOST = "127.0.0.1"
PACKET = 172  # 12-byte RTP header + 160 bytes of G.711 (20 ms at 8 kHz)
PERIOD_NS = 20_000_000
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux asm-generic value
TIMESPEC = struct.Struct("@qq")
HDR = struct.Struct("!BBHII")
STAMP = struct.Struct("!q")
DRAIN_S = 0.5
RELAY_CPU, GEN_CPU = 0, 1


# ---------------------------------------------------------------------------- generator process


def _pin(cpu: int) -> bool:
    try:
        # (a spawned child inherits its parent's mask: look at the machine, not at the mask)
        ncpu = os.cpu_count() or 1
        if ncpu > 1 and cpu < ncpu:
            os.sched_setaffinity(0, {cpu})
            return True
    except (AttributeError, OSError):
        pass
    return False


def _socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.bind((HOST, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    return s


def _pct(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    return float(values[min(len(values) - 1, int(q * len(values)))])


def generator(conn: Connection, targets: list[tuple[int, int]] | None, calls: int, mode: str,
              duration: float) -> None:  # fmt: skip
    """Both ends of ``calls`` calls. ``targets``: relay (A RTP port, B RTP port) per call, or
    None for the no-relay baseline."""
    pinned = _pin(GEN_CPU)
    socks_a = [_socket() for _ in range(calls)]
    socks_b = [_socket() for _ in range(calls)]
    conn.send(
        [(a.getsockname()[1], b.getsockname()[1]) for a, b in zip(socks_a, socks_b, strict=True)]
    )
    conn.recv()  # go

    # streams 2i: A -> B (caller to callee), 2i+1: B -> A
    send_sock: list[socket.socket] = []
    dest: list[tuple[str, int]] = []
    for i in range(calls):
        a, b = socks_a[i], socks_b[i]
        if targets is None:
            to_b, to_a = b.getsockname(), a.getsockname()
        else:
            to_b, to_a = (HOST, targets[i][0]), (HOST, targets[i][1])
        send_sock += [a, b]
        dest += [to_b, to_a]
    n = len(send_sock)
    bufs = [bytearray(HDR.pack(0x80, 0, 0, 0, s) + b"\xff" * (PACKET - 12)) for s in range(n)]
    cpu0 = time.process_time()

    if mode == "blast":
        conn.send("started")
        sent = 0
        end = time.monotonic() + duration
        seq = 0
        while time.monotonic() < end:
            seq = (seq + 1) & 0xFFFF
            for s in range(n):
                buf = bufs[s]
                struct.pack_into("!H", buf, 2, seq)
                try:
                    send_sock[s].sendto(buf, dest[s])
                    sent += 1
                except BlockingIOError:
                    pass
        conn.send({"sent": sent, "gen_cpu_s": time.process_time() - cpu0, "pinned": pinned})
        for sk in socks_a + socks_b:
            sk.close()
        return

    recv_sock = {sk.fileno(): sk for sk in socks_a + socks_b}
    ep = select.epoll()
    for fd in recv_sock:
        ep.register(fd, select.EPOLLIN)
    sent_n = [0] * n
    recv_n = [0] * n
    last_seq = [-1] * n
    last_send = [0] * n
    last_recv = [0] * n
    jitter: list[int] = []
    transit: list[int] = []
    late: list[int] = []
    reorder = 0
    phase = [s * PERIOD_NS // n for s in range(n)]
    cmsg_space = socket.CMSG_SPACE(TIMESPEC.size)
    user_stamps = 0

    def drain(sk: socket.socket) -> None:
        nonlocal reorder, user_stamps
        while True:
            try:
                data, anc, _flags, _addr = sk.recvmsg(2048, cmsg_space)
            except BlockingIOError:
                return
            if anc:
                sec, nsec = TIMESPEC.unpack_from(anc[0][2])
                rx = sec * 1_000_000_000 + nsec
            else:
                rx = time.time_ns()
                user_stamps += 1
            _v, _pt, seq, _ts, s = HDR.unpack_from(data)
            tx = STAMP.unpack_from(data, 12)[0]
            recv_n[s] += 1
            transit.append(rx - tx)
            if seq == last_seq[s] + 1:
                jitter.append(abs((rx - last_recv[s]) - (tx - last_send[s])))
            elif seq <= last_seq[s]:
                reorder += 1
            last_seq[s], last_send[s], last_recv[s] = seq, tx, rx

    conn.send("started")
    t0 = time.monotonic_ns() + 20_000_000
    end_send = t0 + int(duration * 1e9)
    end_all = end_send + int(DRAIN_S * 1e9)
    k, s = 0, 0
    due = t0
    while True:
        now = time.monotonic_ns()
        while due <= now and due < end_send:
            buf = bufs[s]
            HDR.pack_into(buf, 0, 0x80, 0, k & 0xFFFF, (k * 160) & 0xFFFFFFFF, s)
            STAMP.pack_into(buf, 12, time.time_ns())
            send_sock[s].sendto(buf, dest[s])
            sent_n[s] += 1
            late.append(now - due)
            s += 1
            if s == n:
                s = 0
                k += 1
            due = t0 + k * PERIOD_NS + phase[s]
        if now >= end_all:
            break
        # wait for the next send, or (sending over) drain until end_all; epoll sleeps in whole
        # milliseconds, so "spin" polls without sleeping when the next send is < 2 ms away
        wait = (due if due < end_send else end_all) - now
        if mode == "spin" and wait < 2_000_000:
            wait = 0
        timeout = max(0.0, wait / 1e9)
        for fd, _ev in ep.poll(timeout):
            drain(recv_sock[fd])
    gen_cpu = time.process_time() - cpu0
    for sk in recv_sock.values():
        drain(sk)
    ep.close()
    jitter.sort()
    transit.sort()
    late.sort()
    sent, received = sum(sent_n), sum(recv_n)
    conn.send(
        {
            "sent": sent,
            "received": received,
            "lost": sent - received,
            "reordered": reorder,
            "jitter_p50_us": _pct(jitter, 0.50) / 1000,
            "jitter_p99_us": _pct(jitter, 0.99) / 1000,
            "jitter_p999_us": _pct(jitter, 0.999) / 1000,
            "jitter_max_us": (jitter[-1] if jitter else 0) / 1000,
            "transit_p50_us": _pct(transit, 0.50) / 1000,
            "transit_p99_us": _pct(transit, 0.99) / 1000,
            "gen_late_p99_us": _pct(late, 0.99) / 1000,
            "gen_cpu_s": gen_cpu,
            "user_stamps": user_stamps,
            "pinned": pinned,
        }
    )
    for sk in recv_sock.values():
        sk.close()


# ---------------------------------------------------------------------------- relay side


async def _recv(conn: Connection) -> Any:
    """conn.recv() without blocking the relay's event loop."""
    loop = asyncio.get_running_loop()
    if conn.poll():
        return conn.recv()
    fut: asyncio.Future[Any] = loop.create_future()

    def ready() -> None:
        loop.remove_reader(conn.fileno())
        fut.set_result(conn.recv())

    loop.add_reader(conn.fileno(), ready)
    return await fut


def _udp_rcvbuf_errors() -> int:
    """Datagrams the kernel dropped machine-wide because a socket's receive buffer was full."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return 0


def _steal_ticks(cpu: int) -> int:
    """Clock ticks the hypervisor gave one of our vCPUs to someone else (/proc/stat). (The
    per-CPU busy ticks there are sampled at the tick and miss short wake-ups on this tickless
    kernel, so the relay's CPU is taken from getrusage instead.)"""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    return int(line.split()[8])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def hiccups(cpu: int, seconds: float, conn: Connection) -> None:
    """Spin on the clock pinned to ``cpu``; report gaps > 200 µs (the machine, not us)."""
    _pin(cpu)
    clock = time.perf_counter_ns
    last = start = clock()
    end = start + int(seconds * 1e9)
    gaps: list[int] = []
    while last < end:
        now = clock()
        if now - last > 200_000:
            gaps.append(now - last)
        last = now
    conn.send({"cpu": cpu, "gaps_over_200us": len(gaps), "max_gap_us": max(gaps, default=0) / 1000,
               "stalled_pct": 100 * sum(gaps) / (end - start)})  # fmt: skip


def machine_hiccups(seconds: float = 3.0) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for cpu in range(min(os.cpu_count() or 1, 8)):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=hiccups, args=(cpu, seconds, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    out = [p.recv() for p in pipes]
    for proc in procs:
        proc.join()
    return out


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def run_case(
    mode: str, calls: int, duration: float, base_port: int, pacing: str = "spin"
) -> dict[str, Any]:
    relay = None
    targets = None
    bridges: list[Bridge] = []
    if mode != "baseline":
        relay = Relay(PortAllocator(HOST, base_port, base_port + 4 * calls + 63))
        bridges = [await relay.open_bridge(f"call{i}") for i in range(calls)]
        targets = [(br.a.rtp_port, br.b.rtp_port) for br in bridges]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=generator, args=(child, targets, calls, "blast" if mode == "blast" else pacing,
                                duration),
    )  # fmt: skip
    proc.start()
    try:
        peer_ports = await _recv(parent)
        if relay is not None:
            for br, (pa, pb) in zip(bridges, peer_ports, strict=True):
                br.set_remote("a", HOST, pa)
                br.set_remote("b", HOST, pb)
        parent.send("go")
        assert await _recv(parent) == "started"
        cpu0, wall0 = _cpu(), time.perf_counter()
        rcvbuf0, steal0 = _udp_rcvbuf_errors(), _steal_ticks(RELAY_CPU)
        st0 = relay.stats().counters if relay else None
        result: dict[str, Any] = await _recv(parent)
        cpu1, wall1 = _cpu(), time.perf_counter()
        rcvbuf1, steal1 = _udp_rcvbuf_errors(), _steal_ticks(RELAY_CPU)
        st1 = relay.stats().counters if relay else None
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    wall = wall1 - wall0
    result.update(mode=mode, calls=calls, wall_s=wall)
    result["udp_rcvbuf_errors"] = rcvbuf1 - rcvbuf0
    result["steal_pct"] = 100 * (steal1 - steal0) / os.sysconf("SC_CLK_TCK") / wall
    result["relay_cpu_pct"] = 100 * (cpu1 - cpu0) / wall if relay else 0.0
    if st0 is not None and st1 is not None:
        result["relay_in"] = st1.rtp_packets_in - st0.rtp_packets_in
        result["relay_out"] = st1.rtp_packets_out - st0.rtp_packets_out
        result["relay_dropped"] = st1.dropped - st0.dropped
        result["relay_in_pps"] = result["relay_in"] / wall
        result["relay_out_pps"] = result["relay_out"] / wall
    if mode == "blast":
        result["sent_pps"] = result["sent"] / wall
        result["unread_pps"] = result["sent_pps"] - result["relay_in_pps"]
    else:
        result["offered_pps"] = 100 * calls
        result["delivered_pps"] = result["received"] / duration
    if relay is not None:
        await relay.wait_closed()
        assert relay.ports.in_use == 0
    return result


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r.get(key, 0)) for r in rows)


def machine() -> dict[str, Any]:
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_before": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--calls", default="50,100,200,500", help="comma list of concurrent calls")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--blast", default="100", help="calls for blast mode ('' to skip)")
    ap.add_argument("--baseline", action="store_true", help="also the no-relay floor")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument(
        "--pacing",
        choices=["spin", "poll"],
        default="spin",
        help="spin: send each packet on time (generator busy-polls); poll: epoll's 1 ms "
        "granularity, packets leave in ~1 ms bursts",
    )
    ap.add_argument("--hiccup", type=float, default=3.0, help="seconds of stall check (0: skip)")
    ap.add_argument("--port-base", type=int, default=24000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if args.loop == "uvloop":
        if uvloop is None:
            sys.exit("uvloop is not installed (use --loop asyncio)")
        loop_factory = uvloop.new_event_loop
    info = machine() | {"loop": args.loop, "pacing": args.pacing, "argv": sys.argv[1:]}
    if args.hiccup:
        info["hiccups_before"] = machine_hiccups(args.hiccup)
    info["relay_pinned_cpu"] = RELAY_CPU if _pin(RELAY_CPU) else None
    cases = [("paced", int(c)) for c in args.calls.split(",") if c]
    if args.baseline and cases:
        cases.append(("baseline", max(c for _, c in cases)))
    cases += [("blast", int(c)) for c in args.blast.split(",") if c]

    rows: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        for mode, calls in cases:
            loop = loop_factory()
            try:
                row = loop.run_until_complete(
                    run_case(mode, calls, args.duration, args.port_base, args.pacing)
                )
            finally:
                loop.close()
            row["repeat"] = rep
            rows.append(row)
            if not args.json:
                print(_line(row), flush=True)
    info["loadavg_after"] = os.getloadavg()
    summary = []
    for mode, calls in cases:
        mine = [r for r in rows if r["mode"] == mode and r["calls"] == calls]
        keys = sorted({k for r in mine for k, v in r.items() if isinstance(v, int | float)})
        med = {k: _median(mine, k) for k in keys if k not in ("repeat", "calls")}
        med["lost_max"] = max(r.get("lost", 0) for r in mine)
        summary.append({"mode": mode, "calls": calls, "runs": len(mine), "median": med})
    if args.json:
        print(json.dumps({"machine": info, "runs": rows, "summary": summary}, indent=1))
        return
    print()
    print(json.dumps(info))
    print(_table(summary))


def _line(r: dict[str, Any]) -> str:
    cpu = f"relay cpu {r['relay_cpu_pct']:5.1f}% steal {r['steal_pct']:.1f}%"
    if r["mode"] == "blast":
        return (
            f"blast    {r['calls']:4d} calls: sent {r['sent_pps']:9.0f}/s  relay in "
            f"{r['relay_in_pps']:9.0f}/s out {r['relay_out_pps']:9.0f}/s  {cpu}  "
            f"rcvbuf drops {r['udp_rcvbuf_errors']}"
        )
    return (
        f"{r['mode']:8s} {r['calls']:4d} calls: offered {r['offered_pps']:6d}/s delivered "
        f"{r['delivered_pps']:8.0f}/s lost {r['lost']:6d}  jitter p50/p99/p99.9 "
        f"{r['jitter_p50_us']:6.1f}/{r['jitter_p99_us']:7.1f}/{r['jitter_p999_us']:7.1f} us  "
        f"transit p50/p99 {r['transit_p50_us']:6.1f}/{r['transit_p99_us']:7.1f} us  {cpu}  "
        f"gen late p99 {r['gen_late_p99_us']:7.1f} us"
    )


def _table(summary: list[dict[str, Any]]) -> str:
    out = [
        "| mode | calls | offered pkt/s | delivered pkt/s | lost (worst run) | added jitter "
        "p50 / p99 / p99.9 µs | transit p50 / p99 µs | relay CPU % (one core) "
        "| generator late p99 µs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summary:
        m = s["median"]
        if s["mode"] == "blast":
            out.append(
                f"| blast | {s['calls']} | {m['sent_pps']:,.0f} (sent) | "
                f"{m['relay_out_pps']:,.0f} (forwarded) | {m['unread_pps']:,.0f}/s not read by "
                f"the relay (kernel drops) | - | - | {m['relay_cpu_pct']:.0f} | - |"
            )
            continue
        out.append(
            f"| {s['mode']} | {s['calls']} | {m['offered_pps']:,.0f} | {m['delivered_pps']:,.0f} "
            f"| {m['lost_max']:.0f} | {m['jitter_p50_us']:.1f} / {m['jitter_p99_us']:.1f} / "
            f"{m['jitter_p999_us']:.1f} | {m['transit_p50_us']:.1f} / {m['transit_p99_us']:.1f} "
            f"| {m['relay_cpu_pct']:.0f} | {m['gen_late_p99_us']:.0f} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()
