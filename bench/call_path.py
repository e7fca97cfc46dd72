"""The per-call work of handoffd's SIP and call layers, in one process, without sockets.

What ``bench/b2bua_cps.py`` measures end to end (SIPp -> handoffd -> SIPp, CPU ms per call)
mixes the event loop, the kernel, the relay's sockets and Redis with our Python. This script
times only the part that runs in handoffd's Python for the same call flow, deterministically, so
a change to ``telephony/sip`` or ``telephony/call`` can be judged in seconds and profiled with
exact call counts:

    uac --INVITE+SDP--> [handoffd] --INVITE+SDP--> uas
    uac <--100/180----- [handoffd] <----180------- uas
    uac <--200+SDP----- [handoffd] <--200+SDP----- uas
    uac -----ACK------> [handoffd] -----ACK------> uas
    uac -----BYE------> [handoffd] -----BYE------> uas
    uac <----200------- [handoffd] <----200------- uas

[handoffd] is the real code: :class:`telephony.io.stack.SipStack` (transaction layer, metrics
counts, serialization) with its transports replaced by a list, the transports' own
``parse_message`` on every datagram, :class:`telephony.call.b2bua.B2bua` with the bench config of
``b2bua_cps.py`` (trunk, position ``disp-1``, the repo's routing rules), ``from_call`` record
snapshots as the observer takes them, and the daemon's GC settings. Media is a stub (port
numbers only; the relay has its own bench). The uac and uas are SIPp's ``uac-basic-call`` /
``uas-basic-call`` messages written as text; their work is not timed.

The clock is simulated at ``--rate`` calls/s, so transaction timers (Timer K/J/D, the 2 s
shrink, 32 s waits) and call timers fire as they would at that rate: their cost is included.
Each round runs ``--calls`` calls; the result is the median over ``--rounds`` of µs per call.

Run:  .venv/bin/python bench/call_path.py [--calls 3000] [--rounds 7] [--profile FILE]
      PYTHONPATH=/tmp/snapold .venv/bin/python bench/call_path.py   # another source tree
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

import telephony  # noqa: E402
from telephony.call.b2bua import B2bua  # noqa: E402
from telephony.config import load_config  # noqa: E402
from telephony.io.stack import SipStack  # noqa: E402
from telephony.recording.events import from_call  # noqa: E402
from telephony.routing import load_rules  # noqa: E402
from telephony.sip.parser import parse_message  # noqa: E402
from telephony.sip.transaction import Endpoint, TimerConfig  # noqa: E402

HOST = "127.0.0.1"
ME = Endpoint("udp", HOST, 5060)
UAC = Endpoint("udp", HOST, 5061)
UAS = Endpoint("udp", HOST, 5062)

CONFIG = f"""sip:
  listen: ["udp:{HOST}:5060"]
http:
  host: {HOST}
  port: 8080
  tokens: ["bench-token"]
media:
  host: {HOST}
  port_min: 20000
  port_max: 23999
trunks:
  psap-a:
    allow: [127.0.0.0/8]
    psap_id: psap-a
    transfer_numbers: ["988"]
positions:
  disp-1:
    uri: sip:disp1@{HOST}:{UAS.port}
    numbers: ["2001"]
rules: {ROOT / "routing_rules"}
probe:
  interval: 0
records:
  spool:
    dir: spool
"""

INVITE = (
    "INVITE sip:disp-1@{me}:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP {me}:5061;branch=z9hG4bK-{n}-1-0;rport\r\n"
    'From: "SIPp caller" <sip:caller@{me}:5061>;tag=4242SIPpTag00{n}\r\n'
    "To: <sip:disp-1@{me}:5060>\r\n"
    "Call-ID: {n}-4242@{me}\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:caller@{me}:5061>\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{sdp}"
)
UAC_SDP = (
    f"v=0\r\no=sipp 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
)
UAS_SDP = (
    f"v=0\r\no=sipp 2 2 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
    "m=audio 6002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
IN_DIALOG = (
    "{method} {target} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP {me}:5061;branch=z9hG4bK-{n}-{seq}-{k};rport\r\n"
    'From: "SIPp caller" <sip:caller@{me}:5061>;tag=4242SIPpTag00{n}\r\n'
    "To: <sip:disp-1@{me}:5060>;{to_tag}\r\n"
    "Call-ID: {n}-4242@{me}\r\n"
    "CSeq: {seq} {method}\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


def header_lines(data: bytes) -> dict[str, str]:
    """First line of each header of a message (the peers' reading, like SIPp's [last_*:])."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    out: dict[str, str] = {}
    for line in head.split("\r\n")[1:]:
        name = line.split(":", 1)[0].strip().lower()
        out.setdefault(name, line)
    return out


