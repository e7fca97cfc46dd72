"""The parties of bench/trigger_latency.py: the 911 caller, the dispatcher and 988, played with
raw UDP sockets and SIP written as text, plus a kept-alive HTTP client for handoffd's API.

:class:`Bench` drives one handoffd one call at a time: ``setup`` (the caller's INVITE, the
dispatcher answers), ``prepare`` / ``fire`` (the trigger, timed: API request, REFER or RFC 4733
key presses, up to the 988 INVITE read off the 988 socket), ``finish`` (988 answers 486, the
transfer fails back, the caller hangs up). See trigger_latency.py's docstring for the flow.
"""

from __future__ import annotations

import json
import random
import re
import selectors
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
TOKEN = "bench-token"
TRIGGERS = ("api", "refer", "dtmf")
WAIT_S = 2.0  # longest wait for any one step of a call
KEYS = "0123456789*#ABCD"

COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
}


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------- SIP as text


@dataclass
class Msg:
    first: str
    headers: list[tuple[str, str]]  # (lower-case full name, value)
    body: bytes

    @property
    def is_request(self) -> bool:
        return not self.first.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        return self.first.split(" ", 1)[0]

    @property
    def status(self) -> int:
        return int(self.first.split(" ", 2)[1])

    def get(self, name: str) -> str:
        for n, v in self.headers:
            if n == name:
                return v
        return ""

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    @property
    def call_id(self) -> str:
        return self.get("call-id")

    @property
    def cseq_method(self) -> str:
        return self.get("cseq").split()[-1] if self.get("cseq") else ""


def parse(data: bytes) -> Msg:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        headers.append((COMPACT.get(name, name), value.strip()))
    return Msg(lines[0], headers, body)


def tag_of(value: str) -> str:
    m = re.search(r";\s*tag=([^;>\s]+)", value)
    return m.group(1) if m else ""


def uri_of(value: str) -> str:
    m = re.search(r"<([^>]+)>", value)
    return m.group(1) if m else value.split(";", 1)[0].strip()


def rand_hex(n: int = 12) -> str:
    return f"{random.getrandbits(4 * n):0{n}x}"


def branch() -> str:
    return "z9hG4bK-" + rand_hex()


def build(first: str, headers: list[str], body: bytes = b"", ctype: str = "") -> bytes:
    lines = [first, *headers]
    if body:
        lines.append(f"Content-Type: {ctype}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def response(
    req: Msg,
    status: int,
    reason: str,
    *,
    to_tag: str = "",
    extra: tuple[str, ...] = (),
    body: bytes = b"",
) -> bytes:
    to = req.get("to")
    if to_tag and not tag_of(to):
        to += f";tag={to_tag}"
    headers = [f"Via: {v}" for v in req.all("via")]
    headers += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.call_id}"]
    headers += [f"CSeq: {req.get('cseq')}", *extra]
    return build(f"SIP/2.0 {status} {reason}", headers, body, "application/sdp")


