"""An in-memory SIP network with a fake clock, for testing the call layer without sockets.

Every node has a real :class:`TransactionLayer`; what a layer transmits is serialized, parsed
again and delivered to the node at the destination address (house rule 8: two peers wired
together, fake clock). :class:`Peer` is a scripted user agent (answers, rings forever, rejects,
sends REFER); :class:`FakeMedia` records what the controller bridged (the relay itself has its
own socket tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from telephony.sip.dialog import Dialog
from telephony.sip.errors import ParseError, SipError
from telephony.sip.headers import CSeq, NameAddr, Via, new_branch, new_tag
from telephony.sip.message import Request, Response, make_request, make_response
from telephony.sip.parser import parse_message
from telephony.sip.transaction import (
    CancelReceived,
    Endpoint,
    Event,
    RequestReceived,
    ResponseReceived,
    TimerConfig,
    TransactionKey,
    TransactionLayer,
)
from telephony.sip.uri import parse_uri

SDP_TEMPLATE = (
    "v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


def sdp(port: int) -> bytes:
    return SDP_TEMPLATE.format(port=port).encode()


class Net:
    """Nodes by address; ``run()`` delivers until quiet, ``advance(dt)`` moves the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.nodes: dict[tuple[str, int], Node] = {}
        self.clocks: list[Callable[[], float | None]] = []
        self.tickers: list[Callable[[float], None]] = []
        self.log: list[tuple[float, str, str]] = []  # (time, from->to, first line)

    def add(self, node: Node) -> None:
        self.nodes[(node.ep.host, node.ep.port)] = node

    def run(self) -> None:
        for _ in range(10_000):
            moved = False
            for node in list(self.nodes.values()):
                for tx in node.layer.transmits():
                    moved = True
                    target = self.nodes.get((tx.dest.host, tx.dest.port))
                    first = tx.data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
                    self.log.append(
                        (self.now, f"{node.name}->{target.name if target else '?'}", first)
                    )
                    if target is None:
                        continue
                    try:
                        msg = parse_message(tx.data)
                    except ParseError:
                        if node.name == "handoffd":
                            raise  # we sent something no peer could parse: a bug of ours
                        # a peer's malformed message: the transport answers a request 400 and
                        # drops a response (tests/e2e/test_calls.py); here it is dropped
                        self.log.append((self.now, f"dropped from {node.name}", first))
                        continue
                    target.layer.receive(msg, Endpoint("udp", node.ep.host, node.ep.port), self.now)
                for ev in node.layer.events():
                    moved = True
                    node.handle(ev)
            if not moved:
                return
        raise AssertionError("network never went quiet")

    def next_deadline(self) -> float | None:
        times = [n.layer.get_timer() for n in self.nodes.values()]
        times += [c() for c in self.clocks]
        real = [t for t in times if t is not None]
        return min(real) if real else None

    def advance(self, seconds: float) -> None:
        """Move the clock by ``seconds``, firing every timer due on the way."""
        end = self.now + seconds
        self.run()
        while True:
            nxt = self.next_deadline()
            if nxt is None or nxt > end:
                break
            self.now = max(self.now, nxt)
            for node in self.nodes.values():
                node.layer.handle_timer(self.now)
            for tick in self.tickers:
                tick(self.now)
            self.run()
        self.now = end


class Node:
    def __init__(self, net: Net, name: str, port: int) -> None:
        self.net = net
        self.name = name
        self.ep = Endpoint("udp", "127.0.0.1", port)
        self.layer = TransactionLayer(TimerConfig())
        self.handler: Callable[[Event], None] = lambda ev: None
        net.add(self)

    def handle(self, ev: Event) -> None:
        self.handler(ev)