def uas_response(invite: bytes, status: str, *, tag: str, sdp: str = "") -> bytes:
    """What the uas sends back for ``invite`` (SIPp's uas-basic-call, as text)."""
    h = header_lines(invite)
    lines = [f"SIP/2.0 {status}", h["via"], h["from"]]
    lines.append(h["to"] if ";tag=" in h["to"] else f"{h['to']};tag={tag}")
    lines += [h["call-id"], h["cseq"], f"Contact: <sip:callee@{HOST}:{UAS.port}>"]
    if sdp:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(sdp)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + sdp).encode()


class FakeLeg:
    """The media stub: an address for the SDP, nothing else."""

    __slots__ = ("host", "rtp_port")
    _ports = itertools.count()

    def __init__(self) -> None:
        self.host = HOST
        self.rtp_port = 20000 + 2 * (next(self._ports) % 2000)

    def set_remote(self, host: str, rtp_port: int, rtcp_port: int | None = None) -> None:
        return None

    def close(self) -> None:
        return None


class FakeMedia:
    def open(self, label: str) -> FakeLeg:
        return FakeLeg()

    def bridge(self, a: Any, b: Any) -> None:
        return None

    def unbridge(self, leg: Any) -> None:
        return None

    def mix(self, key: str, legs: Any) -> None:
        return None

    def unmix(self, key: str) -> None:
        return None

    def watch_keys(self, leg: Any, payload_type: int, key: str) -> None:
        return None


class Clock:
    """The simulated loop: time, and the stack's one ``call_at`` handle."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.deadline: float | None = None

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, _callback: Any) -> Clock:
        self.deadline = when
        return self

    def cancel(self) -> None:
        self.deadline = None


class Harness:
    """The daemon's wiring of SipStack and B2bua (``Daemon._on_event`` / ``call_core``)."""

    def __init__(self, rate: float) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="call_path-"))
        cfg_path = tmp / "handoffd.yaml"
        cfg_path.write_text(CONFIG)
        config = load_config(cfg_path)
        rules = load_rules(config.rules, trunks=tuple(config.trunks))
        self.clock = Clock()
        self.step = 1.0 / rate
        self.stack = SipStack(self._on_event, TimerConfig(config.sip.t1, config.sip.t2))
        self.stack._loop = self.clock  # type: ignore[assignment]
        self.out: list[tuple[bytes, Endpoint]] = []
        self.stack.transports.send = self._capture  # type: ignore[method-assign]
        self.core = B2bua(self.stack, FakeMedia(), config, rules, local={"udp": ME})  # type: ignore[arg-type]
        self.core.on_record = self._record
        self._busy = False
        self._queue: list[Any] = []
        self.records = 0

    def _capture(self, data: bytes, dest: Endpoint) -> None:
        self.out.append((data, dest))

    def _record(self, name: str, call: Any, fields: dict[str, Any]) -> None:
        from_call(name, call, fields, event_id=str(self.records), wall=self.core.wall)
        self.records += 1

    def _on_event(self, ev: Any) -> None:
        if self._busy:
            self._queue.append(ev)
            return
        self._busy = True
        try:
            self.core.handle(ev, self.clock.now)
            while self._queue:
                self.core.handle(self._queue.pop(0), self.clock.now)
        finally:
            self._busy = False

    def deliver(self, data: bytes, source: Endpoint) -> None:
        """A datagram arrives (``_UdpProtocol.datagram_received``)."""
        self.stack._on_message(parse_message(data), source)

    def timers(self) -> None:
        now = self.clock.now
        dl = self.clock.deadline
        if dl is not None and dl <= now:
            self.clock.deadline = None
            self.stack._wake.fire()
        core_dl = self.core.get_timer()
        if core_dl is not None and core_dl <= now:
            self._busy = True
            try:
                self.core.handle_timer(now)
            finally:
                self._busy = False

    def take(self, dest: Endpoint, start: str) -> bytes:
        """The message we sent to ``dest`` that starts with ``start``."""
        for i, (data, d) in enumerate(self.out):
            if d == dest and data.startswith(start.encode()):
                del self.out[i]
                return data
        raise AssertionError(f"handoffd sent no {start!r} to {dest}: {self.out!r}")

    def advance(self) -> None:
        self.clock.now += self.step


