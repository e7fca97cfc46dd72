"""Transactions per second through telephony.sip.transaction: an in-memory UAC <-> UAS pair.

Two ``TransactionLayer`` instances are wired back to back in memory with a fake clock. Every
message crosses the "wire" as bytes: each ``Transmit.data`` is parsed again with
``parse_message`` on the receiving side, so the numbers include serialize + parse + transaction
matching + state machine work for both ends (one process, one core).

non-INVITE   UAC sends OPTIONS; UAS gets RequestReceived, answers 200; UAC gets ResponseReceived.
INVITE       UAC sends INVITE; UAS answers 100, 180, 200 (each crosses the wire); UAC gets the
             responses; the UAC core sends the ACK for the 2xx (end to end, RFC 3261 §13.2.2.4)
             and the UAS receives it.

The fake clock advances 1 ms per transaction and both layers' timers are serviced
(``get_timer`` / ``handle_timer``) after every transaction, so terminated transactions are
reaped (Timer J/K/L/M...) and the tables stay bounded, as in a long-running process.

Run:  uv run python bench/transactions.py [--json] [--repeats N] [--count N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telephony.sip import (
    URI,
    NameAddr,
    Request,
    Via,
    make_request,
    make_response,
    new_branch,
    new_tag,
    parse_message,
)

try:
    from telephony.sip import transaction as tx
except ImportError:  # not written yet: only the wire-only baseline can run
    tx = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class _Endpoint:
    host: str
    port: int


UAC: Any = tx.Endpoint("udp", "127.0.0.1", 5070) if tx else _Endpoint("127.0.0.1", 5070)
UAS: Any = tx.Endpoint("udp", "127.0.0.1", 5080) if tx else _Endpoint("127.0.0.1", 5080)
SDP = (Path(__file__).parent / "data" / "invite_1k.sip").read_bytes().split(b"\r\n\r\n", 1)[1]


# -- wire-only baseline: same messages, bytes and parsing, no transaction layer ---------------


@dataclass(slots=True)
class _Transmit:
    data: bytes
    dest: Any
    message: Any


@dataclass(slots=True)
class _RequestReceived:
    request: Any
    source: Any


@dataclass(slots=True)
class _ResponseReceived:
    response: Any


class WireOnly:
    """Stand-in with the TransactionLayer API that does no matching and keeps no state beyond
    "where did this branch come from": its cost is the floor (build + serialize + parse)."""

    RequestReceived = _RequestReceived
    ResponseReceived = _ResponseReceived

    def __init__(self) -> None:
        self._tx: list[_Transmit] = []
        self._ev: list[Any] = []
        self._src: dict[str | None, Any] = {}

    def send_request(self, req: Any, dest: Any, now: float) -> None:
        self._tx.append(_Transmit(req.to_bytes(), dest, req))

    def receive(self, msg: Any, source: Any, now: float) -> None:
        if isinstance(msg, Request):
            self._src[msg.top_via.branch] = source
            self._ev.append(_RequestReceived(msg, source))
        else:
            self._ev.append(_ResponseReceived(msg))

    def send_response(self, resp: Any, now: float) -> None:
        dest = self._src.pop(resp.top_via.branch) if resp.status >= 200 else None
        if dest is None:
            dest = self._src.get(resp.top_via.branch, UAC)
        self._tx.append(_Transmit(resp.to_bytes(), dest, resp))

    def events(self) -> list[Any]:
        ev, self._ev = self._ev, []
        return ev

    def transmits(self) -> list[_Transmit]:
        out, self._tx = self._tx, []
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass


class Pair:
    """A UAC layer and a UAS layer joined by an in-memory wire."""

    def __init__(self, impl: str) -> None:
        if impl == "wire-only":
            self.uac: Any = WireOnly()
            self.uas: Any = WireOnly()
            self.req_ev: Any = _RequestReceived
            self.resp_ev: Any = _ResponseReceived
        else:
            self.uac = tx.TransactionLayer(tx.TimerConfig())
            self.uas = tx.TransactionLayer(tx.TimerConfig())
            self.req_ev = tx.RequestReceived
            self.resp_ev = tx.ResponseReceived
        self.now = 0.0
        self.cseq = 0
        self.completed = 0

    # -- wire -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Move every pending transmit across the wire (bytes -> parse_message) until quiet."""
        moved = True
        while moved:
            moved = False
            for src, dst, src_ep in ((self.uac, self.uas, UAC), (self.uas, self.uac, UAS)):
                for t in src.transmits():
                    dst.receive(parse_message(t.data), src_ep, self.now)
                    moved = True

    def tick(self) -> None:
        self.now += 0.001
        for layer in (self.uac, self.uas):
            deadline = layer.get_timer()
            if deadline is not None and deadline <= self.now:
                layer.handle_timer(self.now)

    # -- requests ---------------------------------------------------------------------------

    def request(self, method: str, body: bytes = b"") -> Any:
        self.cseq += 1
        return make_request(
            method,
            URI(scheme="sip", user="988", host=UAS.host, port=UAS.port),
            via=Via("UDP", UAC.host, UAC.port, (("branch", new_branch()), ("rport", None))),
            from_=NameAddr(
                URI(scheme="sip", user="psap", host=UAC.host, port=UAC.port),
                "PSAP",
                (("tag", new_tag()),),
            ),
            to=NameAddr(URI(scheme="sip", user="988", host=UAS.host, port=UAS.port)),
            call_id=f"{new_tag()}@{UAC.host}",
            cseq=self.cseq,
            contact=NameAddr(URI(scheme="sip", user="psap", host=UAC.host, port=UAC.port)),
            body=body,
            content_type="application/sdp" if body else None,
        )

    def options(self) -> None:
        self.uac.send_request(self.request("OPTIONS"), UAS, self.now)
        self.flush()
        for ev in self.uas.events():
            if isinstance(ev, self.req_ev):
                self.uas.send_response(make_response(ev.request, 200, to_tag=new_tag()), self.now)
        self.flush()
        for ev in self.uac.events():
            if isinstance(ev, self.resp_ev) and ev.response.status >= 200:
                self.completed += 1
        self.tick()

    def invite(self) -> None:
        invite = self.request("INVITE", SDP)
        self.uac.send_request(invite, UAS, self.now)
        self.flush()
        to_tag = new_tag()
        for ev in self.uas.events():
            if isinstance(ev, self.req_ev) and ev.request.method == "INVITE":
                req = ev.request
                for status in (100, 180):
                    self.uas.send_response(make_response(req, status, to_tag=to_tag), self.now)
                    self.flush()
                ok = make_response(
                    req,
                    200,
                    to_tag=to_tag,
                    headers=[("Contact", f"<sip:988@{UAS.host}:{UAS.port}>")],
                    body=SDP,
                )
                ok.headers.add("Content-Type", "application/sdp")
                self.uas.send_response(ok, self.now)
        self.flush()
        final = None
        for ev in self.uac.events():
            if isinstance(ev, self.resp_ev) and ev.response.status >= 200:
                final = ev.response
        if final is not None and final.status < 300:
            ack = make_ack_for_2xx(invite, final)
            if hasattr(self.uac, "send_stateless"):  # ACK for a 2xx is not a transaction
                self.uac.send_stateless(ack, UAS)
            else:
                self.uac.send_request(ack, UAS, self.now)
            self.flush()
            for ev in self.uas.events():
                if isinstance(ev, self.req_ev) and ev.request.method == "ACK":
                    self.completed += 1
        self.tick()


