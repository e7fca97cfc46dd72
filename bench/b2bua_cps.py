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

Run:  uv run --group bench python bench/b2bua_cps.py [--rates 50,100,200] [--duration 30]
                                                     [--peer both|handoffd|sippy] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.peers.redis import RedisServer

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "sipp_scenarios"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PEER_CPU, SIPP_CPU = 0, 1
READY_TIMEOUT_S = 15.0


# ---------------------------------------------------------------------------- small helpers


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
                out.extend(int(c) for c in text.split())
    return out


def cpu_ticks(pid: int) -> int:
    """utime+stime of ``pid`` (all its threads) and of its live descendants, in clock ticks."""
    total = 0
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    for child in _children(pid):
        total += cpu_ticks(child)
    return total


def runqueue_wait_ns(pid: int) -> int:
    """Time the threads of ``pid`` spent runnable but waiting for a CPU (/proc/.../schedstat,
    second field): how long other processes kept the peer off its core."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
    return total


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def pin(pid: int, cpu: int | None) -> None:
    """Pin a process we just started to one CPU (its threads, started later, inherit it)."""
    if cpu is None or (os.cpu_count() or 1) < 2:
        return
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, {cpu})


def sip_ping(port: int, timeout: float) -> bool:
    """One OPTIONS to 127.0.0.1:port; True when any SIP response comes back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.settimeout(timeout)
        me = s.getsockname()[1]
        tag = random.getrandbits(32)
        msg = (
            f"OPTIONS sip:ping@{HOST}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{me};branch=z9hG4bK-bench{tag};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:bench@{HOST}>;tag={tag}\r\n"
            f"To: <sip:ping@{HOST}>\r\nCall-ID: ready-{tag}@{HOST}\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), (HOST, port))
        try:
            data = s.recv(65535)
        except OSError:
            return False
        return data.startswith(b"SIP/2.0 ")


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group we started, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def last_sipp_error(path: Path) -> str:
    """SIPp's error log: the count of entries and the first line of the last one (the reason)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    heads = [ln for ln in lines if ln[:4].isdigit() and ln[4:5] == "-"]
    return f"{len(heads)} entries, last: {heads[-1][:300]}" if heads else ""


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# ---------------------------------------------------------------------------- scenarios


def write_scenarios(run_dir: Path, hold_ms: int) -> tuple[Path, Path]:
    uac = (SCENARIOS / "uac-basic-call.xml").read_text()
    uas = (SCENARIOS / "uas-basic-call.xml").read_text()
    contact_param = ";transport=[transport]>"
    pause = '<pause milliseconds="200"/>'
    if contact_param not in uac or contact_param not in uas or pause not in uac:
        sys.exit("b2bua_cps: sipp_scenarios/ changed; update write_scenarios()")
    uac = uac.replace(contact_param, ">").replace(pause, f'<pause milliseconds="{hold_ms}"/>')
    uas = uas.replace(contact_param, ">")
    uac_path, uas_path = run_dir / "uac.xml", run_dir / "uas.xml"
    uac_path.write_text(uac)
    uas_path.write_text(uas)
    return uac_path, uas_path


# ---------------------------------------------------------------------------- peers


@dataclass
class Peer:
    name: str
    label: str
    service: str  # the user part the uac calls
    media: bool  # media anchored (relay ports allocated, SDP rewritten)


def sippy_has_rtpio() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import rtp.io"], capture_output=True, check=False, timeout=30
    )
    return probe.returncode == 0


def start_handoffd(
    run_dir: Path, port: int, next_hop: int, cpu: int | None, redis_url: str | None
) -> tuple[subprocess.Popen[bytes], Path]:
    """``redis_url``: where it records (None: to nowhere, so its records go to its spool)."""
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
    log = run_dir / "peer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=run_dir,
            start_new_session=True,
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


# ---------------------------------------------------------------------------- SIPp


@dataclass
class SippResult:
    rc: int
    stats: dict[str, str]
    rtt_ms: list[float]
    rtt_at_ms: list[float]
    cpu_ticks: int
    err_tail: str


def sipp_cmd(scenario: Path, port: int, stat: Path, extra: list[str]) -> list[str]:
    return [
        "sipp",
        "-sf",
        str(scenario),
        "-i",
        HOST,
        "-p",
        str(port),
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(stat),
        "-fd",
        "5",
        "-trace_err",
        "-error_file",
        str(stat.with_suffix(".err")),
        *extra,
    ]


def start_sipp(cmd: list[str], cwd: Path, cpu: int | None) -> subprocess.Popen[bytes]:
    with (cwd / f"sipp-{cmd[cmd.index('-p') + 1]}.stderr").open("wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
    pin(proc.pid, cpu)
    return proc


def read_stats(stat: Path) -> dict[str, str]:
    try:
        rows = list(csv.reader(stat.read_text().splitlines(), delimiter=";"))
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def read_rtt(cwd: Path, scenario: Path, pid: int) -> tuple[list[float], list[float]]:
    path = cwd / f"{scenario.stem}_{pid}_rtt.csv"
    at: list[float] = []
    rtt: list[float] = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split(";")
            if len(parts) >= 2 and parts[0][:1].isdigit():
                at.append(float(parts[0]))
                rtt.append(float(parts[1]))
    return rtt, at


def wait_sampling(
    proc: subprocess.Popen[bytes], wait: float, watch: list[subprocess.Popen[bytes]]
) -> dict[int, int]:
    """Wait up to ``wait`` s for ``proc`` to exit; meanwhile keep the last CPU ticks seen for
    every process in ``watch`` (a process's ticks can no longer be read once it exited)."""
    seen: dict[int, int] = {}
    deadline = time.monotonic() + wait
    while True:
        for p in watch:
            if p.poll() is None:
                seen[p.pid] = max(seen.get(p.pid, 0), cpu_ticks(p.pid))
        if proc.poll() is not None or time.monotonic() >= deadline:
            return seen
        time.sleep(0.1)


def finish_sipp(
    proc: subprocess.Popen[bytes],
    cwd: Path,
    scenario: Path,
    stat: Path,
    wait: float,
    seen: dict[int, int],
) -> SippResult:
    for pid, t in wait_sampling(proc, wait, [proc]).items():
        seen[pid] = max(seen.get(pid, 0), t)
    ticks = seen.get(proc.pid, 0)
    if proc.poll() is None:
        # SIGUSR1 makes SIPp stop cleanly and write its final statistics
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGUSR1)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            stop(proc, 1)
    rtt, at = read_rtt(cwd, scenario, proc.pid)
    return SippResult(
        rc=proc.returncode,
        stats=read_stats(stat),
        rtt_ms=rtt,
        rtt_at_ms=at,
        cpu_ticks=ticks,
        err_tail=last_sipp_error(stat.with_suffix(".err")),
    )


def stat_int(res: SippResult, key: str) -> int:
    try:
        return int(float(res.stats.get(key, "0") or 0))
    except ValueError:
        return 0


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


def run_one(peer: Peer, rate: int, args: argparse.Namespace, base: Path) -> RunResult:
    run_dir = base / f"{peer.name}-{rate}"
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
    if peer.name == "handoffd":
        proc, log = start_handoffd(run_dir, p_port, uas_port, cpu_peer, args.redis_url)
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
        uac = start_sipp(uac_cmd, run_dir, cpu_sipp)
        d_uac = start_sipp(d_uac_cmd, run_dir, cpu_sipp)
        sipps += [uac, d_uac]
        seen = wait_sampling(uac, uac_timeout + 5, sipps)
        c_end, t_end = cpu_ticks(proc.pid), time.monotonic()
        res.runq_wait_ms = (runqueue_wait_ns(proc.pid) - q_start) / 1e6
        r_uac = finish_sipp(uac, run_dir, uac_xml, run_dir / "uac.stat", 5, seen)
        r_duac = finish_sipp(d_uac, run_dir, uac_xml, run_dir / "d_uac.stat", 30, seen)
        r_uas = finish_sipp(uas, run_dir, uas_xml, run_dir / "uas.stat", 15, seen)
        r_duas = finish_sipp(d_uas, run_dir, uas_xml, run_dir / "d_uas.stat", 15, seen)
        peer_alive = proc.poll() is None
    finally:
        stop(proc)
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
    }


