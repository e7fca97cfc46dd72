"""``bench/trigger_latency.py --trace``: where handoffd's time goes between a trigger and its 988
INVITE, and the py-spy summary of ``--py-spy``.

:func:`traced_daemon` is handoffd with timers around the functions in :data:`TRACED` (run as
``python bench/trigger_trace.py CONFIG OUT DEST_PORT``); :func:`trace_breakdown` turns its records
and the bench's (t0, t1) marks into a per-trigger median breakdown; :func:`trace_report` and
:func:`spy_summary` write them up.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# appended, not prepended: the traced handoffd must import telephony from PYTHONPATH (--code)
sys.path.append(str(Path(__file__).resolve().parents[1]))
from bench.trigger_parties import TRIGGERS


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


# ---------------------------------------------------------------------------- --trace

#: (module, attribute path, label): handoffd functions timed in --trace mode. Module globals
#: are patched where the caller looks them up (e.g. ``telephony.io.transport.parse_message``).
TRACED = (
    ("telephony.io.transport", "_UdpProtocol.datagram_received", "sip: datagram_received"),
    ("telephony.io.transport", "parse_message", "sip: parse_message"),
    ("telephony.sip.transaction", "TransactionLayer.receive", "transaction: receive"),
    ("telephony.call.b2bua", "B2bua.handle", "B2bua.handle"),
    ("telephony.media.relay", "_RtpProtocol.datagram_received", "rtp: datagram_received"),
    ("aiohttp.web_protocol", "RequestHandler.data_received", "http: data_received"),
    ("aiohttp.web_protocol", "RequestHandler._handle_request", "http: _handle_request"),
    ("telephony.api.app", "bearer_ok", "api: bearer_ok"),
    ("telephony.api.app", "_Api.start_transfer", "api: _Api.start_transfer (handler)"),
    ("telephony.api.app", "_read_json", "api: _read_json"),
    ("telephony.api.app", "parse_json", "api: parse_json"),
    ("telephony.api.app", "transfer_request", "api: validate body"),
    ("telephony.daemon", "_Control.start_transfer", "api: _Control.start_transfer"),
    ("telephony.call.b2bua", "B2bua.on_key", "dtmf: B2bua.on_key"),
    ("telephony.call.cold", "ColdTransfers.on_refer", "refer: on_refer"),
    ("telephony.call.b2bua", "B2bua._respond", "_respond (202)"),
    ("telephony.call.cold", "ColdTransfers._notify", "_notify (NOTIFY)"),
    ("telephony.call.cold", "ColdTransfers.start", "ColdTransfers.start"),
    ("telephony.call.cold", "ColdTransfers._route", "_route (rules match)"),
    ("telephony.call.b2bua", "B2bua._record", "_record"),
    ("telephony.observe", "from_call", "record: build event"),
    ("telephony.recording.store", "Recorder.submit", "record: submit (Redis queue)"),
    ("telephony.metrics", "Metrics.observe", "record: metrics"),
    ("telephony.observe", "Observer._log", "record: log line"),
    ("telephony.call.b2bua", "B2bua._dial", "_dial"),
    ("telephony.daemon", "RelayMedia.open", "media: open endpoint (sockets)"),
    ("telephony.call.b2bua", "outbound_headers", "metadata: outbound_headers"),
    ("telephony.call.b2bua", "outbound_body", "metadata: outbound_body"),
    ("telephony.call.legs", "Leg.sdp_for", "sdp: sdp_for"),
    ("telephony.call.b2bua", "make_request", "make_request"),
    ("telephony.io.stack", "SipStack.send_request", "stack: send_request"),
    ("telephony.sip.transaction", "TransactionLayer.send_request", "transaction: send_request"),
    ("telephony.io.transport", "Transports.send", "sendto"),
)


def traced_daemon(config: str, out: str, dest_port: int) -> int:
    """``handoffd --config config`` with the functions in TRACED timed (enter, exit, depth);
    the records go to ``out`` as JSON when it exits."""
    import importlib  # noqa: PLC0415
    import inspect  # noqa: PLC0415

    events: list[tuple[str, int, int, int]] = []
    depth = [0]
    clock = time.perf_counter_ns

    def timed(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):  # wall time, awaits included

            async def awrapper(*a: Any, **k: Any) -> Any:
                d = depth[0]
                depth[0] = d + 1
                t = clock()
                try:
                    return await fn(*a, **k)
                finally:
                    events.append((label, t, clock(), d))
                    depth[0] = d

            return awrapper

        def wrapper(*a: Any, **k: Any) -> Any:
            d = depth[0]
            depth[0] = d + 1
            name = label
            if label == "_record":
                name = f"_record: {a[1]}"
            elif label == "http: data_received":
                name = f"{label} ({'bytes' if a[1] else 'empty'})"
            elif label == "sendto":
                data, dest = a[1], a[2]
                first = data[:40]
                if first.startswith(b"INVITE ") and dest.port == dest_port:
                    name = "sendto: INVITE to 988"
                else:
                    name = f"sendto: {first.split(b' ', 1)[0].decode(errors='replace')}"
            t = clock()
            try:
                return fn(*a, **k)
            finally:
                events.append((name, t, clock(), d))
                depth[0] = d

        return wrapper

    for module, path, label in TRACED:
        owner: Any = importlib.import_module(module)
        *parents, attr = path.split(".")
        for p in parents:
            owner = getattr(owner, p)
        setattr(owner, attr, timed(getattr(owner, attr), label))
    gc_start = [0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start[0] = clock()
        else:
            events.append((f"gc: generation {info['generation']}", gc_start[0], clock(), depth[0]))

    import gc  # noqa: PLC0415

    gc.callbacks.append(on_gc)
    from telephony.cli import handoffd_main  # noqa: PLC0415

    try:
        return handoffd_main(["--config", config])
    finally:
        Path(out).write_text(json.dumps(events))


def trace_breakdown(path: Path, marks: list[tuple[int, int]]) -> dict[str, dict[str, Any]]:
    """Per measured trigger (``marks``: the bench's (t0, t1)): the median µs of each traced
    function (keyed by its path of traced callers) from the trigger's first traced entry to the
    988 INVITE's sendto (a function still running then counts up to that moment), the median of
    that whole window, and the time outside it (t0 to the entry, the sendto to t1)."""
    raw = sorted(json.loads(path.read_text()), key=lambda e: (e[1], e[3]))
    # the path of traced callers of each event: a sweep with a stack of open intervals
    paths: list[tuple[str, ...]] = []
    open_: list[tuple[int, tuple[str, ...]]] = []  # (t_out, path)
    for name, t_in, t_out, _ in raw:
        while open_ and open_[-1][0] < t_in:
            open_.pop()
        p = (*open_[-1][1], name) if open_ else (name,)
        paths.append(p)
        open_.append((t_out, p))
    roots = {
        "rtp: datagram_received": "dtmf",
        "sip: datagram_received": "refer",
        "http: _handle_request": "api",
    }
    per: dict[str, list[dict[tuple[str, ...], float]]] = {t: [] for t in TRIGGERS}
    for i, (name, _t_in, t_out, _) in enumerate(raw):
        if name != "sendto: INVITE to 988" or "ColdTransfers.start" not in paths[i]:
            continue  # not an INVITE, or a failover INVITE (after a 486), not a trigger's
        trigger = roots.get(paths[i][0])
        mark = next((m for m in marks if m[0] <= t_out <= m[1]), None)
        if trigger is None or mark is None:
            continue  # not a trigger path, or a warm-up call
        # the window: from the first thing handoffd did after t0 to the INVITE's sendto
        first = next(j for j in range(i + 1) if raw[j][1] >= mark[0])
        start = raw[first][1]
        sums: dict[tuple[str, ...], float] = {}
        top = 0.0
        for j in range(first, i + 1):
            a, b = raw[j][1], raw[j][2]
            if a <= t_out:
                us = (min(b, t_out) - a) / 1000
                sums[paths[j]] = sums.get(paths[j], 0.0) + us
                top += us if len(paths[j]) == 1 else 0.0
        window = (t_out - start) / 1000
        sums[("(between the above: event loop, untraced code)",)] = window - top
        sums[("= handoffd: first traced entry to INVITE sent",)] = window
        sums[("outside: bench t0 to the first traced entry",)] = (start - mark[0]) / 1000
        sums[("outside: INVITE sendto returned to bench t1",)] = (mark[1] - t_out) / 1000
        sums[("= bench t1 - t0",)] = (mark[1] - mark[0]) / 1000
        per[trigger].append(sums)
    out: dict[str, dict[str, Any]] = {}
    for trigger, windows in per.items():
        keys: list[tuple[str, ...]] = []
        for w in windows:
            keys += [k for k in w if k not in keys]
        totals = [w[("= handoffd: first traced entry to INVITE sent",)] for w in windows]
        slow = [w for w in windows if w[("= handoffd: first traced entry to INVITE sent",)] > 2000]
        out[trigger] = {
            "n": len(windows),
            "window_p99": pct(totals, 99),
            "slow": len(slow),
            "slow_gc": sum(any(k[-1].startswith("gc:") for k in w) for w in slow),
            "gc": sum(any(k[-1].startswith("gc:") for k in w) for w in windows),
            "rows": [
                (len(k) - 1, k[-1], statistics.median(w.get(k, 0.0) for w in windows)) for k in keys
            ],
        }
    return out


def trace_report(bd: dict[str, dict[str, Any]]) -> str:
    lines = [
        "",
        "Trace (--trace: handoffd with the functions below timed; adds ~1 µs per call):"
        " median µs per trigger from the first traced entry to the 988 INVITE's sendto;"
        " nested functions are indented and included in their parent.",
        "",
    ]
    for trigger, b in bd.items():
        lines.append(
            f"{trigger} (N={b['n']}; the whole window's p99: {b['window_p99']:.0f} µs; windows"
            f" over 2 ms: {b['slow']}, of which with a GC pass inside: {b['slow_gc']}; windows"
            f" with a GC pass: {b['gc']}):"
        )
        lines.append("```")
        for depth, label, us in b["rows"]:
            lines.append(f"{us:9.1f}  {'  ' * depth}{label}")
        lines.append("```")
    return "\n".join(lines)


def spy_summary(path: Path, top: int = 20) -> str:
    """py-spy's collapsed stacks: the functions most often on the stack (inclusive) while
    handoffd was inside ``ColdTransfers.start`` (the transfer work every trigger shares)."""
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        k = next((i for i, f in enumerate(frames) if f.startswith("ColdTransfers.start ")), None)
        if k is None:
            continue
        total += int(n)
        for f in set(frames[k:]):
            counts[f] += int(n)
    lines = [
        "",
        f"py-spy ({path}): {total} samples inside ColdTransfers.start; the functions most often"
        " on the stack there (inclusive, % of those samples):",
        "",
        "```",
        *(f"{100 * n / max(total, 1):5.1f} %  {f}" for f, n in counts.most_common(top)),
        "```",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(traced_daemon(sys.argv[1], sys.argv[2], int(sys.argv[3])))
