"""A minimal user agent built on our stack: enough to prove interop with real peers.

:class:`MiniUas` answers every INVITE (180, then 200 with SDP), takes the ACK and answers BYE.
:class:`MiniUac` places calls: INVITE, ACK for the 2xx, BYE after a hold time. Both speak only
through :class:`telephony.io.stack.SipStack`, so what they prove is what the stack does.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from telephony.io.stack import SipStack
from telephony.sip import (
    NameAddr,
    Request,
    Response,
    Via,
    make_request,
    make_response,
    new_branch,
    new_tag,
    parse_uri,
)
from telephony.sip.dialog import AckTimedOut, Dialog, DialogTable, Uas2xxRetransmitter
from telephony.sip.transaction import (
    Endpoint,
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionKey,
    TransactionTimedOut,
    response_destination,
)

SDP = (
    b"v=0\r\n"
    b"o=handoff 1 1 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
)


def _via(local: Endpoint) -> Via:
    return Via(local.transport.upper(), local.host, local.port, (("branch", new_branch()),))


@dataclass
class MiniUas:
    """Answers calls. Counts what it saw so tests can assert on it."""

    stack: SipStack
    local: Endpoint
    invites: int = 0
    acks: int = 0
    byes: int = 0
    unknown_dialog: int = 0
    ack_timeouts: int = 0
    dialogs: DialogTable = field(default_factory=DialogTable)
    pending_2xx: dict[tuple[str, str, str], Uas2xxRetransmitter] = field(default_factory=dict)

    def _retransmit(self, r: Uas2xxRetransmitter, dest: Endpoint) -> None:
        """Drive the sans-IO 2xx retransmitter from the event loop (RFC 6026 UAS core)."""
        when = r.get_timer()
        if when is None:
            self.pending_2xx.pop(r.dialog_key, None)
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            for out in r.handle_timer(loop.time()):
                if isinstance(out, AckTimedOut):
                    self.ack_timeouts += 1
                else:
                    self.stack.send_bytes(out.data, dest)
            self._retransmit(r, dest)

        loop.call_at(when, fire)

    def handle(self, ev: Event) -> None:
        if not isinstance(ev, RequestReceived):
            return
        req = ev.request
        me = NameAddr(parse_uri(f"sip:uas@{self.local.host}:{self.local.port}"))
        contact = (("Contact", str(me)),)
        if req.method == "INVITE":
            self.invites += 1
            tag = new_tag()
            self.stack.send_response(make_response(req, 180, to_tag=tag, headers=contact))
            ok = make_response(
                req,
                200,
                to_tag=tag,
                headers=(*contact, ("Content-Type", "application/sdp")),
                body=SDP,
            )
            dialog = Dialog.from_uas(req, tag, me, confirmed=True)
            self.dialogs.add(dialog)
            self.stack.send_response(ok)
            loop = asyncio.get_running_loop()
            r = Uas2xxRetransmitter(dialog.key, ok.to_bytes(), loop.time())
            self.pending_2xx[dialog.key] = r
            self._retransmit(r, response_destination(req.top_via, ev.source))
        elif req.method == "ACK":
            acked = self.dialogs.for_request(req)
            if acked is not None:
                self.acks += 1
                pending = self.pending_2xx.pop(acked.key, None)
                if pending is not None:
                    pending.ack_received()
        elif req.method == "BYE":
            ending = self.dialogs.for_request(req)
            if ending is not None:
                ending.on_request(req)
                self.dialogs.remove(ending)
                self.byes += 1
                self.stack.send_response(make_response(req, 200))
            else:
                self.unknown_dialog += 1
                self.stack.send_response(make_response(req, 481))
        elif req.method == "OPTIONS":
            self.stack.send_response(make_response(req, 200))
        else:
            self.stack.send_response(make_response(req, 501))


@dataclass
class CallResult:
    invite_status: int
    bye_status: int | None


class MiniUac:
    """Places calls through the stack, one coroutine per call."""

    def __init__(self, stack: SipStack, local: Endpoint) -> None:
        self.stack = stack
        self.local = local
        self._finals: dict[TransactionKey, asyncio.Future[Response]] = {}
        self._acks: dict[tuple[str, str], Request] = {}  # (call-id, to-tag) -> ACK sent
        self._ids = itertools.count(1)
        self.provisional = 0
        self.reacked = 0

    def handle(self, ev: Event) -> None:
        if isinstance(ev, ResponseReceived):
            resp = ev.response
            if resp.status < 200:
                self.provisional += 1
                return
            fut = self._finals.pop(ev.key, None) if ev.key is not None else None
            if fut is not None and not fut.done():
                fut.set_result(resp)
            elif resp.status < 300 and resp.cseq.method == "INVITE":
                # a retransmitted 2xx: answer it with the same ACK (RFC 3261 §13.2.2.4)
                ack = self._acks.get((resp.call_id, resp.to.tag or ""))
                if ack is not None:
                    self.reacked += 1
                    self.stack.send_stateless(ack, ev.source)
        elif isinstance(ev, TransactionTimedOut):
            fut = self._finals.pop(ev.key, None)
            if fut is not None and not fut.done():
                fut.set_result(make_response(ev.request, 408))

    async def _transact(self, req: Request, dest: Endpoint) -> Response:
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        key = self.stack.send_request(req, dest)
        self._finals[key] = fut
        return await fut

    async def call(
        self,
        dest: Endpoint,
        user: str = "988",
        hold: float = 0.05,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> CallResult:
        n = next(self._ids)
        target = parse_uri(f"sip:{user}@{dest.host}:{dest.port}")
        me = parse_uri(f"sip:dispatcher@{self.local.host}:{self.local.port}")
        call_id = f"uac-{n}-{new_tag()}@{self.local.host}"
        from_ = NameAddr(me, "handoff test", (("tag", new_tag()),))
        invite = make_request(
            "INVITE",
            target,
            via=_via(self.local),
            from_=from_,
            to=NameAddr(target),
            call_id=call_id,
            cseq=1,
            contact=NameAddr(me),
            headers=headers,
            body=SDP,
            content_type="application/sdp",
        )
        resp = await self._transact(invite, dest)
        if resp.status >= 300:
            return CallResult(resp.status, None)
        dialog = Dialog.from_uac(invite, resp)
        ack = dialog.create_ack(invite.cseq.seq, _via(self.local))
        self._acks[(call_id, dialog.remote_tag)] = ack
        self.stack.send_stateless(ack, dest)
        await asyncio.sleep(hold)
        bye = dialog.create_request("BYE", _via(self.local))
        bye_resp = await self._transact(bye, dest)
        dialog.on_response(bye, bye_resp)
        self._acks.pop((call_id, dialog.remote_tag), None)
        return CallResult(resp.status, bye_resp.status)
