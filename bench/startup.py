"""Startup time: process spawn -> ``GET /healthz`` answers 200 (SIP and HTTP serving).

Cases, interleaved round by round so machine noise hits all of them alike:

handoffd            ``.venv/bin/handoffd --config config/handoffd.yaml`` (the README's example
                    config) with ``--sip-listen``/``--http-listen`` on free loopback ports and
                    ``--redis-url`` to a port nobody listens on (records go to the spool, so no
                    Redis is needed). Bytecode as installed (``make venv`` compiles it).
handoffd, no pyc    the same with ``PYTHONPYCACHEPREFIX`` pointing at an empty directory and
                    ``PYTHONDONTWRITEBYTECODE=1``: every module is compiled from source at each
                    start, which is what a machine with that variable set and an uncompiled venv
                    pays (the CI machine has it set).
aiohttp floor       the same interpreter starting a bare aiohttp app with one ``/healthz`` route
                    (no SIP, no config): the floor for any aiohttp service on this machine.
handoffd (LABEL)    with ``--code LABEL=DIR`` (repeatable): handoffd from the source tree DIR,
                    first on ``PYTHONPATH`` (compile it first: ``python -m compileall DIR``),
                    e.g. the code before a change, snapshotted with ``git archive``; with
                    DIR/config/handoffd.yaml (and the rules it names) it starts on that.

The time is taken from just before ``Popen`` to the first 200 from /healthz (polled every 5 ms).
Each run's process gets SIGTERM and is waited for before the next starts.

Run:  .venv/bin/python bench/startup.py [--rounds 9] [--code LABEL=DIR ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
sys.path.insert(0, str(ROOT))
from bench.cps_procs import HOST, free_tcp_port, free_udp_port  # noqa: E402

FLOOR_APP = """
import sys
from aiohttp import web
async def ok(_r): return web.Response(text="ok")
app = web.Application(); app.router.add_get("/healthz", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=0.5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def one(case: str, empty_cache: Path, codes: dict[str, str]) -> float:
    http = free_tcp_port()
    env = dict(os.environ)
    if case in codes:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [codes[case], env.get("PYTHONPATH")]))
    if case == "aiohttp floor":
        cmd = [str(BIN / "python"), "-c", FLOOR_APP, str(http)]
    else:
        sip = free_udp_port()
        config = ROOT / "config" / "handoffd.yaml"
        if case in codes and (Path(codes[case]) / "config" / "handoffd.yaml").exists():
            config = Path(codes[case]) / "config" / "handoffd.yaml"  # that tree's own example
        cmd = [str(BIN / "handoffd"), "--config", str(config)]
        cmd += ["--sip-listen", f"{HOST}:{sip}", "--http-listen", f"{HOST}:{http}"]
        cmd += ["--redis-url", f"redis://{HOST}:{free_tcp_port()}/0"]
        env["HANDOFF_API_TOKENS"] = "bench-token"
        if case == "handoffd, no pyc":
            env["PYTHONPYCACHEPREFIX"] = str(empty_cache)
            env["PYTHONDONTWRITEBYTECODE"] = "1"
    with tempfile.TemporaryDirectory() as cwd:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while not healthy(http):
                if proc.poll() is not None:
                    raise SystemExit(f"{case}: exited {proc.returncode} before /healthz")
                if time.monotonic() - t0 > 30:
                    raise SystemExit(f"{case}: no /healthz within 30 s")
                time.sleep(0.005)
            return time.monotonic() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--code", action="append", default=[], metavar="LABEL=DIR")
    args = ap.parse_args()
    codes = {f"handoffd ({c.split('=', 1)[0]})": c.split("=", 1)[1] for c in args.code}
    cases = ["handoffd", "handoffd, no pyc", "aiohttp floor", *codes]
    times: dict[str, list[float]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory() as empty:
        for r in range(args.rounds):
            for case in cases if r % 2 == 0 else reversed(cases):
                times[case].append(one(case, Path(empty), codes))
    rows = {
        c: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "runs": len(v)}
        for c, v in times.items()
    }
    meta = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load1": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.json:
        print(json.dumps({"meta": meta, "cases": rows}, indent=2))
        return 0
    floor = rows["aiohttp floor"]["median_s"]
    print(f"# startup to /healthz 200, {args.rounds} rounds, {meta}")
    print("| case | median s | min s | max s | median / aiohttp floor |")
    print("|---|---|---|---|---|")
    for c, row in rows.items():
        print(
            f"| {c} | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['max_s']:.3f} "
            f"| {row['median_s'] / floor:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
