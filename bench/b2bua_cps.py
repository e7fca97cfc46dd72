"""Calls per second through a B2BUA: SIPp uac -> B2BUA -> SIPp uas, handoffd vs sippy's b2bua.

For every rate (calls/s) and every peer, one run of ``--duration`` seconds on 127.0.0.1:

    SIPp uac --INVITE--> B2BUA under test --INVITE--> SIPp uas          (rate R, R*duration calls)
    SIPp uac --INVITE--> SIPp uas (direct)                               (same run, the baseline)

handoffd   ``.venv/bin/handoffd --config FILE`` with a config written here: one trunk allowing
           127.0.0.0/8, position ``disp-1`` whose URI is the SIPp uas, media anchored through its
           own relay (SDP rewritten on both legs, relay ports allocated per call), probing off.
           The uac calls ``sip:disp-1@127.0.0.1:PORT``. It records every call to a real
           redis-server (started once, pinned with SIPp to CPU 1), as in production;
           ``--no-redis`` leaves Redis out, so its records go to its spool.
sippy      sippy 2.5.0's full B2BUA (``python -m sippy.b2bua``, the ``b2bua`` console script):
           ``-f -u -A 0 -D -s 127.0.0.1:UAS`` = foreground, no RADIUS auth, no accounting, no
           digest auth, static route of every INVITE to the uas. With ``rtp.io`` importable
           (PyPI ``rtp-io``: rtpproxy embedded as a C extension) it also gets ``-r rtp.io:``, so
           its media is anchored like handoffd's; without it sippy only relays signalling (its
           SDP passes through untouched), which is less work than handoffd does. The label in the
           table says which ("sippy+rtp.io" or "sippy (no media)").

Scenarios: the repo's ``sipp_scenarios/uac-basic-call.xml`` and ``uas-basic-call.xml`` (INVITE
with SDP; 180, 200 with SDP; ACK; hold; BYE; 200), copied to the run directory with two changes:
(1) the Contact headers lose ``;transport=[transport]``: SIPp renders it ``transport=UDP`` and
sippy 2.5.0 compares the value case-sensitively with ``udp`` (``SipTransactionManager.
newTransaction`` raises "unsupported transport: UDP"), so it could never send the BYE on; UDP is
the default transport, so the headers mean the same; (2) the hold between ACK and BYE is
``--hold`` ms (default 200). Both peers and the direct pair run the same files.

What is measured per run:
- failed calls: uac and uas FailedCall + calls that did not complete on either side (the uas
  must see every call through its BYE). A rate is clean when that is 0.
- B2BUA CPU ms per call: utime+stime of the B2BUA process (all threads, and any child process)
  from /proc/<pid>/stat, sampled right before the uac starts and right after it exits, divided
  by the calls completed. The B2BUA's idle CPU over 1 s before the run is reported too.
- setup time: SIPp's response-time stat (``rtd`` on the uac's 200, i.e. INVITE sent -> 200
  received), every call, via ``-trace_rtt -rtt_freq 1``. SIPp's clock has 1 ms resolution, so
  p50/p99 are whole ms; the mean over thousands of calls resolves well below 1 ms. "added" is
  through-the-B2BUA minus the direct pair of the same run.
- SIPp CPU (the four SIPp processes, % of one core) to show SIPp was not the bottleneck.

The B2BUA is pinned to CPU 0 and the SIPp processes to CPU 1 (``--no-pin`` to leave them to the
scheduler). Each (rate, peer) run starts a fresh B2BUA; peers are interleaved per rate. A peer
that fails at a rate is not run at higher rates (``--keep-going`` to run them anyway).

Comparing code: ``--code LABEL=DIR`` (repeatable) runs handoffd from the source tree DIR (first
on its PYTHONPATH) as peer ``handoffd (LABEL)``; ``--repeats N`` runs each (rate, peer) N times,
the order flipping each round; a last table gives each tree's CPU ms/call and its ratio to the
first tree's. ``--cprofile DIR`` runs handoffd under cProfile (diagnosis only). The /proc and
SIPp helpers are in ``cps_procs.py``.

Run:  uv run --group bench python bench/b2bua_cps.py [--rates 50,100,200] [--duration 30]
                                                     [--peer both|handoffd|sippy] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.cps_procs import (
    CLK_TCK,
    HOST,
    ROOT,
    cpu_ticks,
    finish_sipp,
    free_tcp_port,
    free_udp_port,
    percentile,
    pin,
    runqueue_wait_ns,
    sip_ping,
    sipp_cmd,
    start_sipp,
    stat_int,
    stop,
    tail,
    wait_sampling,
    write_scenarios,
    yardstick_us,
)
from tests.peers.redis import RedisServer

PEER_CPU, SIPP_CPU = 0, 1
READY_TIMEOUT_S = 15.0


# ---------------------------------------------------------------------------- peers


@dataclass
class Peer:
    name: str  # unique per run: "handoffd", "handoffd@new", "sippy", ...
    label: str
    service: str  # the user part the uac calls
    media: bool  # media anchored (relay ports allocated, SDP rewritten)
    kind: str = "handoffd"  # handoffd, sippy or sippy-nomedia
    code: str | None = None  # handoffd: a source tree put first on its PYTHONPATH


def sippy_has_rtpio() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import rtp.io"], capture_output=True, check=False, timeout=30
    )
    return probe.returncode == 0


def start_handoffd(
    run_dir: Path,
    port: int,
    next_hop: int,
    cpu: int | None,
    redis_url: str | None,
    *,
    code: str | None = None,
    cprofile: Path | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """``redis_url``: where it records (None: to nowhere, so its records go to its spool).
    ``code``: run that source tree (PYTHONPATH) instead of the installed one. ``cprofile``: run
    under cProfile and write its stats there when it exits (diagnosis only: it slows it down)."""
    rules = run_dir / "rules"
    shutil.copytree(ROOT / "routing_rules", rules)
    media_base = random.randrange(20000, 28000) & ~1  # below Linux's ephemeral range
    config = run_dir / "handoffd.yaml"
    config.write_text(
        f"""sip:
  listen: ["udp:{HOST}:{port}"]
