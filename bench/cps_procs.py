"""Processes, /proc readings and SIPp runs for bench/b2bua_cps.py (and trigger_latency.py).

Free ports, CPU ticks and run-queue wait of a process tree, pinning, a SIP OPTIONS ping, stopping
a process group; the SIPp scenario copies, command lines, runs and their statistics.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import signal
import socket
import subprocess
import sys
import time
import timeit
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "sipp_scenarios"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

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


def cpu_ticks(pid: int, *, kernel_only: bool = False) -> int:
    """utime+stime of ``pid`` (all its threads) and of its live descendants, in clock ticks
    (``kernel_only``: stime alone, the time spent in system calls)."""
    total = 0
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[12])  # stime (field 15)
        if not kernel_only:
            total += int(fields[11])  # utime (field 14)
    for child in _children(pid):
        total += cpu_ticks(child, kernel_only=kernel_only)
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


def yardstick_us() -> float:
    """This machine's speed today: µs per ``sum(range(1000))`` (best of 5 in this process).
    Absolute figures of different days compare only through it."""
    return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6


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