def make_ack_for_2xx(invite: Any, ok: Any) -> Any:
    """ACK for a 2xx (a new transaction-less request from the UAC core, RFC 3261 §13.2.2.4)."""
    src = invite.headers
    return type(invite)(
        "ACK",
        invite.uri,
        [
            ("Via", str(Via("UDP", UAC.host, UAC.port, (("branch", new_branch()),)))),
            ("Max-Forwards", "70"),
            ("From", src.get("from") or ""),
            ("To", ok.headers.get("to") or ""),
            ("Call-ID", src.get("call-id") or ""),
            ("CSeq", f"{invite.cseq.seq} ACK"),
        ],
    )


def measure(impl: str, fn_name: str, count: int) -> tuple[float, int]:
    pair = Pair(impl)
    step: Callable[[], None] = getattr(pair, fn_name)
    for _ in range(50):  # warm-up
        step()
    pair.completed = 0
    t0 = time.perf_counter()
    for _ in range(count):
        step()
    elapsed = time.perf_counter() - t0
    if pair.completed != count:
        raise SystemExit(f"{impl} {fn_name}: {pair.completed}/{count} transactions completed")
    return count / elapsed, pair.completed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9, help="interleaved rounds (default 9)")
    ap.add_argument("--count", type=int, default=2000, help="transactions per round (2000)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    impls = ["transaction", "wire-only"] if tx is not None else ["wire-only"]
    if tx is None:
        print(
            "telephony.sip.transaction is not importable yet: running the wire-only baseline",
            file=sys.stderr,
        )
    kinds = {"options": "OPTIONS/200 (non-INVITE)", "invite": "INVITE/100/180/200 + ACK"}
    samples: dict[tuple[str, str], list[float]] = {(i, k): [] for k in kinds for i in impls}
    for _ in range(args.repeats):
        for (impl, kind), out in samples.items():  # interleaved: noise hits every case alike
            out.append(measure(impl, kind, args.count)[0])
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "repeats": args.repeats,
        "count": args.count,
    }
    results: dict[str, Any] = {}
    for kind, label in kinds.items():
        row: dict[str, Any] = {}
        for impl in impls:
            v = samples[(impl, kind)]
            row[impl] = {"median_tps": statistics.median(v), "min_tps": min(v), "max_tps": max(v)}
        if len(impls) == 2:
            t, w = samples[("transaction", kind)], samples[("wire-only", kind)]
            # per-round paired: how much of the wire-only rate is left with the layer in
            row["paired_tps_ratio"] = statistics.median(a / b for a, b in zip(t, w, strict=True))
            row["layer_us_per_tx"] = (
                1e6 / row["transaction"]["median_tps"] - 1e6 / row["wire-only"]["median_tps"]
            )
        results[label] = row
    if args.json:
        json.dump({"meta": meta, "results": results}, sys.stdout, indent=2)
        print()
        return 0
    print(
        f"# {meta['date']} Python {meta['python']}; loadavg {' '.join(meta['loadavg'])}; "
        f"median of {args.repeats} interleaved rounds x {args.count} transactions"
    )
    print(
        f"{'transaction':<26} {'impl':<12} {'median tx/s':>11} {'min':>7} {'max':>7} {'µs/tx':>7}"
    )
    for label, row in results.items():
        for impl in impls:
            r = row[impl]
            med = r["median_tps"]
            print(
                f"{label:<26} {impl:<12} {med:11.0f} {r['min_tps']:7.0f} {r['max_tps']:7.0f} "
                f"{1e6 / med:7.1f}"
            )
        if "paired_tps_ratio" in row:
            print(
                f"{'':<26} {'layer cost':<12} {row['layer_us_per_tx']:+.1f} µs/tx; "
                f"tx/s ratio transaction / wire-only (paired) {row['paired_tps_ratio']:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