http:
  host: {HOST}
  port: {free_tcp_port()}
  tokens: ["bench-token"]
media:
  host: {HOST}
  port_min: {media_base}
  port_max: {media_base + 3999}
trunks:
  psap-a:
    allow: [127.0.0.0/8]
    psap_id: psap-a
    transfer_numbers: ["988"]
positions:
  disp-1:
    uri: sip:disp1@{HOST}:{next_hop}
    numbers: ["2001"]
rules: rules
probe:
  interval: 0
redis:
  url: {redis_url or "redis://127.0.0.1:1/0"}
records:
  spool:
    dir: spool
"""
    )
    exe = ROOT / ".venv" / "bin" / "handoffd"
    cmd = [str(exe) if exe.exists() else "handoffd", "--config", str(config)]
    if cprofile is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(cprofile), *cmd]
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, env.get("PYTHONPATH")]))
    log = run_dir / "peer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=run_dir,
            start_new_session=True,
            env=env,
        )
    pin(proc.pid, cpu)
    return proc, log


def start_sippy(
    run_dir: Path, port: int, next_hop: int, cpu: int | None, rtpio: bool
) -> tuple[subprocess.Popen[bytes], Path]:
    cmd = [sys.executable, "-m", "sippy.b2bua", "-f", "-u", "-A", "0", "-D"]
    cmd += ["-l", HOST, "-p", str(port), "-s", f"{HOST}:{next_hop}"]
    cmd += ["-c", str(run_dir / "b2bua.sock"), "-P", str(run_dir / "b2bua.pid")]
    cmd += ["-L", str(run_dir / "b2bua.log")]
    if rtpio:
        cmd += ["-r", "rtp.io:"]
    env = dict(os.environ, SIPLOG_BEND="none", SIPLOG_LVL="ERR")
    log = run_dir / "peer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=run_dir,
            env=env,
            start_new_session=True,
        )
    pin(proc.pid, cpu)
    return proc, log


# ---------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    peer: str
    label: str
    rate: int
    calls: int
    completed: int = 0
    failed: int = 0
    retrans: int = 0
    achieved_cps: float = 0.0
    cpu_ms_per_call: float = float("nan")
    sys_ms_per_call: float = float("nan")  # of which in the kernel (system calls)
    peer_cpu_pct: float = float("nan")
    idle_cpu_pct: float = float("nan")
    setup_p50: float = float("nan")
    setup_p99: float = float("nan")
    setup_mean: float = float("nan")
    direct_p50: float = float("nan")
    direct_p99: float = float("nan")
    direct_mean: float = float("nan")
    sipp_cpu_pct: float = float("nan")
    runq_wait_ms: float = float("nan")
    worst_second_ms: float = float("nan")
    clean: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def added_p50(self) -> float:
        return self.setup_p50 - self.direct_p50

    @property
    def added_p99(self) -> float:
        return self.setup_p99 - self.direct_p99

    @property
    def added_mean(self) -> float:
        return self.setup_mean - self.direct_mean


def run_one(
    peer: Peer, rate: int, args: argparse.Namespace, base: Path, round_no: int = 0
) -> RunResult:
    run_dir = base / f"{peer.name.replace('@', '_')}-{rate}-{round_no}"
    run_dir.mkdir()
    uac_xml, uas_xml = write_scenarios(run_dir, args.hold)
    calls = rate * args.duration
    res = RunResult(peer=peer.name, label=peer.label, rate=rate, calls=calls)
    direct_rate = rate if args.direct_rate <= 0 else min(rate, args.direct_rate)
    direct_calls = direct_rate * args.duration
    cpu_peer = None if args.no_pin else PEER_CPU
    cpu_sipp = None if args.no_pin else SIPP_CPU
    uac_timeout = args.duration * 3 + 30
    common = ["-recv_timeout", "10000", "-max_recv_loops", "10000"]
    wait = ["-timeout", f"{uac_timeout + 15}s"]
    rtt = ["-timeout", f"{uac_timeout}s", "-trace_rtt", "-rtt_freq", "1"]

    p_port, uas_port, uac_port = free_udp_port(), free_udp_port(), free_udp_port()
    d_uas_port, d_uac_port = free_udp_port(), free_udp_port()
    uas = start_sipp(
        sipp_cmd(uas_xml, uas_port, run_dir / "uas.stat", [*common, "-m", str(calls), *wait]),
        run_dir,
        cpu_sipp,
    )
    d_uas = start_sipp(
        sipp_cmd(
            uas_xml, d_uas_port, run_dir / "d_uas.stat", [*common, "-m", str(direct_calls), *wait]
        ),
        run_dir,
        cpu_sipp,
    )
    if peer.kind == "handoffd":
        prof = None
        if args.cprofile is not None:
            prof = Path(args.cprofile) / f"{run_dir.name}.prof"
        proc, log = start_handoffd(
            run_dir, p_port, uas_port, cpu_peer, args.redis_url, code=peer.code, cprofile=prof
        )
    else:
        proc, log = start_sippy(run_dir, p_port, uas_port, cpu_peer, peer.media)
    sipps = [uas, d_uas]
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not sip_ping(p_port, 0.3):
            if proc.poll() is not None or time.monotonic() > deadline:
                res.failed = calls
                res.notes.append(
                    f"{peer.name} did not answer OPTIONS on {HOST}:{p_port} "
                    f"(exit code {proc.poll()}); its output:\n{tail(log, 30)}"
                )
                return res
        t0, c0 = time.monotonic(), cpu_ticks(proc.pid)
        time.sleep(1.0)
        t1, c1 = time.monotonic(), cpu_ticks(proc.pid)
        res.idle_cpu_pct = 100.0 * (c1 - c0) / CLK_TCK / (t1 - t0)

        limit = str(max(100, rate * 20))
        d_limit = str(max(100, direct_rate * 20))
        uac_extra = ["-s", peer.service, "-r", str(rate), "-m", str(calls), "-l", limit]
        d_uac_extra = ["-s", "disp-1", "-r", str(direct_rate), "-m", str(direct_calls)]
        uac_cmd = sipp_cmd(
            uac_xml, uac_port, run_dir / "uac.stat", [*common, *rtt, *uac_extra, f"{HOST}:{p_port}"]
        )
        d_uac_cmd = sipp_cmd(
            uac_xml,
            d_uac_port,
            run_dir / "d_uac.stat",
            [*common, *rtt, *d_uac_extra, "-l", d_limit, f"{HOST}:{d_uas_port}"],
        )
        q_start = runqueue_wait_ns(proc.pid)
        c_start, t_start = cpu_ticks(proc.pid), time.monotonic()
        k_start = cpu_ticks(proc.pid, kernel_only=True)
        uac = start_sipp(uac_cmd, run_dir, cpu_sipp)
        d_uac = start_sipp(d_uac_cmd, run_dir, cpu_sipp)
        sipps += [uac, d_uac]
        seen = wait_sampling(uac, uac_timeout + 5, sipps)
        c_end, t_end = cpu_ticks(proc.pid), time.monotonic()
        k_end = cpu_ticks(proc.pid, kernel_only=True)
        res.runq_wait_ms = (runqueue_wait_ns(proc.pid) - q_start) / 1e6
        r_uac = finish_sipp(uac, run_dir, uac_xml, run_dir / "uac.stat", 5, seen)
        r_duac = finish_sipp(d_uac, run_dir, uac_xml, run_dir / "d_uac.stat", 30, seen)
        r_uas = finish_sipp(uas, run_dir, uas_xml, run_dir / "uas.stat", 15, seen)
        r_duas = finish_sipp(d_uas, run_dir, uas_xml, run_dir / "d_uas.stat", 15, seen)
        peer_alive = proc.poll() is None
    finally:
        stop(proc, 60.0 if args.cprofile else 5.0)  # cProfile writes its stats on the way out
        for p in sipps:
            stop(p, 2)

    ok_uac = stat_int(r_uac, "SuccessfulCall(C)")
    ok_uas = stat_int(r_uas, "SuccessfulCall(C)")
    res.completed = min(ok_uac, ok_uas)
    res.failed = max(
        calls - res.completed,
        stat_int(r_uac, "FailedCall(C)") + stat_int(r_uas, "FailedCall(C)"),
    )
    res.retrans = stat_int(r_uac, "Retransmissions(C)") + stat_int(r_uas, "Retransmissions(C)")
    if len(r_uac.rtt_at_ms) > 1:
        span = (r_uac.rtt_at_ms[-1] - r_uac.rtt_at_ms[0]) / 1000.0
        res.achieved_cps = (len(r_uac.rtt_at_ms) - 1) / span if span > 0 else float("nan")
    wall = t_end - t_start
    used_s = (c_end - c_start) / CLK_TCK
    res.peer_cpu_pct = 100.0 * used_s / wall
    if res.completed:
        res.cpu_ms_per_call = 1000.0 * used_s / res.completed
        res.sys_ms_per_call = 1000.0 * (k_end - k_start) / CLK_TCK / res.completed
    if r_uac.rtt_ms:
        res.setup_p50 = percentile(r_uac.rtt_ms, 50)
        res.setup_p99 = percentile(r_uac.rtt_ms, 99)
        res.setup_mean = statistics.fmean(r_uac.rtt_ms)
    if r_uac.rtt_ms:
        by_second: dict[int, float] = {}
        for at, rt in zip(r_uac.rtt_at_ms, r_uac.rtt_ms, strict=True):
            by_second[int(at // 1000)] = max(by_second.get(int(at // 1000), 0.0), rt)
        res.worst_second_ms = max(by_second.values())
        slow = sorted(sec for sec, worst in by_second.items() if worst >= 100)
        if slow:
            res.notes.append(
                f"setup >= 100 ms in {len(slow)} of {len(by_second)} seconds of the run "
                f"(seconds {', '.join(map(str, slow[:12]))}{' ...' if len(slow) > 12 else ''}); "
                f"peer waited {res.runq_wait_ms:.0f} ms for its CPU (run queue) during the run"
            )
    if r_duac.rtt_ms:
        res.direct_p50 = percentile(r_duac.rtt_ms, 50)
        res.direct_p99 = percentile(r_duac.rtt_ms, 99)
        res.direct_mean = statistics.fmean(r_duac.rtt_ms)
    sipp_ticks = r_uac.cpu_ticks + r_duac.cpu_ticks + r_uas.cpu_ticks + r_duas.cpu_ticks
    res.sipp_cpu_pct = 100.0 * sipp_ticks / CLK_TCK / wall
    d_failed = direct_calls - min(
        stat_int(r_duac, "SuccessfulCall(C)"), stat_int(r_duas, "SuccessfulCall(C)")
    )
    res.clean = res.failed == 0 and peer_alive
    if d_failed:
        res.notes.append(f"direct pair lost {d_failed} of {direct_calls} calls (SIPp-side limit)")
    if not peer_alive:
        res.notes.append(f"{peer.name} exited during the run:\n{tail(log, 30)}")
    if res.failed:
        res.notes.append(
            f"uac rc={r_uac.rc} ok={ok_uac}, uas rc={r_uas.rc} ok={ok_uas}\n"
            f"uac errors: {r_uac.err_tail or '-'}\nuas errors: {r_uas.err_tail or '-'}"
        )
    errors = log.read_text(errors="replace").count("Traceback") if log.exists() else 0
    if errors:
        res.notes.append(f"{peer.name} logged {errors} tracebacks (see {log})")
    return res


# ---------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    sipp_v = subprocess.run(["sipp", "-v"], capture_output=True, text=True, check=False)
    sipp_line = next((ln.strip() for ln in sipp_v.stdout.splitlines() if "SIPp" in ln), "?")
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": platform.release(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "sipp": sipp_line,
        "git": rev or "?",
        # machine speed: compare absolute figures across days only through this
        "yardstick": f"{yardstick_us():.1f} us",
    }


_SIP_LAYER = """
try:
    from telephony import native