def one_call(h: Harness, n: int, timed: list[float]) -> None:
    """One call through ``h``; the time spent inside handoffd is added to ``timed[0]``."""
    pc = time.thread_time  # CPU time: the box is shared, wall time would count others' work
    sdp = UAC_SDP
    invite = INVITE.format(me=HOST, n=n, length=len(sdp), sdp=sdp).encode()
    t = pc()
    h.deliver(invite, UAC)
    h.timers()
    spent = pc() - t
    out_invite = h.take(UAS, "INVITE ")
    tag = f"4243SIPpTag01{n}"
    ringing = uas_response(out_invite, "180 Ringing", tag=tag)
    ok = uas_response(out_invite, "200 OK", tag=tag, sdp=UAS_SDP)
    t = pc()
    h.deliver(ringing, UAS)
    h.deliver(ok, UAS)
    spent += pc() - t
    h.take(UAS, "ACK ")
    ok_up = h.take(UAC, "SIP/2.0 200")
    to_tag = header_lines(ok_up)["to"].split(";", 1)[1]
    target = f"sip:handoffd@{HOST}:5060"
    ack = IN_DIALOG.format(method="ACK", target=target, me=HOST, n=n, seq=1, k=1, to_tag=to_tag)
    bye = IN_DIALOG.format(method="BYE", target=target, me=HOST, n=n, seq=2, k=2, to_tag=to_tag)
    h.advance()
    t = pc()
    h.deliver(ack.encode(), UAC)
    h.timers()
    h.deliver(bye.encode(), UAC)
    spent += pc() - t
    out_bye = h.take(UAS, "BYE ")
    bye_ok = uas_response(out_bye, "200 OK", tag="")
    t = pc()
    h.deliver(bye_ok, UAS)
    h.timers()
    spent += pc() - t
    h.out.clear()  # 100 Trying, 180, 200 to the uac
    timed[0] += spent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000, help="calls per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument(
        "--warmup", type=int, default=-1, help="untimed calls first (default: 40 s of calls)"
    )
    ap.add_argument("--rate", type=float, default=300.0, help="simulated calls/s")
    ap.add_argument("--profile", metavar="FILE", help="cProfile the timed rounds to FILE")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    h = Harness(args.rate)
    # the daemon's GC settings (telephony/daemon.py): freeze what exists before the first call
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 5, 100)
    n = 0
    scratch = [0.0]
    warmup = args.warmup if args.warmup >= 0 else int(40 * args.rate)
    for _ in range(warmup):  # past the 32 s RFC 3261 waits: the live state of a steady load
        n += 1
        one_call(h, n, scratch)
        h.advance()
    prof = cProfile.Profile() if args.profile else None
    gc_time = [0.0, 0.0]  # seconds in collections this round, collections

    def on_gc(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            gc_time[1] -= time.thread_time()
        else:
            gc_time[1] += time.thread_time()
            gc_time[0] += 1

    gc.callbacks.append(on_gc)
    per_call: list[float] = []
    gc_per_call: list[float] = []
    for _ in range(args.rounds):
        timed = [0.0]
        gc_time[:] = [0.0, 0.0]
        if prof is not None:
            prof.enable()
        for _ in range(args.calls):
            n += 1
            one_call(h, n, timed)
            h.advance()
        if prof is not None:
            prof.disable()
        per_call.append(1e6 * timed[0] / args.calls)
        gc_per_call.append(1e6 * gc_time[1] / args.calls)
    if prof is not None:
        prof.dump_stats(args.profile)
    result = {
        "code": str(Path(telephony.__file__).resolve().parent.parent),
        "calls_per_round": args.calls,
        "rounds": per_call,
        "median_us_per_call": statistics.median(per_call),
        "min_us_per_call": min(per_call),
        "gc_us_per_call": gc_per_call,
        "loadavg": os.getloadavg(),
        "live_calls_after": len(h.core.calls),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['code']}: {result['median_us_per_call']:.1f} µs per call (median of "
            f"{args.rounds} x {args.calls}; min {result['min_us_per_call']:.1f}; rounds "
            + ", ".join(f"{x:.0f}" for x in per_call)
            + f"); of which GC {statistics.median(gc_per_call):.1f}; loadavg "
            f"{os.getloadavg()[0]:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
