"""Warm and consult transfers: what happens once the counselor answers, until the handoff.

The chain, failover, probing and the records up to the answer are the cold transfer's
(:class:`~telephony.call.cold.ColdTransfers`): until 988 answers, caller and dispatcher stay
bridged and talking. Then :class:`WarmTransfers` takes over:

* ``warm``: the counselor is mixed in (``MediaPort.mix``): all three hear each other. The
  dispatcher hanging up, or ``complete``, leaves caller and counselor bridged directly. A rule
  with ``dispatcher_stays`` (triage level 3 co-response) refuses ``complete`` (409, from the API
  or the feature code): the dispatcher stays in the conference until they hang up themselves.
* ``consult``: the caller's endpoint is taken out of every bridge while dispatcher and counselor
  are bridged; it hears a comfort tone (``MediaPort.hold``, ``media.hold_audio: tone``, the
  default) or silence; then ``complete`` (caller joins the counselor, dispatcher leaves),
  ``conference`` (all three mixed, the tone stops), or the dispatcher hanging up (= complete).

Before completion ``cancel``, a failed chain or the counselor hanging up end the 988 leg, and the
cold machinery's ``_transfer_over`` (which first ends the mix) bridges caller and dispatcher
again: the caller never loses the dispatcher until the counselor has them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from telephony.call.legs import Leg, mix_formats, needs_reoffer
from telephony.call.transfer import TInput, Transfer, TState
from telephony.sip.errors import SipError

if TYPE_CHECKING:
    from telephony.call.b2bua import B2bua, Call

REFER_BYE_GRACE = 2.0  # after a REFER, how long the phone has to hang up that dialog itself


class WarmTransfers:
    """The warm/consult phase of one controller's transfers."""

    def __init__(self, core: B2bua) -> None:
        self.core = core

    # -- from the cold machinery ------------------------------------------------------------

    def answered(self, call: Call, leg: Leg) -> None:
        """988 answered a warm or consult transfer (state ``answered``)."""
        t = call.transfer
        assert t is not None
        disp = call.dispatcher
        if disp is None or not disp.alive:  # the dispatcher left while it rang: hand over now
            self._complete(call, t)
            return
        consult = call.consult
        if consult is not None:  # attended: the phone's own consult call gets the counselor
            t.step(TInput.HOLD, self.core.wall)
            self.core._answer(consult, leg)
            self.core.media.bridge(consult.media, leg.media)  # caller and dispatcher stay joined
        elif t.mode == "consult":
            t.step(TInput.HOLD, self.core.wall)
            self.core.media.bridge(disp.media, leg.media)
            call.bridged = (disp, leg)
            if self.core.config.media.hold_audio == "tone":  # else the caller hears silence
                caller = call.caller
                self.core.media.hold(call.id, caller.media, *mix_formats(caller))
            self.core._record("party left", call, party="caller", reason="on consult hold")
        else:
            t.step(TInput.JOIN, self.core.wall)
            self._mix(call, disp, leg)
        self.core._record("party joined", call, party="counselor")

    # -- the dispatcher and the counselor ---------------------------------------------------

    def dispatcher_left(self, call: Call) -> bool:
        """The dispatcher hung up; True when that completed the handoff."""
        t = call.transfer
        if t is None or t.state not in (TState.CONFERENCE, TState.CONSULTING):
            return False
        self._complete(call, t)
        return True

    def destination_left(self, call: Call) -> bool:
        """The counselor hung up; True when the caller went back to the dispatcher."""
        t = call.transfer
        if t is None or not t.can(TInput.DESTINATION_GONE):
            return False
        t.step(TInput.DESTINATION_GONE, self.core.wall, status=487)
        call.destination = None
        self.core._record("party left", call, party="counselor")
        self.core._record("failed", call, sip_status=487, reason="destination left")
        self.core.cold._transfer_over(call, 487, "Destination Left")  # back to the dispatcher
        return True

    # -- the HTTP hooks ----------------------------------------------------------------------

    def complete(self, transfer_id: str, now: float | None = None) -> Transfer:
        """``POST /v1/transfers/{id}/complete``: the dispatcher leaves, caller and counselor
        stay (409 unless in conference or consulting)."""
        call, t = self._find(transfer_id, now)
        if not t.can(TInput.COMPLETE) or t.state is TState.ANSWERED:
            raise SipError(f"transfer is {t.state.value}: it cannot be completed now", 409)
        if t.decision.dispatcher_stays:
            raise SipError(
                f"transfer is {t.state.value}: rule {t.decision.rule!r} keeps the dispatcher in "
                "the conference (co-response); hanging up is still possible",
                409,
            )
        self._complete(call, t)
        return t

    def conference(self, transfer_id: str, now: float | None = None) -> Transfer:
        """``POST /v1/transfers/{id}/conference``: a consult becomes a 3-way conference."""
        call, t = self._find(transfer_id, now)
        disp, dest = call.dispatcher, call.destination
        if not t.can(TInput.MIX) or disp is None or dest is None:
            raise SipError(f"transfer is {t.state.value}: only a consult can be conferenced", 409)
        t.step(TInput.MIX, self.core.wall)
        self._mix(call, disp, dest)
        self.core._record("party joined", call, party="caller")
        return t

    # -- inside ------------------------------------------------------------------------------

    def _find(self, transfer_id: str, now: float | None) -> tuple[Call, Transfer]:
        if now is not None:
            self.core.now = now
        t = self.core.transfers.get(transfer_id)
        if t is None:
            raise SipError("no such transfer", 404, "peer")
        call = self.core.calls.get(t.call_id)
        if call is None:
            raise SipError(f"transfer is {t.state.value}: the call has ended", 409)
        return call, t

    def _mix(self, call: Call, disp: Leg, dest: Leg) -> None:
        legs = (call.caller, disp, dest)
        # a caller held with the comfort tone is already in this conference: mix takes it off hold
        self.core.media.mix(call.id, [(leg.media, *mix_formats(leg)) for leg in legs])
        call.bridged = None

    def _hangup_later(self, leg: Leg) -> None:
        core = self.core

        def hangup(_now: float) -> None:
            core._hangup(leg)

        leg.ring_timer = core.timers.at(core.now + REFER_BYE_GRACE, hangup)

    def _complete(self, call: Call, t: Transfer, *, phone_ends: Leg | None = None) -> None:
        """Hand over: caller and counselor bridged, the dispatcher's legs released. The leg
        ``phone_ends`` (the dialog a REFER came on) is left to the phone for a grace period:
        it hangs that one up itself after the final NOTIFY."""
        dest = call.destination
        assert dest is not None
        t.step(TInput.COMPLETE, self.core.wall)
        self.core.media.unmix(call.id)
        self.core._record("party left", call, party="dispatcher")
        consult, call.consult = call.consult, None
        # after an attended transfer the phone had put the caller on hold: always offer anew
        if consult is not None or needs_reoffer(call.caller, dest):
            self.core.offers.reinvite(call.caller, dest.peer_sdp, hold=False)
        self.core._bridge(call, call.caller, dest)
        for leg in (consult, call.dispatcher):
            if leg is not None and leg.alive:
                if leg is phone_ends:
                    self._hangup_later(leg)
                else:
                    self.core._hangup(leg)
        call.state = "transferred"
        self.core._record("completed", call)