except ImportError:  # a tree from before the compiled build (docs/decisions/0004)
    print("interpreted")
else:
    print(native.status())
"""


def sip_layer(code: str | None) -> str:
    """``compiled`` or ``interpreted``: what telephony.sip loads in handoffd from tree ``code``
    (None: the installed one)."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", _SIP_LAYER],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
        check=False,
    )
    return out.stdout.strip() or "?"


def fmt(x: float, spec: str = ".2f") -> str:
    return "-" if math.isnan(x) else format(x, spec)


HEAD = (
    "| rate | peer | calls ok / sent | failed | retrans | achieved cps | CPU ms/call (sys) | "
    "peer CPU % | setup p50 / p99 / mean ms | direct p50 / p99 / mean ms | "
    "added p50 / p99 / mean ms | SIPp CPU % | peer run-queue wait ms |\n"
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def row(r: RunResult) -> str:
    return (
        f"| {r.rate} | {r.label} | {r.completed} / {r.calls} | {r.failed} | {r.retrans} | "
        f"{fmt(r.achieved_cps, '.1f')} | {fmt(r.cpu_ms_per_call)} ({fmt(r.sys_ms_per_call)}) | "
        f"{fmt(r.peer_cpu_pct, '.0f')} | "
        f"{fmt(r.setup_p50, '.0f')} / {fmt(r.setup_p99, '.0f')} / {fmt(r.setup_mean)} | "
        f"{fmt(r.direct_p50, '.0f')} / {fmt(r.direct_p99, '.0f')} / {fmt(r.direct_mean)} | "
        f"{fmt(r.added_p50, '.0f')} / {fmt(r.added_p99, '.0f')} / {fmt(r.added_mean)} | "
        f"{fmt(r.sipp_cpu_pct, '.0f')} | {fmt(r.runq_wait_ms, '.0f')} |"
    )


def summary(results: list[RunResult], peers: list[Peer]) -> list[str]:
    lines: list[str] = []
    best: dict[str, RunResult | None] = {}
    for p in peers:
        clean = [r for r in results if r.peer == p.name and r.clean]
        best[p.name] = max(clean, key=lambda r: r.rate) if clean else None
        b = best[p.name]
        if b is None:
            lines.append(f"- {p.label}: no clean rate")
            continue
        cpu = [r.cpu_ms_per_call for r in clean]
        lines.append(
            f"- {p.label}: highest clean rate {b.rate} calls/s; CPU {fmt(b.cpu_ms_per_call)} ms "
            f"per call there (median over its clean rates {fmt(statistics.median(cpu))}); added "
            f"setup p50/p99 {fmt(b.added_p50, '.0f')}/{fmt(b.added_p99, '.0f')} ms "
            f"(mean {fmt(b.added_mean)} ms)"
        )
    handoffds = [p for p in peers if p.kind == "handoffd"]
    top = max((r.rate for r in results), default=0)
    for hp in handoffds:
        h = best.get(hp.name)
        for p in peers:
            s = best.get(p.name)
            if h is None or s is None or p.kind == "handoffd":
                continue
            ratio = h.rate / s.rate
            capped = (
                " (a lower bound: handoffd was clean at the top rate run)" if h.rate == top else ""
            )
            lines.append(
                f"- targets, {hp.label} vs {p.label}: clean rate handoffd/sippy = {ratio:.2f}x "
                f"(target >= 2x: {'met' if ratio >= 2 else 'missed'}){capped}; CPU per bridged "
                f"call {fmt(h.cpu_ms_per_call)} ms (target <= 1.5 ms: "
                f"{'met' if h.cpu_ms_per_call <= 1.5 else 'missed'})"
            )
    lines += compare_codes(results, handoffds)
    return lines


def compare_codes(results: list[RunResult], handoffds: list[Peer]) -> list[str]:
    """With several ``--code`` trees: per rate, each tree's median CPU ms/call over its runs
    (clean or not) and its ratio to the first tree's."""
    if len(handoffds) < 2:
        return []
    lines = ["", "| rate | code | runs | CPU ms/call (each run) | median | vs first |"]
    lines.append("| ---: | --- | ---: | --- | ---: | ---: |")
    for rate in sorted({r.rate for r in results}):
        first = float("nan")
        for i, hp in enumerate(handoffds):
            cpu = [r.cpu_ms_per_call for r in results if r.peer == hp.name and r.rate == rate]
            cpu = [c for c in cpu if not math.isnan(c)]
            med = statistics.median(cpu) if cpu else float("nan")
            if i == 0:
                first = med
            each = ", ".join(fmt(c) for c in cpu) or "-"
            lines.append(
                f"| {rate} | {hp.label} | {len(cpu)} | {each} | {fmt(med)} | {fmt(med / first)} |"
            )
    return lines


def report(
    results: list[RunResult], peers: list[Peer], mach: dict[str, str], argv: list[str]
) -> str:
    out = ["## B2BUA calls per second (issue 3)", "", "| | |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in mach.items()]
    out += ["", "Command:", "", "```sh", "uv run --group bench python " + " ".join(argv), "```", ""]
    out += [HEAD, *(row(r) for r in results), ""]
    out += summary(results, peers)
    notes = [(r, n) for r in results for n in r.notes]
    if notes:
        out += ["", "Notes:", ""]
        for r, n in notes:
            first, *rest = n.splitlines()
            out.append(f"- {r.label} @ {r.rate}/s: {first}")
            if rest:
                out += ["", "  ```", *("  " + ln for ln in rest), "  ```"]
    return "\n".join(out)


# ---------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="50,100,200,300,400", help="calls/s, comma-separated")
    ap.add_argument("--duration", type=int, default=30, help="seconds per run")
    ap.add_argument(
        "--peer",
        default="both",
        help="both (= handoffd,sippy), or a comma list of handoffd, sippy, sippy-nomedia",
    )
    ap.add_argument("--quick", action="store_true", help="5 s runs at 50,100,200 (smoke)")
    ap.add_argument("--hold", type=int, default=200, help="ms between ACK and BYE")
    ap.add_argument(
        "--direct-rate", type=int, default=50, help="rate cap of the direct pair (0: same rate)"
    )
    ap.add_argument("--sippy-media", choices=("auto", "rtpio", "none"), default="auto")
    ap.add_argument("--no-pin", action="store_true", help="do not pin peer/SIPp to CPUs 0/1")
    ap.add_argument("--keep-going", action="store_true", help="run a peer past its first failure")
    ap.add_argument("--keep-dir", action="store_true", help="keep the run directories")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--no-redis",
        action="store_true",
        help="no redis-server for handoffd's records (they go to its spool)",
    )
    ap.add_argument(
        "--code",
        action="append",
        metavar="LABEL=DIR",
        help="run handoffd from the source tree DIR (PYTHONPATH) as peer handoffd@LABEL; repeat "
        "to compare trees in one run (e.g. old=/tmp/snapold --code new=.)",
    )
    ap.add_argument(
        "--repeats", type=int, default=1, help="runs per rate and peer, order alternating"
    )
    ap.add_argument(
        "--cprofile", metavar="DIR", help="run handoffd under cProfile, stats to DIR/*.prof"
    )
    args = ap.parse_args()
    if args.quick:
        args.duration = 5
        if args.rates == ap.get_default("rates"):
            args.rates = "50,100,200"
    rates = [int(x) for x in args.rates.split(",") if x.strip()]
    if shutil.which("sipp") is None:
        sys.exit("b2bua_cps: sipp not found (Debian package sip-tester)")

    wanted = ["handoffd", "sippy"] if args.peer == "both" else args.peer.split(",")
    unknown = set(wanted) - {"handoffd", "sippy", "sippy-nomedia"}
    if unknown:
        sys.exit(f"b2bua_cps: unknown --peer {', '.join(sorted(unknown))}")
    codes: list[tuple[str, str]] = []
    for spec in args.code or ():
        label, eq, path = spec.partition("=")
        if not eq or not label or not (Path(path) / "telephony").is_dir():
            sys.exit(f"b2bua_cps: --code wants LABEL=DIR with DIR/telephony (got {spec!r})")
        codes.append((label, str(Path(path).resolve())))
    rtpio = False
    if "sippy" in wanted:
        have = sippy_has_rtpio()
        if args.sippy_media == "rtpio" and not have:
            sys.exit("b2bua_cps: --sippy-media rtpio but `import rtp.io` fails (pip: rtp-io)")
        rtpio = have and args.sippy_media != "none"
    peers: list[Peer] = []
    for name in wanted:
        if name == "handoffd" and codes:
            for label, path in codes:
                peers.append(
                    Peer(f"handoffd@{label}", f"handoffd ({label})", "disp-1", True, code=path)
                )
        elif name == "handoffd":
            peers.append(Peer("handoffd", "handoffd", "disp-1", media=True))
        elif name == "sippy":
            label = "sippy+rtp.io" if rtpio else "sippy (no media)"
            peers.append(Peer("sippy", label, "disp-1", media=rtpio, kind="sippy"))
        else:
            peers.append(
                Peer("sippy-nomedia", "sippy (no media)", "disp-1", False, kind="sippy-nomedia")
            )
    if args.cprofile is not None:
        Path(args.cprofile).mkdir(parents=True, exist_ok=True)

    mach = machine()
    mach["peers"] = ", ".join(p.label for p in peers)
    # which SIP layer each handoffd tree runs (docs/decisions/0004): compiled or interpreted
    mach["sip"] = ", ".join(
        f"{p.label}: {sip_layer(p.code)}" for p in peers if p.kind == "handoffd"
    )
    print(" ".join(f"{k}={v}" for k, v in mach.items()), file=sys.stderr)
    base = Path(tempfile.mkdtemp(prefix="b2bua_cps-"))
    results: list[RunResult] = []
    dead: set[str] = set()
    redis, args.redis_url = None, None
    if not args.no_redis and any(p.kind == "handoffd" for p in peers):
        redis = RedisServer(base / "redis")  # records, as in production; on the SIPp CPU
        redis.start()
        assert redis.proc is not None
        pin(redis.proc.pid, None if args.no_pin else 1)
        args.redis_url = redis.url
    mach["records"] = "redis-server" if redis is not None else "spool (no redis)"
    try:
        for rate in rates:
            for round_no in range(args.repeats):
                # alternate the order each round: neither peer always runs on a warmer machine
                order = peers if round_no % 2 == 0 else peers[::-1]
                for p in order:
                    if p.name in dead:
                        continue
                    print(
                        f"-- {p.label} at {rate} calls/s for {args.duration} s"
                        f" (round {round_no + 1}/{args.repeats})",
                        file=sys.stderr,
                    )
                    r = run_one(p, rate, args, base, round_no)
                    results.append(r)
                    print(row(r), file=sys.stderr)
                    for n in r.notes:
                        print("   " + n.replace("\n", "\n   "), file=sys.stderr)
                    if not r.clean and not args.keep_going:
                        dead.add(p.name)
    finally:
        if redis is not None:
            redis.stop()
        if args.keep_dir:
            print(f"run directories kept in {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)

    argv = ["bench/b2bua_cps.py", *sys.argv[1:]]
    if args.json:
        data = [asdict(r) | {"added_p50": r.added_p50, "added_p99": r.added_p99} for r in results]
        print(json.dumps({"machine": mach, "runs": data}, indent=2))
    else:
        print()
        print(report(results, peers, mach, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
