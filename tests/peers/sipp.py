"""Start SIPp (Debian ``sip-tester``) as a real peer on free loopback ports.

Every run has ``-m`` (a call count) and ``-timeout`` so it stops by itself; the caller awaits
:meth:`SippRun.wait` and asserts on the exit status (0: every call succeeded) and the statistics.
"""

from __future__ import annotations

import asyncio
import csv
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = Path(__file__).resolve().parents[2] / "sipp_scenarios"


def sipp_binary() -> str:
    path = shutil.which("sipp")
    if path is None:
        raise RuntimeError(
            "sipp not found: install Debian's sip-tester (make test / .ci/run do this)"
        )
    return path


#: every port free_port handed out in this process: never handed out twice, so that two
#: parties picked one after the other (a daemon's SIP port, then the Redis next to it) cannot
#: be given the same port the kernel happened to offer again
_GIVEN: set[int] = set()


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` right now, not handed out before."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port in _GIVEN:
            continue
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        try:
            with socket.socket(socket.AF_INET, other) as s2:
                s2.bind((host, port))
        except OSError:
            continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free port")


@dataclass
class SippResult:
    returncode: int
    stdout: str
    stderr: str
    stats: dict[str, str]

    def count(self, name: str) -> int:
        """A cumulative counter from the statistics file, e.g. ``SuccessfulCall(C)``."""
        return int(self.stats.get(name, "0") or 0)


class SippRun:
    def __init__(self, proc: asyncio.subprocess.Process, stat_file: Path) -> None:
        self.proc = proc
        self.stat_file = stat_file

    async def wait(self, timeout: float = 60.0) -> SippResult:
        try:
            out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.proc.kill()
            out, err = await self.proc.communicate()
        stats: dict[str, str] = {}
        if self.stat_file.exists():
            rows = list(csv.reader(self.stat_file.read_text().splitlines(), delimiter=";"))
            if len(rows) >= 2:
                stats = dict(zip(rows[0], rows[-1], strict=False))
        assert self.proc.returncode is not None
        return SippResult(
            self.proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), stats
        )

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


def free_udp_range(
    count: int, host: str = "127.0.0.1", *, even: bool = False, avoid: range = range(0)
) -> int:
    """The first of ``count`` consecutive UDP ports that are all free on ``host`` right now;
    ``even``: the first is even (an RTP port); ``avoid``: none of them in this range (another
    party's port range, e.g. handoffd's media ports, which it binds only as calls come)."""
    for _ in range(100):
        base = free_port(host=host)
        base += base & 1 if even else 0
        ports = range(base, base + count)
        if ports[-1] >= 65535 or (avoid and ports[0] <= avoid[-1] and avoid[0] <= ports[-1]):
            continue
        if any(p in _GIVEN for p in ports[1:]):
            continue
        held: list[socket.socket] = []
        try:
            for port in ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(s)
                s.bind((host, port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        _GIVEN.update(ports)
        return base
    raise RuntimeError(f"no {count} consecutive free UDP ports")


def media_port(avoid: range = range(0)) -> str:
    """A ``-mp`` value: SIPp 3.6.1 binds that port (audio), the one two above (video) and
    their RTCP ports; four free ports from an even one (``free_port() & ~1`` could be taken)."""
    return str(free_udp_range(4, even=True, avoid=avoid))


async def start_sipp(
    scenario: str,
    *,
    workdir: Path,
    local_port: int,
    remote: str | None = None,
    calls: int = 1,
    rate: float = 10.0,
    transport: str = "u1",
    service: str = "988",
    timeout_s: int = 30,
    extra: tuple[str, ...] = (),
) -> SippRun:
    """Start sipp with ``sipp_scenarios/<scenario>.xml``; it exits after ``calls`` calls."""
    stat_file = workdir / f"{scenario}-stats.csv"
    args = [
        sipp_binary(),
        "-sf",
        str(SCENARIOS / f"{scenario}.xml"),
        "-i",
        "127.0.0.1",
        "-p",
        str(local_port),
        "-t",
        transport,
        "-s",
        service,
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-nostdin",
        "-timeout",
        f"{timeout_s}s",
        "-timeout_error",
        "-trace_stat",
        "-stf",
        str(stat_file),
        "-fd",
        "1",
        "-trace_err",
        *extra,
    ]
    if remote is not None:
        args.append(remote)
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=workdir,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return SippRun(proc, stat_file)
