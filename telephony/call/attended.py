"""Attended transfer from the dispatcher's own phone: consult call, then REFER with Replaces.

A stock softphone does an attended transfer in three steps, and handoffd follows them:

1. It holds the caller (a re-INVITE, relayed to the caller as usual).
2. It calls 988 *through handoffd*: a new INVITE from the phone's address.
   :meth:`AttendedTransfers.consult_invite` finds the 911 call the phone is on (its
   dispatcher leg talks to that host and port) and starts a ``consult`` transfer of that call with
   trigger ``attended``: routing rules, chain, failover, probing, metadata and records as for
   every transfer (the 988 leg carries the 911 caller's identity and emergency ids, not the
   phone's). The phone's INVITE is the *consult leg*: it gets 180 when 988 rings, 200 with the
   counselor's SDP when 988 answers (state ``consulting``), and the chain's final failure status
   otherwise, while the caller stays on hold with the dispatcher.
3. It sends REFER on one of its two dialogs with ``Refer-To: <...?Replaces=<the other dialog>>``.
   :meth:`on_refer` answers 202, joins the caller to the counselor (the caller gets a new offer:
   the phone had it on hold), sends the final NOTIFY (``200 OK``), ends the replaced dialog, and
   ends the REFER's own dialog if the phone does not within two seconds (linphone 5.1 ends it
   itself at once, and never ends the replaced one).

A Replaces naming no dialog of this call is answered 481; the dispatcher hanging up the consult
call cancels the transfer (the 988 leg is released, the caller stays with the dispatcher).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from telephony.call.legs import Leg, LegState, sdp_of
from telephony.call.transfer import TInput, TState
from telephony.sip.errors import SipError
from telephony.sip.headers import new_tag
from telephony.sip.message import Request
from telephony.sip.transaction import Endpoint, TransactionKey

if TYPE_CHECKING:
    from telephony.call.b2bua import B2bua, Call


#: calls on one phone address past which ended ones are swept out at each power of two
PRUNE_AT = 64


class AttendedTransfers:
    def __init__(self, core: B2bua) -> None:
        self.core = core
        #: dispatcher phone address -> the ids of its calls with us, in the order answered (a
        #: dict as an ordered set: O(1) to add and remove, however many calls one address
        #: carries, e.g. a PBX in front of many positions)
        self._phones: dict[tuple[str, int], dict[str, None]] = {}

    # -- 2. the consult call ----------------------------------------------------------------

    def consult_invite(self, req: Request, source: Endpoint, key: TransactionKey) -> bool:
        """A new INVITE from the address (host and port) of a dispatcher phone on a call with
        us is that phone's consult call (handled here: True); anything else is not (False).
        The address, not the trunk allowlist, decides: a PBX may host both."""
        call = self._call_of_phone(source)
        if call is None:
            return False
        core = self.core
        if call.state != "connected" or (call.transfer is not None and not call.transfer.done):
            core._respond(req, 486, headers=(("Warning", '399 handoffd "transfer in progress"'),))
            return True
        try:
            offer = sdp_of(req)  # None: a delayed offer, answered in the ACK to our 200
            media = core.media.open(f"consult/{call.id}")
        except SipError as err:
            core._respond(req, err.status)
            return True
        leg = Leg("consult", call.id, req, source, media, uac=False, local_tag=new_tag())
        if call.dispatcher is not None and call.dispatcher.flow is not None:
            leg.flow = source  # the registered phone's consult call: answer it where it is
        leg.invite_key = key
        if offer is not None:
            leg.learn_sdp(offer)
        call.legs.append(leg)
        call.consult = leg
        core._server_invites[key] = leg
        try:
            core.cold.start(call, "attended", called=req.uri.user or "", mode="consult")
        except SipError as err:  # no rule allows it, etc.: the phone hears why
            call.consult = None
            core._hangup(leg, err.status, err.reason)
        return True

    def _call_of_phone(self, source: Endpoint) -> Call | None:
        """The 911 call a consult INVITE from ``source`` is about. A phone with one call: that
        one. A dispatcher with several calls on the phone puts the one to transfer on hold
        before dialling 988, so: of the calls the phone holds, the one it put on hold last;
        when it holds none, the one whose SDP changed last (its active call)."""
        calls = []
        for call_id in self._phones.get((source.host, source.port), ()):
            call = self.core.calls.get(call_id)
            disp = call.dispatcher if call is not None else None
            if disp is not None and disp.alive and disp.state is LegState.CONFIRMED:
                calls.append((call, disp))
        if len(calls) <= 1:
            return calls[0][0] if calls else None
        held = [(c, d) for c, d in calls if d.direction() in ("sendonly", "inactive")]
        return max(held or calls, key=lambda cd: cd[1].learned)[0]

    def phone_answered(self, call: Call, leg: Leg) -> None:
        """Remember where the dispatcher's phone on ``call`` talks from (its address and its
        Contact's): a new INVITE from there is its consult call."""
        for hop in (leg.dest, leg.request_dest()):
            ids = self._phones.setdefault((hop.host, hop.port), {})
            ids.pop(call.id, None)
            ids[call.id] = None
            if len(ids) > PRUNE_AT and len(ids) & (len(ids) - 1) == 0:
                # at each power of two: drop any call that ended without phone_gone (a guard,
                # amortised O(1); phone_gone normally keeps this exact)
                for stale in [i for i in ids if i not in self.core.calls]:
                    del ids[stale]

    def phone_gone(self, leg: Leg) -> None:
        for hop in (leg.dest, leg.request_dest()):
            ids = self._phones.get((hop.host, hop.port))
            if ids is not None:
                ids.pop(leg.call_tag, None)
                if not ids:
                    del self._phones[hop.host, hop.port]

    def ringing(self, call: Call) -> None:
        leg = call.consult
        if leg is not None and leg.state is LegState.CALLING:
            contact = (("Contact", str(self.core._contact(leg.dest.transport))),)
            self.core._respond(leg.invite, 180, headers=contact, to_tag=leg.local_tag)

    def over(self, call: Call, status: int, reason: str) -> None:
        """The consult transfer failed or was cancelled: end the consult leg with why."""
        leg, call.consult = call.consult, None
        if leg is not None and leg.alive:
            self.core._hangup(leg, status, reason)

    def consult_left(self, call: Call) -> None:
        """The phone hung up (or CANCELled) its consult call: the transfer is called off."""
        call.consult = None
        t = call.transfer
        if t is None or t.done or not t.can(TInput.CANCEL):
            return
        answered = t.state is TState.CONSULTING
        t.step(TInput.CANCEL, self.core.wall, status=487)
        if call.destination is not None:
            self.core._hangup(call.destination)
            call.destination = None
        if answered:
            self.core._record("party left", call, party="counselor")
        self.core._record("cancelled", call)
        self.core.cold._transfer_over(call, 487, "Request Terminated")

    # -- 3. REFER with Replaces -------------------------------------------------------------

    def on_refer(self, call: Call, leg: Leg, req: Request, replaces: str) -> None:
        core = self.core
        other = self._replaced(call, replaces)
        if other is None or {leg.role, other.role} != {"dispatcher", "consult"}:
            core._respond(req, 481, headers=(("Warning", '399 handoffd "no such dialog"'),))
            return
        t = call.transfer
        if t is None or t.state is not TState.CONSULTING or call.destination is None:
            state = t.state.value if t is not None else "none"
            core._respond(req, 491, headers=(("Warning", f'399 handoffd "transfer is {state}"'),))
            return
        core._respond(req, 202, headers=(("Contact", str(core._contact(leg.dest.transport))),))
        call.notify_leg = leg
        core.cold._notify(call, 200, "OK", final=True)  # before the consult leg's BYE
        core.warm._complete(call, t, phone_ends=leg)

    def _replaced(self, call: Call, replaces: str) -> Leg | None:
        """The leg of ``call`` whose dialog a Replaces value (RFC 3891) names."""
        call_id, _, params = replaces.partition(";")
        tags = {}
        for part in params.split(";"):
            name, _, value = part.strip().partition("=")
            tags[name.lower()] = value
        want = {tags.get("to-tag", ""), tags.get("from-tag", "")}
        for leg in call.legs:
            d = leg.dialog
            if (
                leg.alive
                and d is not None
                and d.call_id == call_id.strip()
                and want
                == {
                    d.local_tag,
                    d.remote_tag,
                }
            ):
                return leg
        return None
