"""Transfer trigger to the 988 INVITE on the wire: API, REFER and DTMF, p50/p90/p99 (issue 5).

A real ``handoffd`` (``.venv/bin/handoffd --config FILE``, a subprocess pinned to CPU 0) with a
config like ``tests/e2e/harness.py`` writes (trunk ``psap-a`` allowing 127.0.0.0/8 with transfer
number 988, position ``disp-1`` = number 2001, probing off, bearer token) and a copy of the
repo's ``routing_rules/`` whose destination URIs all point at the bench's 988 socket. This
process (pinned to CPU 1, with the redis-server that takes handoffd's records) plays every other
party with raw UDP sockets on 127.0.0.1 and SIP written as text:

    caller (PSAP trunk)  --INVITE sip:2001-->  handoffd  --INVITE-->  dispatcher (disp-1)
                                                   |
                                                   +--INVITE-->  988 (answers 486 Busy Here)

One call at a time, triggers interleaved call by call (api, refer, dtmf, api, ...):

1. the caller's INVITE (the metadata of ``sipp_scenarios/uac-911-caller.xml``: PAI, Call-Info
   emergency ids, Geolocation + a multipart SDP/PIDF-LO body, User-to-User, X-Incident-Priority);
   the dispatcher rings (180) and answers (200, SDP with PCMU and telephone-event); ACKs both
   ways; ``GET /v1/calls`` finds handoffd's call id; a settle pause (``--settle``, 30 ms).
2. the trigger, timed from t0 = ``perf_counter_ns()`` right before the bytes leave to t1 = right
   after ``recvfrom`` returns the 988 INVITE on the 988 socket (same process, same clock):
   - ``api``: ``POST /v1/calls/{id}/transfers`` ``{"mode":"warm"}`` with the bearer token over a
     kept-alive HTTP/1.1 connection (one ``sendall``, TCP_NODELAY). **Includes aiohttp's HTTP
     parsing, its middlewares (access log, errors, auth) and the JSON validation.**
   - ``refer``: an in-dialog REFER from the dispatcher's dialog, ``Refer-To: <sip:988@handoffd>``
     (a blind transfer, as a desk phone's transfer button sends). handoffd answers 202 before it
     dials 988 (inside the measured time) and sends NOTIFY (100 Trying) after the INVITE.
   - ``dtmf``: RFC 4733 telephone-events from the dispatcher's media port (the port of its SDP
     answer) to handoffd's media address for the dispatcher leg: ``*`` (a start packet, three end
     packets), then ``8`` (a start packet), the settle pause, then t0 and the first ``8`` end packet
     (handoffd acts on the first end packet); the two end copies follow after t1.
3. 988 answers every INVITE with 486 Busy Here at once, so the transfer fails quickly through
   the chain (failover INVITEs to the same socket get 486 too) and the caller stays with the
   dispatcher; the bench polls ``GET /v1/transfers/{id}`` until the transfer is over and checks it
   has the expected ``trigger`` and ended ``failed`` (for REFER it also waits for the final
   NOTIFY). Then the caller hangs up (BYE/200), handoffd ends the dispatcher leg (BYE/200), the
   bench waits until ``GET /v1/calls`` is empty and pauses ``--gap`` ms before the next call.

Peer (the floor), in the same run: a UDP echo process pinned to CPU 0 (where handoffd runs);
right before every trigger (after the settle pause) the bench sends it 1 KB datagrams and times
send -> echo -> recv the same way (``--echo`` samples per call). That is the same path as a
trigger (send from CPU 1, a process on CPU 0 wakes, reads, sends, this process wakes), minus the
work handoffd does, so ``trigger / echo`` says how much of the time is handoffd. A same-thread
send+recv of 1 KB between two sockets (no wake-up of another process) is reported as the bare
syscall cost.

The machine is shared (other people's test suites run on both CPUs), so the bench also reads,
right before t0 and right after t1, how long handoffd's threads were runnable but waiting for a
CPU (/proc/<pid>/task/*/schedstat) and reports the latency with that wait taken out, next to the
raw figures; and CPU 0's steal time (/proc/stat) over each run.

The first ``--warmup`` calls per trigger are not counted. ``--runs`` (default 3) fresh handoffd
processes; the report gives each run and the median across runs of each statistic.
``--max-seconds`` bounds the whole thing (the calls stop, the report covers what ran).

``--trace`` runs handoffd with timers around the functions in ``TRACED`` (same process layout,
~1 µs added per timed call) and prints, per trigger, the median µs of each from the trigger's
first traced entry to the 988 INVITE's sendto. ``--py-spy BIN`` attaches ``py-spy record
--nonblocking --rate 2000 --format raw`` to handoffd (on the bench's CPU) for the measured calls
of the first run (``--profile-out``, collapsed stacks). Both perturb the timings: use them for
where the time goes, not for the latency figures.

``--code LABEL=DIR`` (repeatable) runs handoffd from that source tree (first on its PYTHONPATH);
with two or more, the trees alternate run by run (the order flipping each run) and a last table
puts them side by side: the way to compare code before and after a change on this noisy box.

The parties (SIP as text, the HTTP client, :class:`Bench`) are in ``trigger_parties.py``, the
``--trace`` / ``--py-spy`` machinery in ``trigger_trace.py``.

Run:  .venv/bin/python bench/trigger_latency.py [--calls 200] [--runs 3] [--json FILE]
      .venv/bin/python bench/trigger_latency.py --runs 1 --calls 100 --trace
      .venv/bin/python bench/trigger_latency.py --runs 1 --calls 100 --py-spy /tmp/spy/bin/py-spy
      .venv/bin/python bench/trigger_latency.py --runs 6 --code old=/tmp/snapold --code new=.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.cps_procs import pin, stop, yardstick_us
from bench.trigger_parties import (
    HOST,
    TOKEN,
    TRIGGERS,
    WAIT_S,
    Bench,
    BenchError,
    Party,
)
from bench.trigger_trace import pct, spy_summary, trace_breakdown, trace_report
from tests.peers.redis import RedisServer
from tests.peers.sipp import free_port

ROOT = Path(__file__).resolve().parent.parent
DAEMON_CPU, BENCH_CPU = 0, 1
TARGET_P99_US = 2000.0
READY_TIMEOUT_S = 15.0


# ---------------------------------------------------------------------------- processes


def cpu_ticks(cpu: int) -> tuple[int, int]:
    """(steal, total) clock ticks of one CPU so far, from /proc/stat (steal: time the
    hypervisor ran something else while this virtual CPU wanted to run)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                f = [int(x) for x in line.split()[1:9]]
                return f[7], sum(f)
    return 0, 0


