"""The B2BUA controller: calls from a PSAP trunk to dispatcher positions, and cold transfers.

:class:`B2bua` is the transaction user above ``telephony.sip.transaction``. Every SIP event goes
into :meth:`B2bua.handle` with ``now``; it answers and sends through a :class:`SipPort`, opens
and joins media through a :class:`MediaPort`, and keeps its deadlines in :class:`Timers` (the
daemon drives ``get_timer`` / ``handle_timer``). No I/O, no clock.

A call has the caller's leg (we are its UAS) and at most one dispatcher leg and one 988 leg
(we are their UAC). Only the controller relays between legs (house rule 6). Cold transfer
(:mod:`telephony.call.transfer`) has three triggers with one machine: an INVITE from the trunk
to a transfer number, a REFER from the dispatcher's leg, and :meth:`B2bua.start_transfer`
(the HTTP hook). A failed transfer returns the caller to the dispatcher -- re-bridged if the
dispatcher is still on the line, else by calling the position again (recall) -- except for the
INVITE trigger, where the PSAP's equipment still holds the caller and gets the final status.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from telephony.call.attended import AttendedTransfers
from telephony.call.cold import ColdTransfers, phase_of, triage_level
from telephony.call.dtmf import FeatureCodes, parse_dtmf_info
from telephony.call.legs import (
    DELAYED_OFFER,
    Leg,
    LegState,
    Role,
    endpoint_for,
    map_failure,
    mix_formats,
    reason_header,
    sdp_of,
)
from telephony.call.metadata import CallMetadata, capture, outbound_body, outbound_headers
from telephony.call.offers import Offers
from telephony.call.ports import MediaPort, SipPort, Timers
from telephony.call.positions import PositionRegistrar
from telephony.call.transfer import TInput, Transfer, TState
from telephony.call.warm import WarmTransfers
from telephony.config import Config, Position, Trunk  # not TYPE_CHECKING-only: see Call
from telephony.routing import RuleSet
from telephony.routing.model import MetadataPolicy
from telephony.sip.dialog import Dialog, request_key
from telephony.sip.errors import SipError
from telephony.sip.headers import NameAddr, Via, new_branch, new_tag, valid_text
from telephony.sip.message import Request, Response, make_request, make_response, reason_phrase
from telephony.sip.sdp import SessionDescription
from telephony.sip.transaction import (
    CancelReceived,
    Endpoint,
    Event,
    RequestReceived,
    ResponseReceived,
    TimerConfig,
    TransactionKey,
    TransactionTimedOut,
    TransportFailed,
    response_destination,
)
from telephony.sip.uri import URI

log = logging.getLogger("telephony.call")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, NOTIFY, UPDATE, INFO, REGISTER"
ACCEPT = "application/sdp, multipart/mixed, message/sipfrag"
KEEP_ENDED = 256  # ended calls kept for the API (GET /v1/calls/{id} after the end)
REFER_BYE_GRACE = 2.0  # after a REFER transfer, how long the dispatcher's phone has to send BYE
RECALL_RETRY = 2.0  # no position can be called right now: look again after this long
OnFinal = Callable[[Response], None]


@dataclass(slots=True)
class Call:
    """One 911 call through us. ``bridged`` is the pair of legs whose media is joined.

    (Compiled, the field types are looked up when the class is made: ``Trunk`` and ``Position``
    are imported for real, not under ``TYPE_CHECKING``.)"""

    id: str
    caller: Leg
    trunk: Trunk
    meta: CallMetadata
    offer: SessionDescription
    created_at: float
    position: Position | None = None
    dispatcher: Leg | None = None
    destination: Leg | None = None
    transfer: Transfer | None = None
    notify_leg: Leg | None = None
    bridged: tuple[Leg, Leg] | None = None
    state: str = "ringing"
    ended_at: float | None = None
    recall_index: int = 0
    ringing_sent: bool = False
    legs: list[Leg] = field(default_factory=list)
    keys: FeatureCodes | None = None  # the dispatcher's feature codes (DTMF), when watched
    keys_by_info: bool = False  # its phone has no telephone-event: keys come as SIP INFO
    consult: Leg | None = None  # the dispatcher phone's own call to 988 (attended transfer)

    def partner(self, leg: Leg) -> Leg | None:
        if self.bridged is None or leg not in self.bridged:
            return None
        a, b = self.bridged
        return b if leg is a else a


class B2bua:
    """The call controller. ``wall_offset`` turns the monotonic ``now`` into Unix time for
    timelines and time-of-day routing (``wall = now + wall_offset``)."""

    def __init__(
        self,
        sip: SipPort,
        media: MediaPort,
        config: Config,
        rules: RuleSet,
        *,
        local: dict[str, Endpoint],
        wall_offset: float = 0.0,
    ) -> None:
        self.sip = sip
        self.media = media
        self.config = config
        self.rules = rules
        self.local = local
        self.wall_offset = wall_offset
        self.timers = Timers()
        self.timer_config = TimerConfig(config.sip.t1, config.sip.t2, config.sip.t4)
        self.calls: dict[str, Call] = {}
        self.ended: OrderedDict[str, Call] = OrderedDict()
        self.transfers: OrderedDict[str, Transfer] = OrderedDict()
        self.down: set[str] = set()  # destination labels the prober has marked down
        self.draining = False
        self.now = 0.0
        self.on_record: Callable[[str, Call, dict[str, Any]], None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[TransactionKey, OnFinal] = {}
        #: the few requests (our INVITEs dialing out) whose provisional responses matter
        self._progress: dict[TransactionKey, OnFinal] = {}
        self._dialogs: dict[tuple[str, str, str], Leg] = {}
        self._server_invites: dict[TransactionKey, Leg] = {}
        self._own_call_ids: set[str] = set()
        self.cold = ColdTransfers(self)
        self.warm = WarmTransfers(self)
        self.attended = AttendedTransfers(self)
        self.offers = Offers(self)
        self.registrar = PositionRegistrar(self)

    # -- clock ------------------------------------------------------------------------------

    @property
    def wall(self) -> float:
        return self.now + self.wall_offset

    def get_timer(self) -> float | None:
        times = (self.timers.get_timer(), self.registrar.get_timer())
        return min((t for t in times if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        self.now = now
        self.timers.handle_timer(now)
        self.registrar.handle_timer(now)

    # -- SIP events -------------------------------------------------------------------------

    def handle(self, ev: Event, now: float) -> None:
        """Feed one transaction-layer event."""
        self.now = now
        try:
            if isinstance(ev, RequestReceived):
                self._on_request(ev.request, ev.source, ev.key)
            elif isinstance(ev, ResponseReceived):
                self._on_response(ev.response, ev.source, ev.key)
            elif isinstance(ev, CancelReceived):
                self._on_cancel(ev.invite_key)
            elif isinstance(ev, TransactionTimedOut):
                self._client_failed(ev.key, ev.request, 408)
            elif isinstance(ev, TransportFailed):
                self._client_failed(ev.key, ev.request, 503)
        except SipError as err:
            log.warning("call layer: %s (%d, %s side)", err.reason, err.status, err.side)
            if isinstance(ev, RequestReceived):
                self._refuse(ev.request, err)

    def _refuse(self, req: Request, err: SipError) -> None:
        """Answer a request whose handling raised ``err`` before anything answered it (a
        Refer-To that does not parse, say): its status for the peer's faults, else 500. Not an
        ACK (never answered) nor a new INVITE (its handler answers each refusal itself, and a
        call it began to set up is not to be answered from here)."""
        try:
            if req.method == "ACK" or (req.method == "INVITE" and req.to.tag is None):
                return
            status = err.status if err.side == "peer" and 400 <= err.status <= 699 else 500
            self._respond(req, status, headers=(_warning(err.reason),))
        except SipError:
            pass  # answered already (the error came later), or the To header does not parse

    def _on_cancel(self, invite_key: TransactionKey) -> None:
        leg = self._server_invites.get(invite_key)
        if leg is None or leg.state is not LegState.CALLING:
            return
        self._hangup(leg, 487)
        call = self.calls.get(leg.call_tag)
        if call is not None:
            self._peer_left(call, leg)

    def _client_failed(self, key: TransactionKey, request: Request, status: int) -> None:
        self._progress.pop(key, None)
        handler = self._pending.pop(key, None)
        if handler is not None:
            handler(make_response(request, status))

    def _on_response(self, resp: Response, source: Endpoint, key: TransactionKey | None) -> None:
        if key is None:  # a 2xx retransmission after the transaction: ACK it again
            self.offers.reack(resp)
            return
        if resp.status < 200:  # a 100 to a re-INVITE or a BYE is no answer to it
            progress = self._progress.get(key)
            if progress is not None:
                progress(resp)
            return
        self._progress.pop(key, None)
        handler = self._pending.pop(key, None)
        if handler is not None:
            handler(resp)

    def _send(
        self,
        request: Request,
        dest: Endpoint,
        on_final: OnFinal | None,
        *,
        on_progress: OnFinal | None = None,
    ) -> TransactionKey:
        """Send ``request`` to ``dest``; ``on_final`` gets its final response (or the one made
        up for a timeout or transport error), ``on_progress`` its provisional ones."""
        if request.method == "INVITE" and request.to.tag:  # a re-INVITE of ours
            on_final = self._tracked(request, on_final)
        key = self.sip.send_request(request, dest)
        self._pending[key] = on_final if on_final is not None else _ignore
        if on_progress is not None:
            self._progress[key] = on_progress
        return key

    def _tracked(self, request: Request, on_final: OnFinal | None) -> OnFinal | None:
        """``on_final`` for our re-INVITE ``request``, after its dialog has taken the final
        response: the dialog allows the next re-INVITE only once this one is answered (a 408
        made up for a timeout carries the dialog's tags and counts too)."""
        leg = self._dialogs.get((request.call_id, request.from_.tag or "", request.to.tag or ""))
        dialog = leg.dialog if leg is not None else None
        if dialog is None:
            return on_final

        def final(resp: Response) -> None:
            try:
                dialog.on_response(request, resp)
            except SipError as err:  # the dialog is over already, or the answer is not its
                log.warning("call layer: %s", err.reason)
            if on_final is not None:
                on_final(resp)

        return final

    def _respond(
        self,
        request: Request,
        status: int,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        to_tag: str | None = None,
    ) -> None:
        response = make_response(request, status, to_tag=to_tag, headers=headers)
        self.sip.send_response(response)
        if status >= 200 and request.method == "INVITE" and request.to.tag:
            self._reinvite_answered(request, response)

    def _reinvite_answered(self, request: Request, response: Response) -> None:
        """A peer's re-INVITE has its final answer: its dialog takes the next one (RFC 3261
        §14.2 refuses a second INVITE with 500 only while the first is unanswered)."""
        leg = self._dialogs.get(request_key(request) or ("", "", ""))
        if leg is not None and leg.dialog is not None:
            try:
                leg.dialog.on_response_sent(request, response)
            except SipError as err:
                log.warning("call layer: %s", err.reason)

    def _on_request(self, req: Request, source: Endpoint, key: TransactionKey | None) -> None:
        method = req.method
        if method == "ACK":
            leg = self._dialogs.get(request_key(req) or ("", "", ""))
            if leg is not None and leg.retrans is not None and leg.retrans.ack_received(req):
                leg.retrans = None
                if leg.retrans_timer is not None:
                    leg.retrans_timer.cancel()
                if leg.offer_in_2xx:
                    self.offers.answered_in_ack(leg, req)
            return
        if method == "REGISTER":  # before dialogs: some phones refresh with the 200's To tag
            self.registrar.on_register(req, source)
            return
        dkey = request_key(req)
        if dkey is not None:
            leg = self._dialogs.get(dkey)
            if leg is None:
                self._respond(req, 481)
            else:
                self._in_dialog(leg, req, source)
        elif method == "INVITE":
            if key is not None:
                self._new_invite(req, source, key)
        elif method == "OPTIONS":
            self._respond(req, 200, headers=(("Allow", ALLOW), ("Accept", ACCEPT)))
        elif method in ("BYE", "REFER", "NOTIFY", "INFO", "UPDATE", "PRACK"):
            self._respond(req, 481)
        else:
            self._respond(req, 405, headers=(("Allow", ALLOW),))

    # -- new calls --------------------------------------------------------------------------

    def _new_invite(self, req: Request, source: Endpoint, key: TransactionKey) -> None:
        cfg = self.config
        if self.draining:
            self._respond(req, 503, headers=(("Retry-After", str(cfg.retry_after)),))
            return
        try:  # what the caller's (or phone's) dialog will need, before anyone is dialled
            Dialog.check_uas(req)
        except SipError as err:
            self._respond(req, err.status, headers=(_warning(err.reason),))
            return
        if self.attended.consult_invite(req, source, key):
            return  # a dispatcher's phone on a call with us calls 988: attended transfer
        trunk = cfg.trunk_for(source.host)
        if trunk is None:
            self._respond(req, 403, headers=(reason_header(403, "source not allowed"),))
            return
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            self._respond(req, 483)
            return
        if req.call_id in self._own_call_ids:
            self._respond(req, 482)
            return
        try:
            offer = sdp_of(req)
        except SipError as err:
            self._respond(req, err.status)
            return
        user = req.uri.user or ""
        position = None
        if user not in trunk.transfer_numbers:
            position = cfg.position_for(user)
            if position is None:
                self._respond(req, 404)
                return
        triage_value = req.headers.get(trunk.triage_header)
        meta = capture(req, triage_header=triage_value)
        try:
            media = self.media.open(f"caller/{req.call_id[:24]}")
        except SipError as err:
            self._respond(req, err.status, headers=(("Retry-After", "5"),))
            return
        caller = Leg("caller", "", req, source, media, uac=False, local_tag=new_tag())
        caller.invite_key = key
        if offer is not None:
            caller.learn_sdp(offer)
        else:  # delayed offer: we offer to the party dialled; the caller answers in its ACK
            offer = DELAYED_OFFER
        call = Call(f"c{next(self._ids)}-{new_tag()[:8]}", caller, trunk, meta, offer, self.wall)
        caller.call_tag = call.id
        call.legs.append(caller)
        call.position = position
        self.calls[call.id] = call
        self._server_invites[key] = caller
        self._record("call offered", call)
        if position is not None:
            self._dial_position(call, position)
            return
        try:
            self.cold.start(call, "invite", called=user, triage=triage_level(triage_value))
        except SipError as err:
            self._fail_caller(call, err.status, err.reason)

    def _sent_by(self, transport: str) -> tuple[str, int]:
        """Our host (advertised, IPv6 bracketed) and port for messages sent over ``transport``."""
        ep = self.local.get(transport) or next(iter(self.local.values()))
        host = self.config.sip.advertise or ep.host
        return (f"[{host}]" if ":" in host else host), ep.port

    def _contact(self, transport: str) -> NameAddr:
        host, port = self._sent_by(transport)
        uri = URI("sip", "handoffd", None, host, port)
        return NameAddr(uri if transport == "udp" else uri.with_params(transport=transport))

    def _via(self, transport: str) -> Via:
        host, port = self._sent_by(transport)
        return Via(transport.upper(), host, port, (("branch", new_branch()), ("rport", None)))

    def _dial(
        self,
        call: Call,
        role: Role,
        target: URI,
        transport: str,
        *,
        policy: MetadataPolicy,
        ring_timeout: float,
        referred_by: str | None = None,
        cause: int | None = None,
        extra: tuple[tuple[str, str], ...] = (),
        dest: Endpoint | None = None,
    ) -> Leg:
        """Place an INVITE for ``call`` (the caller's offer, anchored on a new endpoint), sent to
        ``dest`` (default: where ``target`` says, over ``transport``)."""
        media = self.media.open(f"{role}/{call.id}")
        dest = dest if dest is not None else endpoint_for(target, transport)
        sip_call_id = f"{new_tag()}{new_tag()}@handoffd"
        self._own_call_ids.add(sip_call_id)
        caller_from = call.caller.invite.from_
        from_uri = caller_from.uri
        if from_uri.is_sip:
            from_uri = URI("sip", from_uri.user, None, self._contact(dest.transport).uri.host)
        from_ = NameAddr(from_uri, caller_from.display_name, (("tag", new_tag()),))
        leg = Leg(
            role,
            call.id,
            call.caller.invite,  # replaced below once the INVITE exists
            dest,
            media,
            uac=True,
        )
        sdp = leg.sdp_for(call.offer)
        ctype, body = outbound_body(call.meta, sdp, policy)
        headers = [
            *outbound_headers(
                call.meta, policy, target=target, referred_by=referred_by, retarget_cause=cause
            ),
            *extra,
            ("Allow", ALLOW),
            ("User-Agent", self.config.sip.user_agent),
        ]
        mf = call.caller.invite.max_forwards
        invite = make_request(
            "INVITE",
            target,
            via=self._via(dest.transport),
            from_=from_,
            to=NameAddr(target),
            call_id=sip_call_id,
            cseq=1,
            max_forwards=(self.config.sip.max_forwards if mf is None else mf) - 1,
            contact=self._contact(dest.transport),
            headers=headers,
            body=body,
            content_type=ctype,
        )
        leg.invite = invite
        call.legs.append(leg)
        on_response = lambda r: self._invite_response(leg, r)  # noqa: E731
        leg.invite_key = self._send(invite, dest, on_response, on_progress=on_response)
        leg.ring_timer = self.timers.at(self.now + ring_timeout, lambda _n: self._ring_out(leg))
        return leg

    def _invite_response(self, leg: Leg, resp: Response) -> None:
        status = resp.status
        if status < 200:
            if status > 100 and resp.to.tag and leg.dialog is None and leg.alive:
                try:
                    leg.dialog = Dialog.from_uac(leg.invite, resp)
                    leg.state = LegState.EARLY
                except SipError:
                    pass
            if status > 100 and leg.alive and not leg.cancelled and leg.on_ringing:
                leg.on_ringing(leg, resp)
            return
        if status < 300:
            self._invite_answered(leg, resp)
            return
        leg.stop_timers()
        was_alive = leg.alive and not leg.cancelled
        self._leg_ended(leg)
        if was_alive and leg.on_failure is not None:
            leg.on_failure(leg, status, resp.reason or reason_phrase(status))

    def _invite_answered(self, leg: Leg, resp: Response) -> None:
        try:
            dialog = Dialog.from_uac(leg.invite, resp)
            unusable = None
        except SipError as err:
            # e.g. no Contact: still ACK the answer (it would be resent for 32 s and a person
            # may be on the line), then end it and count this attempt as failed
            dialog = Dialog.from_uac(leg.invite, resp, lenient=True)
            unusable = err.reason
        ack = dialog.create_ack(leg.invite.cseq.seq, self._via(leg.dest.transport))
        dest = leg.request_dest(dialog)
        self.sip.send_stateless(ack, dest)
        self.offers.remember_ack(
            (dialog.call_id, dialog.remote_tag, leg.invite.cseq.seq), ack, dest
        )
        if unusable is not None:
            log.warning("call layer: an answer we cannot use: %s", unusable)
            self._send(dialog.create_request("BYE", self._via(leg.dest.transport)), dest, None)
            was_alive = leg.alive and not leg.cancelled
            leg.stop_timers()
            self._leg_ended(leg)
            if was_alive and leg.on_failure is not None:
                leg.on_failure(leg, 502, f"unusable answer: {unusable}")
            return
        if leg.state is LegState.CONFIRMED or not leg.alive or leg.cancelled:
            # a forked second answer, or an answer that crossed our CANCEL: end that dialog
            self._send(dialog.create_request("BYE", self._via(leg.dest.transport)), dest, None)
            if leg.state is LegState.ENDING:  # no 487 will come for this INVITE now
                self._leg_ended(leg)
            return
        leg.stop_timers()
        leg.dialog = dialog
        leg.state = LegState.CONFIRMED
        leg.answered = True
        self._dialogs[dialog.key] = leg
        try:
            sd = sdp_of(resp)
        except SipError:
            sd = None
        if sd is None:  # an answer without SDP cannot be bridged: treat it as a failure
            self._hangup(leg)
            if leg.on_failure is not None:
                leg.on_failure(leg, 488, "answer without SDP")
            return
        leg.learn_sdp(sd)
        if leg.on_answer is not None:
            leg.on_answer(leg, resp)

    def _ring_out(self, leg: Leg) -> None:
        """The ring timeout: give up on this attempt now (the CANCEL's 487 comes later)."""
        leg.ring_timer = None
        if not leg.alive or leg.state is LegState.CONFIRMED:
            return
        self._hangup(leg)
        if leg.on_failure is not None:
            leg.on_failure(leg, 408, "ring timeout")

    # -- ending legs ------------------------------------------------------------------------

    def _leg_ended(self, leg: Leg) -> None:
        leg.state = LegState.ENDED
        leg.stop_timers()
        leg.media.close()
        if leg.dialog is not None:
            self._dialogs.pop(leg.dialog.key, None)
        if not leg.uac and leg.invite_key is not None:
            self._server_invites.pop(leg.invite_key, None)
        self._own_call_ids.discard(leg.sip_call_id if leg.uac else "")
        call = self.calls.get(leg.call_tag)
        if call is not None and leg is call.dispatcher and leg.answered:
            self.attended.phone_gone(leg)
            if call.transfer:
                self._record("dispatcher left", call)  # it had answered: not a recall given up
        if call is not None and all(not x.alive for x in call.legs):
            self._call_ended(call)

    def _hangup(self, leg: Leg, status: int = 487, reason: str | None = None) -> None:
        """End ``leg`` whatever its state: CANCEL, BYE or a final response."""
        if not leg.alive:
            return
        leg.cancelled = True
        if leg.uac and leg.state is not LegState.CONFIRMED:
            if leg.invite_key is not None:
                self.sip.cancel(leg.invite_key)
            leg.state = LegState.ENDING
            leg.stop_timers()
            leg.media.close()
            # the 487 (or a crossing 2xx, which gets ACK + BYE) finishes it
            return
        if not leg.uac and leg.state is not LegState.CONFIRMED:
            headers = (reason_header(status, reason),) if reason else ()
            self._respond(leg.invite, status, headers=headers, to_tag=leg.local_tag)
            self._leg_ended(leg)
            return
        assert leg.dialog is not None
        bye = leg.dialog.create_request("BYE", self._via(leg.dest.transport))
        leg.state = LegState.ENDING
        self._send(bye, leg.request_dest(), lambda _r: self._leg_ended(leg))

    def _call_ended(self, call: Call) -> None:
        if call.id not in self.calls:
            return
        del self.calls[call.id]
        if call.transfer is not None and call.transfer.mode != "cold":
            self.media.unmix(call.id)
        for leg in call.legs:  # break leg -> callback -> call cycles: freed without the GC
            leg.on_ringing = leg.on_answer = leg.on_failure = None
        call.state = "ended"
        call.ended_at = self.wall
        self.ended[call.id] = call
        while len(self.ended) > KEEP_ENDED:
            self.ended.popitem(last=False)
        self._record("call ended", call)

    def _fail_caller(self, call: Call, status: int, reason: str) -> None:
        self._hangup(call.caller, map_failure(status), reason)
        for leg in call.legs:
            self._hangup(leg)

    # -- the dispatcher position ------------------------------------------------------------

    def _dial_position(self, call: Call, position: Position, *, recall: bool = False) -> None:
        policy = MetadataPolicy(
            share_location=position.share_location,
            forward_uui=True,
            x_header_allowlist=frozenset(n.lower() for n, _ in call.meta.x_headers),
            accept_multipart=position.accept_multipart,
        )
        try:
            route = self.registrar.route(position)  # 480 when it cannot be reached
            leg = self._dial(
                call,
                "dispatcher",
                route.uri,
                route.dest.transport,
                policy=policy,
                ring_timeout=self.config.sip.ring_timeout,
                dest=route.dest,
            )
            if route.registered:
                leg.flow = route.dest
        except SipError as err:
            if recall:
                self._recall_next(call)
            else:
                self._fail_caller(call, err.status, err.reason)
            return
        call.dispatcher = leg
        call.position = position
        leg.on_ringing = lambda _l, _r: self._caller_ringing(call)
        leg.on_answer = lambda lg, _r: self._dispatcher_answered(call, lg)
        if recall:
            leg.on_failure = lambda _l, _s, _r: self._recall_next(call)
        else:
            leg.on_failure = lambda _l, s, r: self._fail_caller(call, s, r)

    def _caller_ringing(self, call: Call) -> None:
        caller = call.caller
        if call.ringing_sent or caller.state is not LegState.CALLING:
            return
        call.ringing_sent = True
        contact = (("Contact", str(self._contact(caller.dest.transport))),)
        self._respond(caller.invite, 180, headers=contact, to_tag=caller.local_tag)

    def _answer_caller(self, call: Call, source: Leg) -> None:
        """200 to the caller's INVITE with ``source``'s SDP anchored on the caller's endpoint."""
        self._answer(call.caller, source)

    def _answer(self, caller: Leg, source: Leg) -> None:
        """200 to ``caller``'s INVITE (a UAS leg) with ``source``'s SDP on its own endpoint."""
        assert source.peer_sdp is not None
        contact = self._contact(caller.dest.transport)
        body = caller.sdp_for(source.peer_sdp)
        caller.offer_in_2xx = caller.peer_sdp is None  # its INVITE had no offer: this is ours
        ok = make_response(
            caller.invite,
            200,
            to_tag=caller.local_tag,
            headers=(
                ("Contact", str(contact)),
                ("Allow", ALLOW),
                ("Content-Type", "application/sdp"),
            ),
            body=body,
        )
        dialog = Dialog.from_uas(caller.invite, caller.local_tag, contact, confirmed=True)
        caller.dialog = dialog
        caller.state = LegState.CONFIRMED
        self._dialogs[dialog.key] = caller
        self.offers.send_2xx(caller, ok, response_destination(caller.invite.top_via, caller.dest))

    def _dispatcher_answered(self, call: Call, leg: Leg) -> None:
        if not call.caller.alive:
            self._hangup(leg)
            return
        if call.caller.state is not LegState.CONFIRMED:
            self._answer_caller(call, leg)
            self._record("answered by dispatcher", call)
        else:  # a recall: the caller is up, talking to nobody; offer the dispatcher's SDP
            self.offers.reinvite(call.caller, leg.peer_sdp, hold=False)
            self._record("returned to dispatcher", call)
        self._bridge(call, call.caller, leg)
        call.state = "connected"
        self._watch_keys(call, leg)
        self.attended.phone_answered(call, leg)

    def _watch_keys(self, call: Call, leg: Leg) -> None:
        """Feature codes from the dispatcher's phone: from the media when its leg has
        telephone-event, else from its SIP INFO (``_in_dialog``)."""
        codes = self.config.dtmf.codes()
        if not codes:
            return
        call.keys = FeatureCodes(codes, self.config.dtmf.digit_timeout)
        event_pt = mix_formats(leg)[1]
        call.keys_by_info = event_pt is None
        if event_pt is not None:
            self.media.watch_keys(leg.media, event_pt, call.id)

    def on_key(self, call_id: str, pressed: str, now: float) -> None:
        """A key the dispatcher pressed (``MediaPort.watch_keys``): run the feature it completes.
        A feature that does not apply now (e.g. ``cancel`` with no transfer) is logged only."""
        self.now = now
        call = self.calls.get(call_id)
        if call is None or call.keys is None:
            return
        action = call.keys.feed(pressed, now)
        if action is None:
            return
        t = call.transfer
        try:
            if action in ("warm", "consult", "cold"):
                if call.state != "connected" or call.dispatcher is None:
                    raise SipError(f"call is {call.state}", 409)
                number = self.cold._default_number(call)
                self.cold.start(call, "dtmf", called=number, mode=action)  # type: ignore[arg-type]
            elif t is None or t.done:
                raise SipError("no transfer in progress", 409)
            elif action == "cancel":
                self.cold.cancel_transfer(t.id)
            else:
                self.warm.complete(t.id)
        except SipError as err:
            log.info("feature code %s refused: %s", action, err.reason, extra={"call_id": call.id})

    def _recall_next(self, call: Call) -> None:
        """Call the positions in turn until one answers or the caller hangs up; positions that
        cannot be reached now (not registered, no ``uri``) are passed over, and when none can,
        the round is tried again after ``RECALL_RETRY`` (the caller stays up)."""
        if not call.caller.alive:
            return
        positions = list(self.config.positions.values())
        start = positions.index(call.position) if call.position in positions else 0
        for _ in positions:
            nxt = positions[(start + call.recall_index) % len(positions)]
            call.recall_index += 1
            if self.registrar.available(nxt):
                self._dial_position(call, nxt, recall=True)
                return
        self.timers.at(self.now + RECALL_RETRY, lambda _n: self._recall_next(call))

    def _bridge(self, call: Call, a: Leg, b: Leg) -> None:
        self.media.bridge(a.media, b.media)
        call.bridged = (a, b)

    # -- in-dialog requests -----------------------------------------------------------------

    def _in_dialog(self, leg: Leg, req: Request, source: Endpoint) -> None:
        assert leg.dialog is not None
        call = self.calls.get(leg.call_tag)
        try:
            leg.dialog.on_request(req)
        except SipError as err:
            self._respond(req, err.status)
            return
        method = req.method
        if method == "BYE":
            self._respond(req, 200)
            self._leg_ended(leg)
            if call is not None:
                self._peer_left(call, leg)
        elif call is None:
            self._respond(req, 481)
        elif method in ("INVITE", "UPDATE"):
            self.offers.relay(call, leg, req, source)
        elif method == "REFER":
            self.cold.on_refer(call, leg, req)
        elif method in ("OPTIONS", "INFO", "NOTIFY"):
            self._respond(req, 200)
            if method == "INFO" and leg is call.dispatcher and call.keys_by_info:
                key = parse_dtmf_info(req.headers.get("content-type"), req.body)
                if key is not None:
                    self.on_key(call.id, key, self.now)
        else:
            self._respond(req, 405, headers=(("Allow", ALLOW),))

    def _peer_left(self, call: Call, leg: Leg) -> None:
        """``leg``'s peer hung up (BYE)."""
        t = call.transfer
        if leg is call.caller:
            if t is not None and t.can(TInput.CALLER_GONE):
                phase = phase_of(t)
                t.step(TInput.CALLER_GONE, self.wall)
                self._record("abandoned", call, phase=phase)
            for other in call.legs:
                self._hangup(other)
            return
        if leg is call.dispatcher:
            call.dispatcher = None
            if call.bridged is not None and leg in call.bridged:
                call.bridged = None
            if t is not None and not t.done:
                # in conference or consulting this completes the handoff; before an answer the
                # transfer goes on (a failure recalls the position)
                self.warm.dispatcher_left(call)
                return
            if call.state == "transferred":
                return
            if self._phone_gave_up_after_refer(call):
                t = call.transfer
                assert t is not None
                t.note("recall", self.wall)  # the caller stays; the positions are called again
                call.state = "ringing"
                self._recall_next(call)
                return
        elif leg.role == "consult":  # the phone ended its consult call (or the REFER's dialog)
            if leg is call.consult:
                self.attended.consult_left(call)
            return
        elif leg is call.destination:
            if self.warm.destination_left(call):
                return  # the counselor left before the handoff: caller back with the dispatcher
            call.destination = None
        self._hangup(call.caller, 487)
        for other in call.legs:
            self._hangup(other)

    def _phone_gave_up_after_refer(self, call: Call) -> bool:
        """Did the dispatcher's phone hang up just because its blind transfer failed? Phones
        before RFC 5589 (baresip 1.0) end the call on a failure NOTIFY; that BYE must not end
        the 911 call: the caller goes back to the positions instead."""
        t = call.transfer
        return (
            t is not None
            and t.trigger == "refer"
            and t.state is TState.FAILED
            and call.caller.alive
            and bool(t.timeline)
            and self.wall - t.timeline[-1].at <= REFER_BYE_GRACE
        )

    # -- views and records ------------------------------------------------------------------

    def _record(self, event: str, call: Call, **fields: Any) -> None:
        if self.on_record is not None:
            self.on_record(event, call, fields)

    def find_call(self, call_id: str) -> Call | None:
        return self.calls.get(call_id) or self.ended.get(call_id)


def _ignore(_resp: Response) -> None:
    return None


def _warning(why: str) -> tuple[str, str]:
    """A ``Warning: 399 handoffd "<why>"`` header; ``why`` may quote what a peer sent."""
    text = "".join(c if c.isprintable() and c not in '"\\' else "?" for c in valid_text(why))
    return ("Warning", f'399 handoffd "{text}"')