def fmt(x: float, spec: str = ".2f") -> str:
    return "-" if math.isnan(x) else format(x, spec)


HEAD = (
    "| rate | peer | calls ok / sent | failed | retrans | achieved cps | CPU ms/call | "
    "peer CPU % | setup p50 / p99 / mean ms | direct p50 / p99 / mean ms | "
    "added p50 / p99 / mean ms | SIPp CPU % | peer run-queue wait ms |\n"
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def row(r: RunResult) -> str:
    return (
        f"| {r.rate} | {r.label} | {r.completed} / {r.calls} | {r.failed} | {r.retrans} | "
        f"{fmt(r.achieved_cps, '.1f')} | {fmt(r.cpu_ms_per_call)} | {fmt(r.peer_cpu_pct, '.0f')} | "
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
    h = best.get("handoffd")
    top = max((r.rate for r in results), default=0)
    for p in peers:
        s = best.get(p.name)
        if h is None or s is None or p.name == "handoffd":
            continue
        ratio = h.rate / s.rate
        capped = " (a lower bound: handoffd was clean at the top rate run)" if h.rate == top else ""
        lines.append(
            f"- targets vs {p.label}: clean rate handoffd/sippy = {ratio:.2f}x (target >= 2x: "
            f"{'met' if ratio >= 2 else 'missed'}){capped}; CPU per bridged call "
            f"{fmt(h.cpu_ms_per_call)} ms (target <= 1.5 ms: "
            f"{'met' if h.cpu_ms_per_call <= 1.5 else 'missed'})"
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
    rtpio = False
    if "sippy" in wanted:
        have = sippy_has_rtpio()
        if args.sippy_media == "rtpio" and not have:
            sys.exit("b2bua_cps: --sippy-media rtpio but `import rtp.io` fails (pip: rtp-io)")
        rtpio = have and args.sippy_media != "none"
    peers: list[Peer] = []
    for name in wanted:
        if name == "handoffd":
            peers.append(Peer("handoffd", "handoffd", "disp-1", media=True))
        elif name == "sippy":
            label = "sippy+rtp.io" if rtpio else "sippy (no media)"
            peers.append(Peer("sippy", label, "disp-1", media=rtpio))
        else:
            peers.append(Peer("sippy-nomedia", "sippy (no media)", "disp-1", media=False))

    mach = machine()
    mach["peers"] = ", ".join(p.label for p in peers)
    print(" ".join(f"{k}={v}" for k, v in mach.items()), file=sys.stderr)
    base = Path(tempfile.mkdtemp(prefix="b2bua_cps-"))
    results: list[RunResult] = []
    dead: set[str] = set()
    redis, args.redis_url = None, None
    if not args.no_redis and any(p.name == "handoffd" for p in peers):
        redis = RedisServer(base / "redis")  # records, as in production; on the SIPp CPU
        redis.start()
        assert redis.proc is not None
        pin(redis.proc.pid, None if args.no_pin else 1)
        args.redis_url = redis.url
    mach["records"] = "redis-server" if redis is not None else "spool (no redis)"
    try:
        for rate in rates:
            for p in peers:
                if p.name in dead:
                    continue
                print(f"-- {p.label} at {rate} calls/s for {args.duration} s", file=sys.stderr)
                r = run_one(p, rate, args, base)
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
