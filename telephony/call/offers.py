"""Offer/answer inside established dialogs, and the reliability of 2xx responses and ACKs.

:class:`Offers` is part of the call controller (:class:`~telephony.call.b2bua.B2bua` owns one
as ``core.offers``): it relays a re-INVITE/UPDATE offer from one leg to its bridged partner and
the answer back (hold and resume in both directions ride on this), sends our own re-INVITEs after
a transfer or recall, retransmits our 2xx to INVITEs until the ACK (RFC 3261 §13.3.1.4), and ACKs
2xx responses -- again for each retransmitted 2xx, from a cache kept 64*T1. No I/O, no clock.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from telephony.call.legs import DELAYED_OFFER, Leg, sdp_of
from telephony.sip.dialog import AckTimedOut, Uas2xxRetransmitter
from telephony.sip.errors import SipError
from telephony.sip.message import Request, Response, make_response
from telephony.sip.sdp import SessionDescription, answer_direction, direction, set_direction
from telephony.sip.transaction import Endpoint, response_destination

if TYPE_CHECKING:
    from telephony.call.b2bua import B2bua, Call

log = logging.getLogger("telephony.call")

AckKey = tuple[str, str, int]  # (Call-ID, remote tag, CSeq number)


class Offers:
    def __init__(self, core: B2bua) -> None:
        self.core = core
        self._acks: dict[AckKey, tuple[bytes, Endpoint]] = {}

    def reack(self, resp: Response) -> bool:
        """A 2xx retransmission after its transaction ended: send our ACK again (if we still
        have it). Returns whether one was sent."""
        found = self._acks.get((resp.call_id, resp.to.tag or "", resp.cseq.seq))
        if found is None:
            return False
        self.core.sip.send_bytes(found[0], found[1])
        return True

    def relay(self, call: Call, leg: Leg, req: Request, source: Endpoint) -> None:
        """A re-INVITE/UPDATE from ``leg``: pass its offer to the bridged partner, the answer
        back (hold and resume in both directions ride on this)."""
        try:
            offer = sdp_of(req)
        except SipError as err:
            self.core._respond(req, err.status)
            return
        reply_to = response_destination(req.top_via, source)
        if offer is None:
            self._refresh(leg, req, reply_to)
            return
        leg.learn_sdp(offer)
        partner = call.partner(leg)
        if partner is None or not partner.alive or partner.dialog is None:
            answer = set_direction(offer, answer_direction(direction(offer)))
            self.answer(leg, req, leg.sdp_for(answer), reply_to)
            return
        try:
            out = partner.dialog.create_request(
                req.method,
                self.core._via(partner.dest.transport),
                body=partner.sdp_for(offer),
                content_type="application/sdp",
            )
        except SipError:
            self.core._respond(req, 491)
            return

        def done(resp: Response) -> None:
            if req.method == "INVITE" and 200 <= resp.status < 300:
                self.ack(partner, resp)
            if resp.status >= 300 or not leg.alive:
                self.core._respond(req, resp.status if resp.status >= 300 else 500)
                return
            try:
                answer = sdp_of(resp)
            except SipError:
                answer = None
            if answer is None:
                self.core._respond(req, 488)
                return
            partner.learn_sdp(answer)
            self.answer(leg, req, leg.sdp_for(answer), reply_to)

        self.core._send(out, partner.request_dest(), done)

    def _refresh(self, leg: Leg, req: Request, dest: Endpoint) -> None:
        """A re-INVITE or UPDATE without an offer, typically a session refresh (RFC 4028): an
        UPDATE gets 200 without a body (no offer, no answer: RFC 3311); a re-INVITE gets the
        session as it stands on this leg, the SDP last sent there unchanged (same ``o=``
        version, RFC 3264 §8), its answer coming in the ACK. The other party is not involved.
        The 2xx carries no Session-Expires: handoffd itself asks for no refreshes."""
        if req.method == "UPDATE":
            self.core._respond(
                req, 200, headers=(("Contact", str(self.core._contact(leg.dest.transport))),)
            )
            return
        if leg.sent_sdp is None:  # nothing was ever offered or answered here: nothing to re-offer
            self.core._respond(req, 488, headers=(("Warning", '399 handoffd "offer required"'),))
            return
        leg.offer_in_2xx = True
        self.answer(leg, req, leg.sent_sdp.to_bytes(), dest)

    def answered_in_ack(self, leg: Leg, ack: Request) -> None:
        """The ACK to a 2xx that carried our offer: its body is the answer (RFC 3264 §4). A
        caller that leaves it out keeps its call; its media is then found by latching."""
        leg.offer_in_2xx = False
        try:
            answer = sdp_of(ack)
        except SipError as err:
            log.warning("ACK with an unusable answer (%s); media by latching", err.reason)
            return
        if answer is None:
            log.warning("ACK without the answer to our offer; media by latching")
            return
        leg.learn_sdp(answer)
        call = self.core.calls.get(leg.call_tag)
        if call is not None and leg is call.caller and call.offer is DELAYED_OFFER:
            call.offer = answer  # later dials offer what the caller really takes

    def answer(self, leg: Leg, req: Request, body: bytes, dest: Endpoint) -> None:
        headers = (
            ("Contact", str(self.core._contact(leg.dest.transport))),
            ("Content-Type", "application/sdp"),
        )
        ok = make_response(req, 200, headers=headers, body=body)
        if req.method == "INVITE":
            self.send_2xx(leg, ok, dest)
            self.core._reinvite_answered(req, ok)
        else:
            self.core.sip.send_response(ok)

    def send_2xx(self, leg: Leg, ok: Response, dest: Endpoint) -> None:
        assert leg.dialog is not None
        self.core.sip.send_response(ok)
        cfg = self.core.timer_config
        leg.retrans = Uas2xxRetransmitter(
            leg.dialog.key, ok.to_bytes(), self.core.now, cfg.t1, cfg.t2, cseq=ok.cseq.seq
        )
        self._arm_retrans(leg, dest)

    def _arm_retrans(self, leg: Leg, dest: Endpoint) -> None:
        r = leg.retrans
        when = None if r is None else r.get_timer()
        if r is None or when is None:
            return

        def fire(now: float) -> None:
            for out in r.handle_timer(now):
                if isinstance(out, AckTimedOut):
                    leg.retrans = None
                    call = self.core.calls.get(leg.call_tag)
                    self.core._hangup(leg)
                    if call is not None:
                        self.core._peer_left(call, leg)
                    return
                self.core.sip.send_bytes(out.data, dest)
            self._arm_retrans(leg, dest)

        leg.retrans_timer = self.core.timers.at(when, fire)

    def ack(self, leg: Leg, resp: Response) -> None:
        assert leg.dialog is not None
        ack = leg.dialog.create_ack(resp.cseq.seq, self.core._via(leg.dest.transport))
        dest = leg.request_dest()
        self.core.sip.send_stateless(ack, dest)
        self.remember_ack((resp.call_id, resp.to.tag or "", resp.cseq.seq), ack, dest)

    def reinvite(self, leg: Leg, sdp: SessionDescription | None, *, hold: bool) -> None:
        """Offer ``sdp`` to ``leg`` on our own initiative (after a transfer or recall)."""
        if sdp is None or leg.dialog is None or not leg.alive:
            return
        try:
            req = leg.dialog.create_request(
                "INVITE",
                self.core._via(leg.dest.transport),
                body=leg.sdp_for(sdp, hold=hold),
                content_type="application/sdp",
            )
        except SipError:
            return  # an INVITE is in progress on this leg; its answer will carry the media

        def done(resp: Response) -> None:
            if 200 <= resp.status < 300:
                self.ack(leg, resp)
                try:
                    answer = sdp_of(resp)
                except SipError:
                    answer = None
                if answer is not None:
                    leg.learn_sdp(answer)

        self.core._send(req, leg.request_dest(), done)

    def remember_ack(self, key: tuple[str, str, int], ack: Request, dest: Endpoint) -> None:
        """Keep our ACK for a 2xx long enough to answer its retransmissions (64*T1, the
        longest a UAS retransmits, RFC 3261 §13.3.1.4), then forget it. Kept as bytes: a parsed
        message is dozens of objects every garbage-collector pass would walk for 32 s."""
        self._acks[key] = (ack.to_bytes(), dest)

        def forget(_now: float) -> None:
            self._acks.pop(key, None)

        self.core.timers.at(self.core.now + 64 * self.core.timer_config.t1, forget)