def sdp(user: str, port: int, payload_types: list[int], te_pt: int) -> bytes:
    names = {0: "PCMU", 8: "PCMA"}
    lines = [
        "v=0",
        f"o={user} 1 1 IN IP4 {HOST}",
        "s=-",
        f"c=IN IP4 {HOST}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(map(str, [*payload_types, te_pt]))}",
        *(f"a=rtpmap:{pt} {names[pt]}/8000" for pt in payload_types),
        f"a=rtpmap:{te_pt} telephone-event/8000",
        f"a=fmtp:{te_pt} 0-15",
        "a=ptime:20",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def sdp_media(body: bytes) -> tuple[tuple[str, int], list[int], int | None]:
    """(c= host, m=audio port), the offered payload types and the telephone-event one."""
    text = body.decode("utf-8", "replace")
    c = re.search(r"^c=IN IP4 (\S+)", text, re.M)
    m = re.search(r"^m=audio (\d+) RTP/AVP ([\d ]+)", text, re.M)
    te = re.search(r"^a=rtpmap:(\d+) telephone-event/", text, re.M)
    if c is None or m is None:
        raise BenchError("no audio in handoffd's SDP offer to the dispatcher")
    pts = [int(x) for x in m.group(2).split()]
    return (c.group(1), int(m.group(1))), pts, int(te.group(1)) if te else None


PIDF = """<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" \
xmlns:gp="urn:ietf:params:xml:ns:pidf:geopriv10" xmlns:gml="http://www.opengis.net/gml" \
xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="pres:caller@psap.example.org">
<dm:device id="handset">
<gp:geopriv>
<gp:location-info>
<gml:Point srsName="urn:ogc:def:crs:EPSG::4326"><gml:pos>34.4208 -119.6982</gml:pos></gml:Point>
</gp:location-info>
<gp:usage-rules/>
<gp:method>GPS</gp:method>
</gp:geopriv>
</dm:device>
</presence>
"""


def te_packet(seq: int, ts: int, ssrc: int, pt: int, key: str, *, end: bool) -> bytes:
    """An RFC 4733 telephone-event RTP packet (volume 10, duration 800 = 100 ms)."""
    marker = 0x80 if not end and seq % 4 == 0 else 0
    head = struct.pack("!BBHII", 0x80, marker | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    return head + struct.pack("!BBH", KEYS.index(key), (0x80 if end else 0) | 10, 800)


# ---------------------------------------------------------------------------- HTTP, kept alive


class Http:
    """A tiny HTTP/1.1 client on one kept-alive connection (Content-Length bodies only)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection((HOST, port), timeout=WAIT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request_bytes(self, method: str, path: str, body: bytes | None = None) -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
        head += f"Authorization: Bearer {TOKEN}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + (body or b"")

    def read_response(self) -> tuple[int, Any]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("HTTP connection closed by handoffd")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "transfer-encoding":
                raise BenchError("chunked HTTP response: not supported by the bench client")
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("HTTP connection closed by handoffd")
            rest += chunk
        self.buf = rest[length:]
        body = rest[:length]
        return status, json.loads(body) if body else None

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        self.sock.sendall(self.request_bytes(method, path, body))
        return self.read_response()


# ---------------------------------------------------------------------------- the parties


@dataclass
class CallState:
    trigger: str
    token: str = field(default_factory=lambda: rand_hex(16))
    call_id: str = field(default_factory=lambda: f"bench-{rand_hex(16)}@{HOST}")
    from_tag: str = field(default_factory=rand_hex)
    hid: str = ""  # handoffd's call id
    caller_final: Msg | None = None
    caller_ack: bytes = b""
    caller_bye_ok: bool = False
    disp_invite: Msg | None = None
    disp_tag: str = field(default_factory=rand_hex)
    disp_ok: bytes = b""
    disp_acked: bool = False
    disp_bye: bool = False
    notify_final: str | None = None
    refer_status: int | None = None
    dest_invites: list[str] = field(default_factory=list)
    media_dst: tuple[str, int] | None = None
    te_pt: int | None = None


class Party:
    def __init__(
        self,
        name: str,
        handler: Callable[[Msg, tuple[str, int]], None] | None,
        port: int = 0,
    ) -> None:
        self.name = name
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((HOST, port))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()


class Bench:
    """The caller, the dispatcher and 988, driving one handoffd one call at a time."""

    def __init__(self, sip_port: int, http_port: int, disp: Party, dest: Party) -> None:
        self.sip = (HOST, sip_port)
        self.caller = Party("caller", self.on_caller)
        self.disp = disp
        disp.handler = self.on_disp
        self.dest = dest
        dest.handler = self.on_dest
        self.caller_media = Party("caller-media", None)
        self.disp_media = Party("dispatcher-media", None)
        self.sel = selectors.DefaultSelector()
        for p in (self.caller, self.disp, self.dest, self.caller_media, self.disp_media):
            self.sel.register(p.sock, selectors.EVENT_READ, p)
        self.dest_sel = selectors.DefaultSelector()
        self.dest_sel.register(dest.sock, selectors.EVENT_READ, dest)
        self.http = Http(http_port)
        self.c = CallState("none")
        self.dest_tags: dict[str, str] = {}
        self.stray = Counter[str]()
        self._after: Callable[[], None] = lambda: None  # dtmf: the end copies after t1

    def close(self) -> None:
        self.http.sock.close()
        for p in (self.caller, self.caller_media, self.disp_media):
            p.close()

    # -- the event pump ---------------------------------------------------------------------

    def pump(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            party: Party = key.data
            while True:
                try:
                    data, addr = party.sock.recvfrom(65535)
                except BlockingIOError:
                    break
                if party.handler is not None and data[:1].isalpha():
                    party.handler(parse(data), addr)

    def wait_until(self, cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"call {self.c.trigger}: timed out waiting for {what}")
            self.pump(min(left, 0.05))

    def drain(self) -> None:
        self.pump(0)

    # -- handlers -----------------------------------------------------------------------------

    def on_caller(self, msg: Msg, addr: tuple[str, int]) -> None:
        c, sock = self.c, self.caller.sock
        if msg.is_request:
            if msg.method == "ACK":
                return
            extra: tuple[str, ...] = ()
            body = b""
            if msg.method == "INVITE":  # a re-INVITE: answer with our SDP
                extra = (f"Contact: <sip:psap-cpe@{HOST}:{self.caller.port}>",)
                body = sdp("cpe", self.caller_media.port, [8, 0], 101)
            sock.sendto(response(msg, 200, "OK", extra=extra, body=body), addr)
            return
        if msg.call_id != c.call_id:
            self.stray["caller: response for an old call"] += 1
            return
        if msg.cseq_method == "INVITE" and msg.status >= 200:
            if c.caller_final is None:
                c.caller_final = msg
                to = msg.get("to")
                if msg.status < 300:
                    target = uri_of(msg.get("contact"))
                    c.caller_ack = build(
                        f"ACK {target} SIP/2.0",
                        [
                            f"Via: SIP/2.0/UDP {HOST}:{self.caller.port};branch={branch()};rport",
                            "Max-Forwards: 70",
                            f"From: {self.caller_from(c)}",
                            f"To: {to}",
                            f"Call-ID: {c.call_id}",
                            "CSeq: 1 ACK",
                        ],
                    )
            if c.caller_ack:  # the 2xx and its retransmissions each get the ACK
                sock.sendto(c.caller_ack, addr)
        elif msg.cseq_method == "BYE" and msg.status >= 200:
            c.caller_bye_ok = True

    def on_disp(self, msg: Msg, addr: tuple[str, int]) -> None:
        c, sock = self.c, self.disp.sock
        if not msg.is_request:
            if msg.cseq_method == "REFER" and msg.call_id == self.disp_call_id():
                c.refer_status = msg.status
            return
        method, current = msg.method, msg.call_id == self.disp_call_id()
        contact = f"Contact: <sip:disp1@{HOST}:{self.disp.port}>"
        if method == "INVITE" and not tag_of(msg.get("to")):
            if c.disp_invite is None and c.caller_final is None:
                c.disp_invite = msg
                c.media_dst, offered, c.te_pt = sdp_media(msg.body)
                codec = 0 if 0 in offered else 8
                answer = sdp("dispatcher", self.disp_media.port, [codec], c.te_pt or 101)
                sock.sendto(
                    response(msg, 180, "Ringing", to_tag=c.disp_tag, extra=(contact,)), addr
                )
                c.disp_ok = response(
                    msg,
                    200,
                    "OK",
                    to_tag=c.disp_tag,
                    extra=(contact, "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, NOTIFY"),
                    body=answer,
                )
            if msg.call_id == self.disp_call_id() and c.disp_ok:
                sock.sendto(c.disp_ok, addr)  # first send or a retransmitted INVITE
            return
        if method == "ACK":
            if current:
                c.disp_acked = True
            return
        body = b""
        extra: tuple[str, ...] = ()
        if method == "INVITE":  # re-INVITE
            extra = (contact,)
            body = sdp("dispatcher", self.disp_media.port, [0], c.te_pt or 101)
        sock.sendto(response(msg, 200, "OK", extra=extra, body=body), addr)
        if not current:
            return
        if method == "BYE":
            c.disp_bye = True
        elif method == "NOTIFY" and "terminated" in msg.get("subscription-state"):
            c.notify_final = msg.body.decode("utf-8", "replace").strip()

    def on_dest(self, msg: Msg, addr: tuple[str, int]) -> None:
        sock = self.dest.sock
        if not msg.is_request:
            return
        if msg.method == "INVITE":
            tag = self.dest_tags.setdefault(msg.call_id, rand_hex())
            if msg.call_id not in self.c.dest_invites:
                self.c.dest_invites.append(msg.call_id)
            sock.sendto(response(msg, 486, "Busy Here", to_tag=tag), addr)
        elif msg.method != "ACK":
            sock.sendto(response(msg, 200, "OK"), addr)

    # -- one call -----------------------------------------------------------------------------

    def disp_call_id(self) -> str:
        inv = self.c.disp_invite
        return inv.call_id if inv is not None else "-"

    def caller_from(self, c: CallState) -> str:
        return f'"Wireless Caller" <sip:+18055550123@{HOST}:{self.caller.port}>;tag={c.from_tag}'

    def caller_invite(self, c: CallState) -> bytes:
        tok, port = c.token, self.caller.port
        sdp_part = sdp("cpe", self.caller_media.port, [8, 0], 101).decode()
        body = (
            "--handoff-boundary-1\r\nContent-Type: application/sdp\r\n\r\n"
            f"{sdp_part}\r\n"
            "--handoff-boundary-1\r\nContent-Type: application/pidf+xml\r\n"
            f"Content-ID: <loc-{tok}@psap.example.org>\r\n\r\n"
            f"{PIDF.replace(chr(10), chr(13) + chr(10))}\r\n"
            "--handoff-boundary-1--\r\n"
        ).encode()
        return build(
            f"INVITE sip:2001@{HOST}:{self.sip[1]} SIP/2.0",
            [
                f"Via: SIP/2.0/UDP {HOST}:{port};branch={branch()};rport",
                "Max-Forwards: 70",
                f"From: {self.caller_from(c)}",
                f"To: <sip:2001@{HOST}:{self.sip[1]}>",
                f"Call-ID: {c.call_id}",
                "CSeq: 1 INVITE",
                f"Contact: <sip:psap-cpe@{HOST}:{port}>",
                "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS",
                "P-Asserted-Identity: <tel:+18055550123>",
                f"Call-Info: <urn:emergency:uid:callid:{tok}:psap.example.org>"
                ";purpose=emergency-CallId",
                f"Call-Info: <urn:emergency:uid:incidentid:{tok}:psap.example.org>"
                ";purpose=emergency-IncidentId",
                f"Call-Info: <https://provider.example.com/ecd/{tok}/providerinfo.xml>"
                ";purpose=EmergencyCallData.ProviderInfo",
                f"Geolocation: <cid:loc-{tok}@psap.example.org>",
                "Geolocation-Routing: yes",
                "Resource-Priority: esnet.1",
                "User-to-User: 56a390f3d2b7310023a2;encoding=hex;purpose=isdn-uui;content=isdn-uui",
                "X-Incident-Priority: high",
                "Accept-Language: en",
                "MIME-Version: 1.0",
            ],
            body,
            "multipart/mixed;boundary=handoff-boundary-1",
        )

    def setup(self, trigger: str) -> CallState:
        c = self.c = CallState(trigger)
        self.drain()
        self.caller.sock.sendto(self.caller_invite(c), self.sip)
        self.wait_until(lambda: c.caller_final is not None and c.disp_acked, "the answer")
        assert c.caller_final is not None
        if c.caller_final.status != 200:
            raise BenchError(f"caller got {c.caller_final.first}")
        status, body = self.http.call("GET", "/v1/calls")
        if status != 200:
            raise BenchError(f"GET /v1/calls: {status}")
        for call in body["calls"]:
            if any(leg["sip_call_id"] == c.call_id for leg in call["legs"]):
                c.hid = call["id"]
        if not c.hid:
            raise BenchError("the call is not in GET /v1/calls")
        return c

    def prepare(self, c: CallState) -> Callable[[], object]:
        """Everything up to the trigger; returns the function that sends it (t0 is taken
        right before it is called)."""
        if c.trigger == "api":
            req = self.http.request_bytes(
                "POST", f"/v1/calls/{c.hid}/transfers", b'{"mode":"warm"}'
            )
            return lambda: self.http.sock.sendall(req)
        inv = c.disp_invite
        assert inv is not None
        if c.trigger == "refer":
            refer = build(
                f"REFER {uri_of(inv.get('contact'))} SIP/2.0",
                [
                    f"Via: SIP/2.0/UDP {HOST}:{self.disp.port};branch={branch()};rport",
                    "Max-Forwards: 70",
                    f"From: {inv.get('to')};tag={c.disp_tag}",
                    f"To: {inv.get('from')}",
                    f"Call-ID: {inv.call_id}",
                    "CSeq: 101 REFER",
                    f"Contact: <sip:disp1@{HOST}:{self.disp.port}>",
                    f"Refer-To: <sip:988@{self.sip[0]}:{self.sip[1]}>",
                    f"Referred-By: <sip:disp-1@{HOST}:{self.disp.port}>",
                ],
            )
            return lambda: self.disp.sock.sendto(refer, self.sip)
        # dtmf: "*" now, "8" start now, "8" end at t0
        if c.media_dst is None or c.te_pt is None:
            raise BenchError("handoffd offered the dispatcher no telephone-event")
        dst, pt, ssrc = c.media_dst, c.te_pt, random.getrandbits(32)
        ts = random.getrandbits(31)
        send = self.disp_media.sock.sendto
        send(te_packet(0, ts, ssrc, pt, "*", end=False), dst)
        for seq in (1, 2, 3):
            send(te_packet(seq, ts, ssrc, pt, "*", end=True), dst)
        time.sleep(0.005)
        send(te_packet(4, ts + 1600, ssrc, pt, "8", end=False), dst)
        end8 = [te_packet(seq, ts + 1600, ssrc, pt, "8", end=True) for seq in (5, 6, 7)]

        def after() -> None:
            for p in end8[1:]:
                send(p, dst)

        self._after = after
        return lambda: send(end8[0], dst)

    def fire(self, c: CallState, send: Callable[[], object]) -> tuple[int, int]:
        """Send the trigger; (t0, t1) in perf_counter ns (CLOCK_MONOTONIC, the same clock in
        every process): right before sending, right after this call's 988 INVITE was read."""
        self.drain()
        dest = self.dest.sock
        t0 = time.perf_counter_ns()
        send()
        deadline = time.monotonic() + WAIT_S
        while True:
            if not self.dest_sel.select(max(0.0, deadline - time.monotonic())):
                raise BenchError(f"{c.trigger}: no 988 INVITE within {WAIT_S} s")
            try:
                data, addr = dest.recvfrom(65535)
            except BlockingIOError:
                continue
            t1 = time.perf_counter_ns()
            msg = parse(data)
            self.on_dest(msg, addr)
            if msg.is_request and msg.method == "INVITE" and c.token in msg.get("call-info"):
                return t0, t1
            self.stray["988: not this call's INVITE"] += 1

    def finish(self, c: CallState) -> None:
        """Wait for the transfer to fail back to the dispatcher, then hang up."""
        if c.trigger == "api":
            status, body = self.http.read_response()
            if status != 202:
                raise BenchError(f"POST transfers: {status} {body}")
            tid = body["id"]
        else:
            if c.trigger == "dtmf":
                self._after()
            tid = ""
            deadline = time.monotonic() + WAIT_S
            while not tid:
                self.pump(0.002)
                _, view = self.http.call("GET", f"/v1/calls/{c.hid}")
                tid = view.get("transfer_id") or ""
                if time.monotonic() > deadline:
                    raise BenchError(f"{c.trigger}: no transfer on the call")
        deadline = time.monotonic() + WAIT_S
        while True:
            self.pump(0.002)
            _, view = self.http.call("GET", f"/v1/transfers/{tid}")
            if view["state"] in ("completed", "failed", "cancelled", "abandoned"):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{c.trigger}: transfer still {view['state']}")
        if view["trigger"] != c.trigger or view["state"] != "failed":
            raise BenchError(f"{c.trigger}: transfer {view['trigger']} ended {view['state']}")
        if c.trigger == "refer":
            self.wait_until(lambda: c.notify_final is not None, "the final NOTIFY")
            if c.refer_status != 202:
                raise BenchError(f"REFER got {c.refer_status}")
        self.hangup(c)

    def hangup(self, c: CallState) -> None:
        final = c.caller_final
        if final is not None and final.status == 200:
            bye = build(
                f"BYE {uri_of(final.get('contact'))} SIP/2.0",
                [
                    f"Via: SIP/2.0/UDP {HOST}:{self.caller.port};branch={branch()};rport",
                    "Max-Forwards: 70",
                    f"From: {self.caller_from(c)}",
                    f"To: {final.get('to')}",
                    f"Call-ID: {c.call_id}",
                    "CSeq: 2 BYE",
                ],
            )
            self.caller.sock.sendto(bye, self.sip)
            self.wait_until(lambda: c.caller_bye_ok and c.disp_bye, "the BYEs")
        deadline = time.monotonic() + WAIT_S
        while True:
            _, body = self.http.call("GET", "/v1/calls")
            if not body["calls"]:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{len(body['calls'])} calls still up after the hang-up")
            self.pump(0.005)
