"""SIP parse/serialize micro-benchmark: handoff (telephony.sip) against sippy 2.5.0 in one process.

Both parsers run in the same process, interleaved round by round (handoff batch, sippy batch,
handoff batch, ...), so a noisy neighbour slows both sides alike. Each number is the median over
``--repeats`` rounds of the time per message in one ``timeit`` batch (GC disabled during a batch,
timeit's default, for both sides). Ratios are handoff / sippy: below 1.0 means handoff is faster.
Two ratios are printed: the ratio of the two medians, and the median of the per-round ratios (the
latter pairs batches that ran side by side, so it is the more noise-robust of the two).

What is measured (per message, from wire bytes):

eager        handoff ``parse_message(data)``: start line, Request-URI, and eager validation of
             Via/From/To/CSeq/Call-ID/Max-Forwards/Content-Length; other headers lazy.
             sippy ``SipRequest(data.decode())`` / ``SipResponse(...)``: splits headers, builds
             typed-but-unparsed header objects, parses the Request-URI, attaches the body.
             (sippy's SipTransactionManager decodes the datagram the same way.)
full         handoff eager + every typed accessor (via, call_id, cseq, from_, to, contact,
             max_forwards, content_type, content_length, call_info, geolocation,
             p_asserted_identity, history_info, user_to_user, supported, allow; the 200 OK adds
             record_route, require). sippy eager + ``getBody()`` on every header, which runs the
             header's lazy ``parse()``. NOTE: sippy has no typed class for Call-Info, Geolocation,
             History-Info or User-to-User (they are SipGenericHF, parse() is a no-op), so in
             this row handoff does strictly more work than sippy.
full-common  like for like: handoff accessors only for the headers sippy types too
             (everything above minus call_info, geolocation, history_info, user_to_user).
serialize    handoff ``msg.to_bytes()`` on a parsed message (headers are kept as text, so the cost
             does not depend on what was accessed). sippy ``msg.localStr().encode()`` (the call
             its transaction manager makes before sending) on a message parsed eagerly ("eager"
             state: unparsed headers are echoed) and on a fully parsed one (re-rendered).
No SDP body parsing on either side.

Run:  uv run --group bench python bench/parse.py [--json] [--repeats N] [--profile] [--breakdown]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import platform
import pstats
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from telephony.sip import parse_message

DATA = Path(__file__).parent / "data"
INVITE = "invite_1k.sip"
OK200 = "ok_200_1k.sip"

# Typed accessors handoff offers for the headers in the vectors.
FULL_INVITE = (
    "via",
    "call_id",
    "cseq",
    "from_",
    "to",
    "contact",
    "max_forwards",
    "content_type",
    "content_length",
    "call_info",
    "geolocation",
    "p_asserted_identity",
    "history_info",
    "user_to_user",
    "supported",
    "allow",
)
FULL_OK = (
    "via",
    "call_id",
    "cseq",
    "from_",
    "to",
    "contact",
    "content_type",
    "content_length",
    "p_asserted_identity",
    "record_route",
    "supported",
    "allow",
    "require",
)
# Headers sippy has no typed parser for (SipGenericHF): skipped in the "full-common" row.
SIPPY_UNTYPED = frozenset({"call_info", "geolocation", "history_info", "user_to_user", "require"})

TARGET_FULL_US = 20.0
TARGET_RATIO = 0.6


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def handoff_cases(data: bytes, attrs: tuple[str, ...]) -> dict[str, Callable[[], object]]:
    common = tuple(a for a in attrs if a not in SIPPY_UNTYPED)
    parse = parse_message

    def eager() -> object:
        return parse(data)

    def make_full(names: tuple[str, ...]) -> Callable[[], object]:
        def full() -> object:
            msg = parse(data)
            for name in names:
                getattr(msg, name)
            return msg

        return full

    parsed = parse(data)
    for name in attrs:  # prove the accessors work on this vector before timing them
        getattr(parsed, name)
    return {
        "eager": eager,
        "full": make_full(attrs),
        "full-common": make_full(common),
        "serialize": parsed.to_bytes,
    }


def sippy_cases(data: bytes) -> dict[str, Callable[[], object]]:
    from sippy.SipRequest import SipRequest  # noqa: PLC0415 - bench group only
    from sippy.SipResponse import SipResponse  # noqa: PLC0415

    cls = SipResponse if data.startswith(b"SIP/") else SipRequest

    def eager() -> object:
        return cls(data.decode())

    def full() -> object:
        msg = cls(data.decode())
        for hf in msg.headers:
            hf.getBody()
        return msg

    eager_msg = eager()
    full_msg = full()

    def ser_eager() -> object:
        return eager_msg.localStr().encode()

    def ser_full() -> object:
        return full_msg.localStr().encode()

    return {
        "eager": eager,
        "full": full,
        "full-common": full,  # sippy parses every header it has a type for; no subset to pick
        "serialize": ser_eager,
        "serialize(full)": ser_full,
    }


def calibrate(fn: Callable[[], object], min_batch_s: float) -> int:
    """Loop count such that one batch takes about ``min_batch_s``."""
    number = 1
    while True:
        t = timeit.timeit(fn, number=number)
        if t >= min_batch_s / 10:
            return max(1, round(number * min_batch_s / t))
        number *= 10


def run(repeats: int, min_batch_s: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for vector, attrs in ((INVITE, FULL_INVITE), (OK200, FULL_OK)):
        data = load(vector)
        cases = {("handoff", k): f for k, f in handoff_cases(data, attrs).items()}
        cases |= {("sippy", k): f for k, f in sippy_cases(data).items()}
        numbers = {key: calibrate(fn, min_batch_s) for key, fn in cases.items()}
        samples: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
        for _ in range(repeats):
            for key, fn in cases.items():  # interleaved: every case once per round
                n = numbers[key]
                samples[key].append(timeit.timeit(fn, number=n) / n * 1e6)
        rows: dict[str, Any] = {}
        for impl, case in cases:
            s = samples[(impl, case)]
            rows.setdefault(case, {})[impl] = {
                "median_us": statistics.median(s),
                "min_us": min(s),
                "max_us": max(s),
                "batch": numbers[(impl, case)],
            }
        for case, row in rows.items():
            if "handoff" in row and "sippy" in row:
                h = samples[("handoff", case)]
                p = samples[("sippy", case)]
                row["ratio_of_medians"] = row["handoff"]["median_us"] / row["sippy"]["median_us"]
                row["median_paired_ratio"] = statistics.median(
                    a / b for a, b in zip(h, p, strict=True)
                )
        results[vector] = {"bytes": len(data), "rows": rows}
    return results


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sippy  # noqa: PLC0415

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "sippy": getattr(sippy, "__version__", "2.5.0"),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        # machine-speed yardstick, to judge absolute µs across machines
        "sum_range_1000_us": min(timeit.repeat("sum(range(1000))", number=2000, repeat=7))
        / 2000
        * 1e6,
    }


def print_table(res: dict[str, Any], meta: dict[str, Any], repeats: int) -> None:
    print(f"# {meta['date']}  {meta['cpu']}  Python {meta['python']}  kernel {meta['kernel']}")
    print(
        f"# loadavg at start {' '.join(meta['loadavg'])}; yardstick sum(range(1000)) = "
        f"{meta['sum_range_1000_us']:.1f} µs; median of {repeats} interleaved rounds"
    )
    for vector, r in res.items():
        print(f"\n{vector} ({r['bytes']} bytes)")
        print(
            f"{'case':<16} {'handoff µs':>11} {'sippy µs':>10} "
            f"{'ratio(med)':>11} {'ratio(paired)':>14}"
        )
        for case, row in r["rows"].items():
            h = row.get("handoff", {}).get("median_us")
            s = row.get("sippy", {}).get("median_us")
            hs = f"{h:11.2f}" if h is not None else f"{'-':>11}"
            ss = f"{s:10.2f}" if s is not None else f"{'-':>10}"
            rm = f"{row['ratio_of_medians']:11.2f}" if "ratio_of_medians" in row else f"{'':>11}"
            rp = f"{row['median_paired_ratio']:14.2f}" if "median_paired_ratio" in row else ""
            print(f"{case:<16} {hs} {ss} {rm} {rp}")
    full = res[INVITE]["rows"]["full"]
    us = full["handoff"]["median_us"]
    ratio = full["median_paired_ratio"]
    print(
        f"\ntargets (INVITE full parse): {us:.1f} µs vs ≤ {TARGET_FULL_US:.0f} µs -> "
        f"{'met' if us <= TARGET_FULL_US else 'MISSED'}; "
        f"{ratio:.2f}x sippy vs ≤ {TARGET_RATIO}x -> "
        f"{'met' if ratio <= TARGET_RATIO else 'MISSED'}"
    )


def breakdown(rounds: int = 9, n: int = 2000) -> None:
    """Cost of the first access to each typed header on a freshly parsed INVITE (the lazy part
    of "full"), next to the cost of parse_message itself (the eager part)."""
    data = load(INVITE)
    samples: dict[str, list[float]] = {"parse_message (eager)": []}
    samples |= {a: [] for a in FULL_INVITE}
    gc.disable()  # as timeit does for the main table
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(n):
                parse_message(data)
            samples["parse_message (eager)"].append((time.perf_counter() - t0) / n * 1e6)
            for attr in FULL_INVITE:
                msgs = [parse_message(data) for _ in range(n)]
                t0 = time.perf_counter()
                for m in msgs:
                    getattr(m, attr)
                samples[attr].append((time.perf_counter() - t0) / n * 1e6)
                del msgs
                gc.collect()
    finally:
        gc.enable()
    print(f"{INVITE}: median µs over {rounds} rounds of {n} (first access after parse_message)")
    total = 0.0
    for name, s in samples.items():
        med = statistics.median(s)
        total += med
        print(f"  {name:<24} {med:7.2f}")
    print(f"  {'sum':<24} {total:7.2f}")


def profile(n: int) -> None:
    data = load(INVITE)
    full = handoff_cases(data, FULL_INVITE)["full"]
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        full()
    prof.disable()
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    print(f"cProfile of {n} handoff full parses of {INVITE} (tottime order):")
    st.sort_stats("tottime").print_stats(25)
    print(out.getvalue())
    out.truncate(0)
    out.seek(0)
    st.sort_stats("cumulative").print_stats(25)
    print(out.getvalue())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=25, help="interleaved rounds (default 25)")
    ap.add_argument(
        "--batch-seconds",
        type=float,
        default=0.02,
        help="minimum wall time of one timeit batch (default 0.02)",
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--profile", action="store_true", help="cProfile handoff full parse and exit")
    ap.add_argument(
        "--breakdown", action="store_true", help="per-accessor cost of handoff full parse and exit"
    )
    args = ap.parse_args()
    if args.profile:
        profile(20000)
        return 0
    if args.breakdown:
        breakdown()
        return 0
    meta = machine()
    res = run(args.repeats, args.batch_seconds)
    if args.json:
        json.dump({"meta": meta, "repeats": args.repeats, "results": res}, sys.stdout, indent=2)
        print()
    else:
        print_table(res, meta, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