def sched_ns(pid: int) -> tuple[int, int, int, int]:
    """For the threads of ``pid``: ns on a CPU, ns runnable but waiting for a CPU (the first two
    fields of /proc/<pid>/task/<tid>/schedstat; the kernel adds to them when a thread leaves or
    gets the CPU), and the voluntary and involuntary context switches."""
    run = wait = vol = invol = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                f = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
                run += int(f[0])
                wait += int(f[1])
                for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
    return run, wait, vol, invol


def write_config(run_dir: Path, sip: int, http: int, disp: int, dest: int, redis: str) -> Path:
    rules = run_dir / "rules"
    shutil.copytree(ROOT / "routing_rules", rules)
    for f in rules.glob("*.yaml"):  # every destination -> the bench's 988 socket
        text = re.sub(r"(uri:\s*sips?:[^@\s]+@)[^\s;]+", rf"\g<1>{HOST}:{dest}", f.read_text())
        f.write_text(text)
    media = random.randrange(20000, 28000) & ~1
    config = run_dir / "handoffd.yaml"
    config.write_text(
        f"""sip:
  listen: ["udp:{HOST}:{sip}"]
http:
  host: {HOST}
  port: {http}
  tokens: ["{TOKEN}"]
media:
  host: {HOST}
  port_min: {media}
  port_max: {media + 999}
trunks:
  psap-a:
    allow: [127.0.0.0/8]
    psap_id: psap-a
    transfer_numbers: ["988"]
positions:
  disp-1:
    uri: sip:disp1@{HOST}:{disp}
    numbers: ["2001"]
rules: rules
probe:
  interval: 0
redis:
  url: {redis}
records:
  spool:
    dir: spool
"""
    )
    return config