class LayerPort:
    """The controller's SipPort over a node's transaction layer."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def send_request(self, request: Request, dest: Endpoint) -> TransactionKey:
        return self.node.layer.send_request(request, dest, self.node.net.now)

    def send_response(self, response: Response) -> None:
        self.node.layer.send_response(response, self.node.net.now)

    def send_stateless(self, message: Request | Response, dest: Endpoint) -> None:
        self.node.layer.send_stateless(message, dest)

    def send_bytes(self, data: bytes, dest: Endpoint) -> None:
        self.node.layer.send_stateless(parse_message(data), dest)

    def cancel(self, key: TransactionKey) -> TransactionKey | None:
        return self.node.layer.cancel(key, self.node.net.now)


@dataclass
class MediaHandle:
    host: str
    rtp_port: int
    label: str
    remote: tuple[str, int] | None = None
    closed: bool = False

    def set_remote(self, host: str, rtp_port: int, rtcp_port: int | None = None) -> None:
        self.remote = (host, rtp_port)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeMedia:
    """Stands in for the RTP relay: hands out ports, remembers bridges."""

    next_port: int = 40000
    handles: list[MediaHandle] = field(default_factory=list)
    bridges: list[tuple[MediaHandle, MediaHandle]] = field(default_factory=list)
    #: conference key -> [(handle, codec, telephone-event pt)] being mixed
    mixes: dict[str, list[tuple[MediaHandle, int, int | None]]] = field(default_factory=dict)
    #: conference key -> the handle held there with the comfort tone (MediaPort.hold)
    held: dict[str, MediaHandle] = field(default_factory=dict)
    #: (handle, telephone-event payload type, call id) whose keys are reported
    watched: list[tuple[MediaHandle, int, str]] = field(default_factory=list)

    def open(self, label: str) -> MediaHandle:
        h = MediaHandle("127.0.0.1", self.next_port, label)
        self.next_port += 2
        self.handles.append(h)
        return h

    def bridge(self, a: MediaHandle, b: MediaHandle) -> None:  # type: ignore[override]
        self._unmix(a, b)
        self.bridges = [(x, y) for x, y in self.bridges if not {id(x), id(y)} & {id(a), id(b)}]
        self.bridges.append((a, b))

    def unbridge(self, leg: MediaHandle) -> None:  # type: ignore[override]
        self._unmix(leg)
        self.bridges = [(x, y) for x, y in self.bridges if leg not in (x, y)]

    def mix(self, key: str, legs: Any) -> None:
        handles = [h for h, _, _ in legs]
        for other, parties in self.mixes.items():
            if other != key:
                parties[:] = [p for p in parties if p[0] not in handles]
        self.bridges = [(x, y) for x, y in self.bridges if x not in handles and y not in handles]
        self.mixes[key] = list(legs)
        self.held.pop(key, None)  # mixing takes a held leg off hold

    def unmix(self, key: str) -> None:
        self.mixes.pop(key, None)
        self.held.pop(key, None)

    def hold(self, key: str, leg: MediaHandle, codec: int, event_pt: int | None) -> None:  # type: ignore[override]
        self.mix(key, [(leg, codec, event_pt)])
        self.held[key] = leg

    def watch_keys(self, leg: MediaHandle, payload_type: int, key: str) -> None:
        self.watched.append((leg, payload_type, key))

    def _unmix(self, *handles: MediaHandle) -> None:
        for parties in self.mixes.values():
            parties[:] = [p for p in parties if p[0] not in handles]

    def mixed(self, key: str) -> list[MediaHandle]:
        return [h for h, _, _ in self.mixes.get(key, [])]

    def partner(self, h: MediaHandle) -> MediaHandle | None:
        for x, y in self.bridges:
            if x is h:
                return y
            if y is h:
                return x
        return None

    @property
    def open_count(self) -> int:
        return sum(1 for h in self.handles if not h.closed)


class Peer(Node):
    """A scripted user agent. ``mode``: ``answer`` (180 then 200 after ``answer_after``),
    ``ring`` (180 forever), or a status to reject with (e.g. 486)."""

    def __init__(self, net: Net, name: str, port: int, mode: str | int = "answer") -> None:
        super().__init__(net, name, port)
        self.mode = mode
        self.answer_after = 0.5
        self.reject_reason: str | None = None  # reason phrase of the rejection (mode: a status)
        #: what the 200 to an INVITE carries besides Contact (None: our SDP) and instead of it
        self.answer_headers: tuple[tuple[str, str], ...] = ()
        self.answer_body: bytes | None = None
        self.answer_contact = True
        #: the answer our ACK carries when our INVITE had no offer (delayed offer); b"": none
        self.ack_answer = sdp(port + 1000)
        self.acks: list[Request] = []
        self.dialogs: list[Dialog] = []  # every dialog it made (tests swap ``dialog`` around)
        #: in-dialog requests sent, until their final response (the dialog is told of it)
        self.sent: dict[tuple[str, CSeq], tuple[Dialog, Request]] = {}
        self.invites: list[Request] = []
        self.requests: list[Request] = []
        self.responses: list[Response] = []
        self.dialog: Dialog | None = None
        self.pending_answer: tuple[float, Request, str] | None = None
        self.handler = self._handle
        net.clocks.append(lambda: self.pending_answer[0] if self.pending_answer else None)
        net.tickers.append(self._tick)

    @property
    def contact(self) -> NameAddr:
        return NameAddr(parse_uri(f"sip:{self.name}@127.0.0.1:{self.ep.port}"))

    def via(self) -> Via:
        return Via("UDP", "127.0.0.1", self.ep.port, (("branch", new_branch()),))

    def send(self, req: Request, dest: Endpoint) -> None:
        self.layer.send_request(req, dest, self.net.now)

    def _handle(self, ev: Event) -> None:
        if isinstance(ev, RequestReceived):
            self._request(ev.request)
        elif isinstance(ev, ResponseReceived):
            self.responses.append(ev.response)
            r = ev.response
            mine = self.sent.pop((r.call_id, r.cseq), None) if r.status >= 200 else None
            if mine is not None and r.cseq.method == "INVITE":
                # tell its dialog the re-INVITE is over: the next may be sent (only INVITEs:
                # like most phones, this one does not end a call over a 481 to its REFER)
                with contextlib.suppress(SipError):
                    mine[0].on_response(mine[1], r)
            if 200 <= r.status < 300 and r.cseq.method == "INVITE":
                if self.dialog is None:
                    self.dialog = Dialog.from_uac(self.invites[-1], r)
                    self.dialogs.append(self.dialog)
                    request: Request | None = self.invites[-1]
                else:
                    request = mine[1] if mine is not None else None
                # our INVITE had no offer and the 2xx has one: the ACK carries our answer
                answer = request is not None and not request.body and bool(r.body)
                ack = self.dialog.create_ack(
                    r.cseq.seq,
                    self.via(),
                    body=self.ack_answer if answer else b"",
                    content_type="application/sdp" if answer and self.ack_answer else None,
                )
                self.acks.append(ack)
                self.layer.send_stateless(ack, ev.source)
        elif isinstance(ev, CancelReceived):
            self.requests.append(ev.cancel)
            if self.pending_answer is not None:
                _, invite, tag = self.pending_answer
                self.pending_answer = None
                self.layer.send_response(make_response(invite, 487, to_tag=tag), self.net.now)
            elif self.mode == "ring":
                invite = self.invites[-1]
                self.layer.send_response(make_response(invite, 487, to_tag="ring"), self.net.now)

    def _request(self, req: Request) -> None:
        self.requests.append(req)
        now = self.net.now
        if req.method == "INVITE" and not req.to.tag:
            self.invites.append(req)
            if isinstance(self.mode, int):
                reject = make_response(req, self.mode, self.reject_reason, to_tag=new_tag())
                self.layer.send_response(reject, now)
                return
            tag = "ring" if self.mode == "ring" else new_tag()
            ringing = make_response(req, 180, to_tag=tag, headers=(("Contact", str(self.contact)),))
            self.layer.send_response(ringing, now)
            if self.mode == "answer":
                self.pending_answer = (now + self.answer_after, req, tag)
        elif req.method == "INVITE":  # re-INVITE: answer with our SDP, in its own dialog
            dialog = next((d for d in (self.dialog, *self.dialogs) if d and d.matches(req)), None)
            if dialog is None:
                self.layer.send_response(make_response(req, 481), now)
                return
            dialog.on_request(req)
            ok = make_response(
                req,
                200,
                headers=(("Contact", str(self.contact)), ("Content-Type", "application/sdp")),
                body=sdp(self.ep.port + 1000),
            )
            self.layer.send_response(ok, now)
            dialog.on_response_sent(req, ok)  # answered: the next re-INVITE may come
        elif req.method == "ACK":
            return
        elif req.method in ("BYE", "NOTIFY", "OPTIONS"):
            if req.method == "BYE" and self.dialog is not None and self.dialog.matches(req):
                self.dialog = None
            self.layer.send_response(make_response(req, 200), now)
        else:
            self.layer.send_response(make_response(req, 405), now)

    def _tick(self, now: float) -> None:
        if self.pending_answer is None or self.pending_answer[0] > now:
            return
        _, invite, tag = self.pending_answer
        self.pending_answer = None
        self.dialog = Dialog.from_uas(invite, tag, self.contact, confirmed=True)
        self.dialogs.append(self.dialog)
        contact = (("Contact", str(self.contact)),) if self.answer_contact else ()
        ok = make_response(
            invite,
            200,
            to_tag=tag,
            headers=(*contact, *self.answer_headers, ("Content-Type", "application/sdp")),
            body=sdp(self.ep.port + 1000) if self.answer_body is None else self.answer_body,
        )
        self.layer.send_response(ok, now)

    # -- as a caller ------------------------------------------------------------------------

    def call(
        self,
        dest: Endpoint,
        user: str,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes | None = None,
    ) -> Request:
        target = parse_uri(f"sip:{user}@{dest.host}:{dest.port}")
        invite = make_request(
            "INVITE",
            target,
            via=self.via(),
            from_=NameAddr(
                parse_uri("sip:+18055550123@127.0.0.1"), "Caller", (("tag", new_tag()),)
            ),
            to=NameAddr(target),
            call_id=f"{new_tag()}@caller",
            cseq=1,
            contact=self.contact,
            headers=headers,
            body=sdp(self.ep.port + 1000) if body is None else body,
            content_type="application/sdp" if body is None or body else None,
        )
        self.invites.append(invite)
        self.send(invite, dest)
        return invite

    def in_dialog(self, method: str, dest: Endpoint, **kw: object) -> Request:
        assert self.dialog is not None
        req = self.dialog.create_request(method, self.via(), **kw)  # type: ignore[arg-type]
        self.sent[req.call_id, req.cseq] = (self.dialog, req)
        self.send(req, dest)
        return req

    def hang_up_if_answered(self, dest: Endpoint) -> int:
        """The caller's side of a call placed with :meth:`call`: asserts that a final answer
        came, hangs up (BYE, then 1 s) when it was a 2xx; returns its status."""
        finals = [s for s in self.statuses() if s >= 200]
        assert finals, self.statuses()
        if finals[-1] < 300:
            self.in_dialog("BYE", dest)
            self.net.advance(1.0)
        return finals[-1]

    def statuses(self, method: str = "INVITE") -> list[int]:
        return [r.status for r in self.responses if r.cseq.method == method]