def start_handoffd(
    config: Path, log: Path, trace: tuple[Path, int] | None, code: str | None = None
) -> subprocess.Popen[bytes]:
    """``code``: a source tree put first on handoffd's PYTHONPATH (``--code``)."""
    cmd = [str(ROOT / ".venv" / "bin" / "handoffd"), "--config", str(config)]
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, env.get("PYTHONPATH")]))
    if trace is not None:  # the same, with timers around the functions in TRACED
        script = Path(__file__).with_name("trigger_trace.py")
        cmd = [sys.executable, str(script), str(config), str(trace[0]), str(trace[1])]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=config.parent,
            start_new_session=True,
            env=env,
        )
    pin(proc.pid, DAEMON_CPU)
    return proc


def wait_ready(proc: subprocess.Popen[bytes], http: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"handoffd exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, http), 0.2) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if b" 200 " in s.recv(4096):
                return
        time.sleep(0.05)
    stop(proc)
    sys.exit(f"handoffd not ready in {READY_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")


ECHO = """import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    d, a = s.recvfrom(65535)
    if d == b"stop":
        break
    s.sendto(d, a)
"""


class Echo:
    """The floor: a UDP echo process on handoffd's CPU, timed like a trigger."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ECHO], stdout=subprocess.PIPE, start_new_session=True
        )
        pin(self.proc.pid, DAEMON_CPU)
        assert self.proc.stdout is not None
        self.addr = (HOST, int(self.proc.stdout.readline()))
        self.party = Party("echo-client", None)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.party.sock, selectors.EVENT_READ)
        self.payload = bytes(random.getrandbits(8) for _ in range(1024))

    def sample(self) -> int:
        sock = self.party.sock
        t0 = time.perf_counter_ns()
        sock.sendto(self.payload, self.addr)
        if not self.sel.select(WAIT_S):
            raise BenchError("echo: no reply")
        sock.recvfrom(65535)
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        self.party.sock.sendto(b"stop", self.addr)
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            stop(self.proc)
        self.party.close()


def same_thread_floor(n: int) -> list[int]:
    """send + recv of 1 KB between two sockets of this thread (no other process wakes)."""
    a, b = Party("a", None), Party("b", None)
    sel = selectors.DefaultSelector()
    sel.register(b.sock, selectors.EVENT_READ)
    payload, out = bytes(1024), []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        a.sock.sendto(payload, (HOST, b.port))
        sel.select(1.0)
        b.sock.recvfrom(65535)
        out.append(time.perf_counter_ns() - t0)
    a.close()
    b.close()
    return out


# ---------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    code: str  # the --code label ("" without --code)
    samples: dict[str, list[int]]  # ns, per trigger
    echo: list[int]
    failures: list[str]
    stray: dict[str, int]
    seconds: float
    daemon_log_errors: int
    trace: dict[str, dict[str, Any]] | None = None
    marks: list[tuple[int, int]] = field(default_factory=list)  # (t0, t1) of measured calls
    steal_pct: float = 0.0  # CPU 0's steal time over the run, % of its time
    #: per trigger, ns handoffd waited for CPU 0 (run queue) between t0 and t1, per call
    waits: dict[str, list[int]] = field(default_factory=lambda: {t: [] for t in TRIGGERS})
    #: per trigger and call, the change of sched_ns(handoffd) from before t0 to after t1
    sched: dict[str, list[list[int]]] = field(default_factory=lambda: {t: [] for t in TRIGGERS})


def run_once(
    args: argparse.Namespace,
    base: Path,
    redis_url: str,
    deadline: float,
    code: tuple[str, str | None] = ("", None),
) -> RunResult:
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    sip, http = free_port(), free_port(socket.SOCK_STREAM)
    dest, disp = Party("988", None), Party("dispatcher", None)
    config = write_config(run_dir, sip, http, disp.port, dest.port, redis_url)
    log = run_dir / "handoffd.log"
    trace = (run_dir / "trace.json", dest.port) if args.trace else None
    proc = start_handoffd(config, log, trace, code[1])
    echo = Echo()
    spy: subprocess.Popen[bytes] | None = None
    res = RunResult(code[0], {t: [] for t in TRIGGERS}, [], [], {}, 0.0, 0)
    started = time.monotonic()
    steal0 = cpu_ticks(DAEMON_CPU)
    try:
        wait_ready(proc, http, log)
        bench = Bench(sip, http, disp, dest)
        total = args.warmup + args.calls
        for i in range(total * len(TRIGGERS)):
            if time.monotonic() > deadline:
                res.failures.append(f"stopped at call {i}: --max-seconds reached")
                break
            trigger = TRIGGERS[i % len(TRIGGERS)]
            if i == args.warmup * len(TRIGGERS) and args.py_spy:
                spy = subprocess.Popen(
                    [
                        *(args.py_spy, "record", "--pid", str(proc.pid), "--rate", "2000"),
                        *("--nonblocking", "--format", "raw", "-o", str(args.profile_out)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                pin(spy.pid, BENCH_CPU)
                time.sleep(1.0)
            try:
                c = bench.setup(trigger)
                send = bench.prepare(c)
                time.sleep(args.settle / 1000)
                for _ in range(args.echo):  # the floor, under the trigger's conditions
                    res.echo.append(echo.sample())
                before = sched_ns(proc.pid)
                t0, t1 = bench.fire(c, send)
                after = sched_ns(proc.pid)
                if i >= args.warmup * len(TRIGGERS):
                    res.samples[trigger].append(t1 - t0)
                    res.waits[trigger].append(after[1] - before[1])
                    res.sched[trigger].append([a - b for a, b in zip(after, before, strict=True)])
                    res.marks.append((t0, t1))
                bench.finish(c)
            except (BenchError, OSError, KeyError, ValueError) as err:
                res.failures.append(f"call {i} ({trigger}): {err}")
                with contextlib.suppress(BenchError, OSError, KeyError, ValueError):
                    bench.hangup(bench.c)
                if len(res.failures) > 10:
                    res.failures.append("too many failures: run abandoned")
                    break
            bench.pump(args.gap / 1000)
            if (i + 1) % 60 == 0:
                print(f"  {i + 1}/{total * len(TRIGGERS)} calls", file=sys.stderr)
        res.stray = dict(bench.stray)
        bench.close()
    finally:
        if spy is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(spy.pid, signal.SIGINT)
            try:
                spy.wait(20)
            except subprocess.TimeoutExpired:
                stop(spy)
        echo.close()
        stop(proc)
        dest.close()
        disp.close()
        res.seconds = time.monotonic() - started
        steal1 = cpu_ticks(DAEMON_CPU)
        res.steal_pct = 100 * (steal1[0] - steal0[0]) / max(steal1[1] - steal0[1], 1)
    text = log.read_text(errors="replace")
    res.daemon_log_errors = text.count('"level": "error"') + text.count('"level": "critical"')
    if trace is not None and trace[0].exists():
        res.trace = trace_breakdown(trace[0], res.marks)
    if not args.keep_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------- report


def stats_us(ns: list[int]) -> dict[str, float]:
    us = [x / 1000 for x in ns]
    return {
        "n": len(us),
        "p50": pct(us, 50),
        "p90": pct(us, 90),
        "p99": pct(us, 99),
        "max": max(us) if us else float("nan"),
    }


def machine() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "telephony"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    yard = yardstick_us()
    return {
        "yardstick": f"{yard:.1f} µs",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": platform.release(),
        "git": (rev or "?") + (" + uncommitted changes in telephony/" if dirty else ""),
    }


def fmt(x: float) -> str:
    return "-" if x != x else f"{x:,.0f}"


def report(
    runs: list[RunResult],
    mach: dict[str, str],
    load: tuple[str, str],
    args: argparse.Namespace,
    title: str = "",
) -> str:
    floor = stats_us(same_thread_floor(2000))
    out = [f"## Transfer trigger to 988 INVITE (issue 5 part){title}", ""]
    out += [
        "| | |",
        "| --- | --- |",
        f"| date | {mach['date']} |",
        f'| machine | `nproc` {mach["nproc"]}, `lscpu` model "{mach["cpu"]}", '
        f"kernel {mach['kernel']}, {mach['python']} |",
        f"| yardstick | `sum(range(1000))` = {mach['yardstick']} (best of 5, this process) |",
        f"| loadavg | before {load[0]}, after {load[1]} (shared machine) |",
        f"| code | {mach['git']} |",
        f"| records | {'redis-server (pinned with the bench)' if not args.no_redis else 'spool'} |",
        "| pinning | handoffd + echo peer on CPU 0, bench (+ redis-server) on CPU 1 |",
        "",
        "```sh",
        "cd /work/main && "
        + " ".join([".venv/bin/python", "bench/trigger_latency.py", *sys.argv[1:]]),
        "```",
        "",
        f"{len(runs)} runs, each a fresh handoffd; {args.calls} measured calls per trigger and run "
        f"(after {args.warmup} warm-up calls each), triggers interleaved call by call, one call "
        f"at a time; settle {args.settle} ms before each trigger; 988 answers 486 (the transfer "
        "fails back to the dispatcher), then caller BYE. Times in µs, t0 = just before the "
        "trigger's bytes are sent, t1 = the 988 INVITE read off the 988 socket.",
        "",
        "| run | trigger | N | p50 | p90 | p99 | max | echo p50 / p99 | p50 / echo p50 | "
        "p99 / echo p99 | CPU 0 steal |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    per: dict[str, list[dict[str, float]]] = {t: [] for t in TRIGGERS}
    echoes = [stats_us(r.echo) for r in runs]
    for i, r in enumerate(runs, 1):
        e = echoes[i - 1]
        for t in TRIGGERS:
            s = stats_us(r.samples[t])
            per[t].append(s)
            out.append(
                f"| {i} | {t} | {s['n']} | {fmt(s['p50'])} | {fmt(s['p90'])} | {fmt(s['p99'])} "
                f"| {fmt(s['max'])} | {fmt(e['p50'])} / {fmt(e['p99'])} "
                f"| {s['p50'] / e['p50']:.1f}x | {s['p99'] / e['p99']:.1f}x "
                f"| {r.steal_pct:.1f} % |"
            )

    def med(xs: list[float]) -> float:
        return statistics.median(xs) if xs else float("nan")

    e50, e99 = med([e["p50"] for e in echoes]), med([e["p99"] for e in echoes])
    out += [
        "",
        f"**Median across the {len(runs)} runs** (each statistic separately; echo peer p50 "
        f"{fmt(e50)} µs, p99 {fmt(e99)} µs; same-thread 1 KB send+recv p50 "
        f"{floor['p50']:.1f} µs):",
        "",
        "| trigger | N per run | p50 | p90 | p99 | max | p50 / echo | p99 / echo | p99 < 2 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    verdict = {}
    for t in TRIGGERS:
        m = {k: med([s[k] for s in per[t]]) for k in ("n", "p50", "p90", "p99", "max")}
        verdict[t] = m["p99"] < TARGET_P99_US
        out.append(
            f"| {t} | {m['n']:.0f} | {fmt(m['p50'])} | {fmt(m['p90'])} | {fmt(m['p99'])} "
            f"| {fmt(m['max'])} | {m['p50'] / e50:.1f}x | {m['p99'] / e99:.1f}x "
            f"| {'met' if verdict[t] else '**missed**'} |"
        )
    out += [
        "",
        "handoffd's run-queue wait between t0 and t1 (its threads runnable but CPU 0 busy with"
        " something else, from /proc/<pid>/task/*/schedstat read right before t0 and right after"
        " t1), and the latency with that wait taken out (median across runs):",
        "",
        "| trigger | wait p50 | wait p99 | calls that waited > 100 µs | p50 without wait | "
        "p90 without wait | p99 without wait | p99 without wait < 2 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in TRIGGERS:
        rows = []
        for r in runs:
            lat, wait = r.samples[t], r.waits[t]
            net = [a - b for a, b in zip(lat, wait, strict=True)]
            w, n = stats_us(wait), stats_us(net)
            share = 100 * sum(x > 100_000 for x in wait) / max(len(wait), 1)
            rows.append((w["p50"], w["p99"], share, n["p50"], n["p90"], n["p99"]))
        mw = [med([row[k] for row in rows]) for k in range(6)]
        out.append(
            f"| {t} | {fmt(mw[0])} | {fmt(mw[1])} | {mw[2]:.0f} % | {fmt(mw[3])} | {fmt(mw[4])} "
            f"| {fmt(mw[5])} | {'met' if mw[5] < TARGET_P99_US else '**missed**'} |"
        )
    fails = [f for r in runs for f in r.failures]
    out += [
        "",
        f"Failed calls: {len(fails)}"
        + (f" ({'; '.join(fails[:5])})" if fails else "")
        + f"; handoffd log errors: {sum(r.daemon_log_errors for r in runs)}; "
        f"run time {sum(r.seconds for r in runs):.0f} s.",
    ]
    strays = Counter[str]()
    for r in runs:
        strays.update(r.stray)
    if strays:
        out.append(f"Stray messages: {dict(strays)}.")
    if runs and runs[0].trace is not None:
        out.append(trace_report(runs[0].trace))
    if args.profile_used and args.profile_out.exists():
        out.append(spy_summary(args.profile_out))
    return "\n".join(out)


def compare(runs: list[RunResult], labels: list[str]) -> str:
    """Per trigger and tree: the median across that tree's runs of p50 / p90 / p99 (raw, and
    without handoffd's run-queue wait), and the ratio to the first tree's."""
    out = [
        "## Trigger to 988 INVITE: the trees side by side (runs alternated)",
        "",
        "Median across each tree's runs, µs; \"net\" = without handoffd's run-queue wait.",
        "",
        "| trigger | code | runs | p50 | p90 | p99 | net p50 | net p99 | p50 vs first | "
        "p99 vs first | net p99 < 2 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in TRIGGERS:
        first: dict[str, float] = {}
        for label in labels:
            mine = [r for r in runs if r.code == label]
            raw = [stats_us(r.samples[t]) for r in mine]
            net = [
                stats_us([a - b for a, b in zip(r.samples[t], r.waits[t], strict=True)])
                for r in mine
            ]

            def med(rows: list[dict[str, float]], key: str) -> float:
                xs = [row[key] for row in rows if row["n"]]
                return statistics.median(xs) if xs else float("nan")

            m = {
                "p50": med(raw, "p50"),
                "p90": med(raw, "p90"),
                "p99": med(raw, "p99"),
                "net50": med(net, "p50"),
                "net99": med(net, "p99"),
            }
            first = first or m
            out.append(
                f"| {t} | {label} | {len(mine)} | {fmt(m['p50'])} | {fmt(m['p90'])} "
                f"| {fmt(m['p99'])} | {fmt(m['net50'])} | {fmt(m['net99'])} "
                f"| {m['p50'] / first['p50']:.2f} | {m['p99'] / first['p99']:.2f} "
                f"| {'met' if m['net99'] < TARGET_P99_US else '**missed**'} |"
            )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--calls", type=int, default=200, help="measured calls per trigger and run")
    ap.add_argument("--warmup", type=int, default=5, help="unmeasured calls per trigger first")
    ap.add_argument("--runs", type=int, default=3, help="fresh handoffd processes")
    ap.add_argument("--settle", type=float, default=30.0, help="ms between answer and trigger")
    ap.add_argument("--gap", type=float, default=20.0, help="ms between calls")
    ap.add_argument("--echo", type=int, default=5, help="echo samples before each trigger")
    ap.add_argument("--max-seconds", type=float, default=270.0, help="stop calls after this")
    ap.add_argument("--no-redis", action="store_true", help="no redis-server: records spool")
    ap.add_argument("--json", type=Path, help="write raw samples (ns) here")
    ap.add_argument("--keep-dir", action="store_true", help="keep run directories and logs")
    ap.add_argument("--trace", action="store_true", help="time handoffd's functions (see TRACED)")
    ap.add_argument("--py-spy", help="py-spy binary: profile handoffd during the measured calls")
    ap.add_argument("--profile-out", type=Path, default=Path("trigger-profile.txt"))
    ap.add_argument(
        "--code",
        action="append",
        metavar="LABEL=DIR",
        help="run handoffd from the source tree DIR (PYTHONPATH); repeat to compare trees, "
        "alternating run by run (e.g. --code old=/tmp/snapold --code new=.)",
    )
    args = ap.parse_args()
    args.profile_used = False
    codes: list[tuple[str, str | None]] = [("", None)]
    if args.code:
        codes = []
        for spec in args.code:
            label, eq, path = spec.partition("=")
            if not eq or not label or not (Path(path) / "telephony").is_dir():
                sys.exit(f"trigger_latency: --code wants LABEL=DIR with DIR/telephony ({spec!r})")
            codes.append((label, str(Path(path).resolve())))

    pin(0, BENCH_CPU)
    mach = machine()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    deadline = time.monotonic() + args.max_seconds
    base = Path(tempfile.mkdtemp(prefix="trigger-bench-"))
    redis: RedisServer | None = None
    runs: list[RunResult] = []
    try:
        if args.no_redis:
            redis_url = f"redis://{HOST}:{free_port(socket.SOCK_STREAM)}/0"
        else:
            redis = RedisServer(base / "redis")
            redis.start()
            assert redis.proc is not None
            pin(redis.proc.pid, BENCH_CPU)
            redis_url = redis.url
        for i in range(args.runs):
            # trees alternate run by run, the order flipping each time (neither always first)
            for code in codes if i % 2 == 0 else codes[::-1]:
                print(f"run {i + 1}/{args.runs} {code[0]}", file=sys.stderr)
                runs.append(run_once(args, base, redis_url, deadline, code))
                if args.py_spy:
                    args.py_spy = None  # profile the first run only
                    args.profile_used = True
            if time.monotonic() > deadline:
                break
    finally:
        if redis is not None:
            redis.stop()
        if not args.keep_dir:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}", file=sys.stderr)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if len(codes) == 1:
        print(report(runs, mach, (load_before, load_after), args))
    else:
        for label, _ in codes:
            mine = [r for r in runs if r.code == label]
            print(report(mine, mach, (load_before, load_after), args, f": code {label}"))
            print()
        print(compare(runs, [label for label, _ in codes]))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": mach,
                    "load": [load_before, load_after],
                    "runs": [
                        {
                            "code": r.code,
                            "samples_ns": r.samples,
                            "echo_ns": r.echo,
                            "marks_ns": r.marks,
                            "runq_wait_ns": r.waits,
                            "sched_delta": r.sched,
                            "failures": r.failures,
                            "trace": r.trace,
                        }
                        for r in runs
                    ],
                }
            )
        )
    return 0 if all(not r.failures for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
